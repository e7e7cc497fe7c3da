import hashlib
import json
import re
from pathlib import Path

import pytest

from cleanroom.errors import PolicyError, ValidationError
from cleanroom.policy import (
    DEFAULT_ESTIMATORS,
    ColumnRule,
    Policy,
    TomlLines,
    combine,
    looks_like_identifier,
    parse_policy,
)

DESIGN_EXAMPLE = """\
[outputs]
allowed = ["aggregate", "model"]   # subset of these two; default both

[privacy]
k = 10
epsilon = 3.0
delta = 1e-6
require_dp = false

[release]
recipients = ["acme"]
review = true

[models]
estimators = ["linear_regression", "ridge", "lasso", "logistic_regression",
              "gradient_boosting_regressor", "gradient_boosting_classifier",
              "random_forest_regressor", "random_forest_classifier",
              "decision_tree_regressor", "decision_tree_classifier"]
allow_row_storing = false
max_model_bytes = 5_000_000

[columns.email]
rule = "never_output"
[columns.age]
bounds = [18, 100]

[identifiers]
allow = ["zip"]
"""


def test_design_example_parses():
    policy = parse_policy(DESIGN_EXAMPLE)
    assert policy.k == 10 and policy.epsilon == 3.0 and policy.delta == 1e-6
    assert policy.recipients == ("acme",) and policy.review is True
    assert policy.column_rule("email") == ColumnRule("email", "never_output")
    assert policy.column_rule("age").bounds == (18.0, 100.0)
    assert policy.column_rule("income") == ColumnRule("income")  # unnamed columns are allowed
    assert policy.identifiers_allow == ("zip",)


def test_defaults():
    policy = parse_policy("")
    assert policy == Policy()
    assert policy.to_dict() == {
        "outputs": {"allowed": ["aggregate", "model"]},
        "privacy": {"k": 10, "epsilon": 3.0, "delta": 1e-6, "require_dp": True, "job_epsilon": 1.0, "job_delta": 1e-7},
        "release": {"recipients": [], "review": False},
        "models": {"estimators": sorted(DEFAULT_ESTIMATORS), "allow_row_storing": False, "max_model_bytes": 5_000_000},
        "columns": {},
        "identifiers": {"allow": []},
    }


def test_round_trip_and_hash_stability():
    policy = parse_policy(DESIGN_EXAMPLE)
    data = policy.to_dict()
    assert Policy.from_dict(json.loads(json.dumps(data))) == policy
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert policy.sha256() == hashlib.sha256(canonical.encode()).hexdigest()
    # Same meaning written differently: same hash.
    reordered = """
[identifiers]
allow = ["zip"]
[columns.age]
bounds = [18.0, 100.0]
[columns.email]
rule = "never_output"
[release]
review = true
recipients = ["acme", "acme"]
[privacy]
delta = 0.000001
epsilon = 3
require_dp = false
"""
    assert parse_policy(reordered).sha256() == policy.sha256()
    assert parse_policy(reordered.replace("epsilon = 3", "epsilon = 2")).sha256() != policy.sha256()


def test_from_dict_is_strict():
    data = Policy().to_dict()
    data["privacy"]["kk"] = 3
    with pytest.raises(PolicyError, match="unknown key 'kk' in \\[privacy\\]; did you mean 'k'"):
        Policy.from_dict(data)
    data = Policy().to_dict()
    data["privacy"]["k"] = "10"
    with pytest.raises(PolicyError, match="must be an integer") as info:
        Policy.from_dict(data)
    assert info.value.details == {"line": None, "key": "privacy.k"}


BAD = [
    # (snippet, line, key, message fragment)
    (
        "[outputs]\nallowed = ['aggregate']\n\n[privacy]\nk = 10\n\nepsilom = 3.0\n",
        7,
        "privacy.epsilom",
        "unknown key 'epsilom' in [privacy] at line 7; did you mean 'epsilon'?",
    ),
    ("[privasy]\nk = 3\n", 1, "privasy", "did you mean 'privacy'?"),
    ("title = 'x'\n", 1, "title", "unknown key 'title' in the policy"),
    ("privacy = 3\n", 1, "privacy", "privacy must be a table"),
    ("[privacy]\nk = 1\n", 2, "privacy.k", "k must be at least 2"),
    ("[privacy]\n\nk = '10'\n", 3, "privacy.k", "must be an integer, got a string"),
    ("[privacy]\nk = 2.5\n", 2, "privacy.k", "must be an integer"),
    ("[privacy]\nepsilon = 0\n", 2, "privacy.epsilon", "epsilon must be greater than 0"),
    ("[privacy]\nepsilon = -1.5\n", 2, "privacy.epsilon", "greater than 0"),
    ("[privacy]\nepsilon = inf\n", 2, "privacy.epsilon", "finite number"),
    ("[privacy]\nepsilon = 1\ndelta = 0.01\n", 3, "privacy.delta", "delta must be in (0, 0.001]"),
    ("[privacy]\nepsilon = 1\ndelta = 0\n", 3, "privacy.delta", "delta must be in"),
    ("[privacy]\ndelta = 1e-8\n", 2, "privacy.delta", "the per-job delta (job_delta = 1e-07) cannot exceed"),
    ("[privacy]\nepsilon = 0.5\n", 2, "privacy.epsilon", "the per-job epsilon (job_epsilon = 1) cannot exceed"),
    ("[privacy]\njob_epsilon = 4\n", 2, "privacy.job_epsilon", "cannot exceed the dataset's budget"),
    ("[privacy]\njob_delta = 0\n", 2, "privacy.job_delta", "job_delta must be in"),
    ("[columns.region]\ndomain = []\n", 2, "columns.region.domain", "list of 1 to 1000 non-empty strings"),
    ("[columns.region]\ndomain = ['a', 'a']\n", 2, "columns.region.domain", "repeats a value"),
    ("[columns.region]\ndomain = 'a'\n", 2, "columns.region.domain", "must be an array"),
    ("[privacy]\nrequire_dp = 'yes'\n", 2, "privacy.require_dp", "must be true or false"),
    ("[outputs]\nallowed = ['aggregates']\n", 2, "outputs.allowed", "unknown output kind 'aggregates'"),
    ("[outputs]\nallowed = 'model'\n", 2, "outputs.allowed", "must be an array"),
    ("[outputs]\nallowed = [1]\n", 2, "outputs.allowed", "list of strings"),
    (
        "[release]\nrecipients = ['acme', 'Bad_Org']\n",
        2,
        "release.recipients",
        "'Bad_Org' in release.recipients is not a valid org name",
    ),
    ("[release]\nrecipients = ['a']\n", 2, "release.recipients", "not a valid org name"),
    ("[release]\nreview = 1\n", 2, "release.review", "true or false"),
    (
        "[models]\nestimators = [\n  'ridge',\n  'lasso',\n  'ridge_regresion',\n]\n",
        5,
        "models.estimators",
        "unknown estimator 'ridge_regresion'",
    ),
    ("[models]\nestimators = ['ridge', 'k_neighbors_regressor']\n", 2, "models.estimators", "stores training rows"),
    ("[models]\nmax_model_bytes = 0\n", 2, "models.max_model_bytes", "at least 1"),
    ("[models]\nmax_bytes = 5\n", 2, "models.max_bytes", "did you mean 'max_model_bytes'?"),
    ("[columns.email]\nrule = 'never'\n", 2, "columns.email.rule", "unknown rule 'never' for column 'email'"),
    ("[columns.email]\nrule = 'nevr_output'\n", 2, "columns.email.rule", "did you mean 'never_output'?"),
    ("[columns.age]\nrul = 'allowed'\n", 2, "columns.age.rul", "did you mean 'rule'?"),
    ("[columns.age]\nbounds = [100, 18]\n", 2, "columns.age.bounds", "need lo < hi"),
    ("[columns.age]\nbounds = [5, 5]\n", 2, "columns.age.bounds", "need lo < hi"),
    ("[columns.age]\nbounds = [1, 2, 3]\n", 2, "columns.age.bounds", "must be [lo, hi]"),
    ("[columns.age]\nbounds = ['a', 'b']\n", 2, "columns.age.bounds", "finite number"),
    ("[columns]\nage = 3\n", 2, "columns.age", "must be a table"),
    ("[columns]\nage = { rule = 'x' }\n", 2, "columns.age.rule", "unknown rule 'x'"),
    ("[identifiers]\nallow = ['zip', 3]\n", 2, "identifiers.allow", "list of strings"),
    ("# header\n\nprivacy.k = 1\n", 3, "privacy.k", "k must be at least 2"),
]


@pytest.mark.parametrize(("text", "line", "key", "fragment"), BAD)
def test_invalid_policies_name_the_line(text, line, key, fragment):
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert info.value.details == {"line": line, "key": key}
    assert fragment in info.value.message
    assert f"at line {line}" in info.value.message


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("[privacy\nk = 1\n", 1, 9),
        ("[privacy]\nk = 1\nk = 2\n", 3, None),
        ("[privacy]\nk = \n", 2, None),
    ],
)
def test_toml_syntax_errors_are_rephrased(text, line, column):
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert info.value.message.startswith("the policy is not valid TOML: ")
    assert info.value.details["line"] == line
    assert f"line {line}" in info.value.message
    if column:
        assert info.value.details["column"] == column
    assert "(at line" not in info.value.message


def test_policy_text_must_be_text():
    with pytest.raises(PolicyError, match="must be text"):
        parse_policy(b"[privacy]")  # type: ignore[arg-type]


def test_toml_lines_finds_keys_in_tables_arrays_and_strings():
    lines = TomlLines(
        'a = """\n[fake]\nk = 1\n"""\n[[steps]]\nx = [\n  "p",\n  "q",\n]\n[[steps]]\n[steps.params]\nz = { w = 1 }\n'
    )
    assert lines.line_of(("fake",)) == 1  # inside a string: falls back to the first line
    assert lines.line_of(("steps", 0, "x")) == 6
    assert lines.line_of(("steps", 0, "x"), "q") == 8
    assert lines.line_of(("steps", 1)) == 10
    assert lines.line_of(("steps", 1, "params", "z", "w")) == 12


# -- combine -----------------------------------------------------------------------------------


def _policy(text: str) -> Policy:
    return parse_policy(text)


def test_combine_takes_the_most_restrictive_rule():
    a = _policy("""
[outputs]
allowed = ["aggregate", "model"]
[privacy]
k = 5
epsilon = 1.0
[release]
recipients = ["acme", "bank"]
review = true
[models]
estimators = ["ridge", "lasso", "k_neighbors_regressor"]
allow_row_storing = true
max_model_bytes = 1000
[columns.email]
rule = "never_output"
[columns.age]
bounds = [18, 100]
[columns.spend]
bounds = [0, 500]
""")
    b = _policy("""
[outputs]
allowed = ["aggregate"]
[privacy]
k = 20
epsilon = 2.0
require_dp = true
[release]
recipients = ["acme"]
[models]
estimators = ["ridge", "linear_regression"]
max_model_bytes = 9000
[columns.zip]
rule = "join_only"
[columns.age]
bounds = [0, 65]
""")
    effective = combine({"retail.a": a, "bank.b": b})
    assert effective.to_dict() == {
        "k": 20,
        "outputs": ["aggregate"],
        "estimators": ["ridge"],
        "allow_row_storing": False,
        "max_model_bytes": 1000,
        "never_output": ["email"],
        "join_only": ["zip"],
        "bounds": {"age": [18.0, 65.0], "spend": [0.0, 500.0]},
        "require_dp": True,
        "recipients": ["acme"],
        "review_by": ["retail.a"],
        "limits": {},
        "dp": None,
        "precision": 3,
    }
    json.dumps(effective.to_dict())  # JSON-ready


def test_combine_of_one_default_policy():
    assert combine({"x": Policy()}).to_dict() == {
        "k": 10,
        "outputs": ["aggregate", "model"],
        "estimators": sorted(DEFAULT_ESTIMATORS),
        "allow_row_storing": False,
        "max_model_bytes": 5_000_000,
        "never_output": [],
        "join_only": [],
        "bounds": {},
        "require_dp": True,
        "recipients": [],
        "review_by": [],
        "limits": {},
        "dp": None,
        "precision": 3,
    }


def test_combine_counts_each_owner_as_a_recipient_of_its_own_dataset():
    a, b = _policy("[release]\nrecipients = ['acme']\n"), Policy()
    assert combine({"a": a, "b": b}, owners={"a": "retail", "b": "acme"}).recipients == ("acme",)
    assert combine({"a": a, "b": b}).recipients == ()
    assert combine({"b": b}, owners={"b": "acme"}).recipients == ("acme",)


def test_combine_refuses_bounds_that_do_not_overlap():
    a = _policy("[columns.age]\nbounds = [0, 10]\n")
    b = _policy("[columns.age]\nbounds = [20, 30]\n")
    with pytest.raises(PolicyError, match="bounds of column 'age' do not overlap") as info:
        combine({"a": a, "b": b})
    assert "'a' allows [0, 10]" in info.value.message and "'b' allows [20, 30]" in info.value.message


def test_combine_needs_a_policy():
    with pytest.raises(PolicyError):
        combine({})


# -- identifiers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "reason"),
    [
        ("name", "a person's name"),
        ("first_name", "a person's name"),
        ("LastName", "a person's name"),
        ("full-name", "a person's name"),
        ("firstname", "a person's name"),
        ("Surname", "a person's name"),
        ("username", "a person's name"),
        ("email", "an email address"),
        ("e_mail", "an email address"),
        ("E-Mail", "an email address"),
        ("emailAddress", "an email address"),
        ("contact email", "an email address"),
        ("phone", "a phone number"),
        ("phone_number", "a phone number"),
        ("mobile", "a phone number"),
        ("address", "a street address"),
        ("street", "a street address"),
        ("billing_address", "a street address"),
        ("zip", "a postal code"),
        ("zipCode", "a postal code"),
        ("postcode", "a postal code"),
        ("ssn", "a national id number"),
        ("national_id", "a national id number"),
        ("passport", "a passport or licence number"),
        ("passport_no", "a passport or licence number"),
        ("ip", "a network or device address"),
        ("ip_address", "a network or device address"),
        ("IPAddress", "a network or device address"),
        ("IPv4", "a network or device address"),
        ("dob", "a date of birth"),
        ("date_of_birth", "a date of birth"),
        ("DateOfBirth", "a date of birth"),
        ("iban", "a bank or card number"),
        ("card_number", "a bank or card number"),
        ("creditCard", "a bank or card number"),
        ("latitude", "a precise location"),
        ("id", "a direct id of a person"),
        ("customer_id", "a direct id of a person"),
    ],
)
def test_identifier_columns_are_detected(column, reason):
    assert looks_like_identifier(column) == reason


@pytest.mark.parametrize(
    "column",
    [
        "_pid",
        "income",
        "region",
        "age",
        "spend",
        "product_name",
        "store_name",
        "order_id",
        "zip_count",
        "address_count",
        "has_email",
        "is_email_verified",
        "phone_type",
        "name_length",
        "ship_date",
        "description",
        "tip",
        "lattice",
        "membership",
        "birth_year",
        "",
    ],
)
def test_ordinary_columns_are_not_identifiers(column):
    assert looks_like_identifier(column) is None


def test_the_documented_example_parses():
    doc = (Path(__file__).parents[1] / "docs" / "policy.md").read_text()
    example = doc.split("Example:\n\n```toml\n", 1)[1].split("```", 1)[0]
    policy = parse_policy(example)
    assert policy.estimators == ("gradient_boosting_regressor", "ridge")
    assert policy.column_rule("email").rule == "never_output"


def test_a_column_entry_that_changes_nothing_does_not_change_the_hash():
    assert parse_policy("[columns.age]\nrule = 'allowed'\n").sha256() == Policy().sha256()
    assert parse_policy("[columns.age]\n").to_dict()["columns"] == {}


def test_seed_scenario_policies_parse_and_combine():
    from cleanroom.scenario import BANK_POLICY, RETAIL_POLICY

    effective = combine({"retail.purchases": parse_policy(RETAIL_POLICY), "bank.customers": parse_policy(BANK_POLICY)})
    assert effective.never_output == () and effective.recipients == ("acme-analytics",)
    kept = ["spend", "visits", "category", "region", "last_purchase", "age", "income", "tenure_years", "segment"]
    assert [c for c in kept if looks_like_identifier(c)] == []
    assert all(looks_like_identifier(c) for c in ["customer_id", "email", "full_name", "phone"])


def test_limits_parse_combine_to_the_tightest_and_only_change_the_hash_when_set():
    plain = parse_policy("[privacy]\nk = 5\n")
    assert "limits" not in plain.to_dict()  # hashes of policies without limits did not change
    a = parse_policy("[limits]\nmemory_mb = 1024\ntimeout_seconds = 60\ncpus = 0.5\n")
    b = parse_policy("[limits]\nmemory_mb = 512\npids = 64\n")
    assert a.to_dict()["limits"] == {"cpus": 0.5, "memory_mb": 1024, "timeout_seconds": 60}
    assert Policy.from_dict(a.to_dict()) == a
    assert combine({"a": a, "b": b, "c": plain}).to_dict()["limits"] == {
        "cpus": 0.5,
        "memory_mb": 512,
        "pids": 64,
        "timeout_seconds": 60,
    }
    assert combine({"c": plain}).to_dict()["limits"] == {}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[limits]\nmemory_mb = 10\n", "memory_mb must be at least 256 (got 10) at line 2"),
        ("[limits]\ntimeout_seconds = 1.5\n", "timeout_seconds"),
        ("[limits]\nnetwork = true\n", "unknown key 'network' in [limits] at line 2"),
        ("[limits]\ncpus = 0\n", "cpus must be at least 0.1"),
    ],
)
def test_bad_limits_name_the_line(text, fragment):
    with pytest.raises(ValidationError, match=re.escape(fragment)):
        parse_policy(text)


# -- differential privacy is the default -------------------------------------------------------------


def test_a_policy_that_says_nothing_gets_dp_with_the_default_budget():
    policy = parse_policy("[privacy]\nk = 10\n")
    assert policy.require_dp and not policy.exact
    assert (policy.epsilon, policy.delta, policy.job_epsilon, policy.job_delta) == (3.0, 1e-6, 1.0, 1e-7)
    assert policy.review is False  # DP releases need no review
    assert "lifetime budget epsilon 3" in policy.notes()[0]


def test_exact_mode_is_explicit_and_forces_owner_review():
    for text in ("[privacy]\nrequire_dp = false\n", "[privacy]\nrequire_dp = false\n[release]\nreview = false\n"):
        policy = parse_policy(text)
        assert policy.exact and policy.review is True, text
        assert "review = true is forced" in policy.notes()[0]
        assert Policy.from_dict(policy.to_dict()) == policy
    control = parse_policy("[release]\nreview = false\n")
    assert not control.exact and control.review is False


def test_old_policies_keep_parsing_with_their_budget_now_enforced():
    old = parse_policy("[privacy]\nk = 10\nepsilon = 3.0\ndelta = 1e-6\n")  # opt-in DP before the change
    assert old.require_dp and old.epsilon == 3.0 and old.job_epsilon == 1.0
    assert parse_policy("[privacy]\nepsilon = 2.0\nrequire_dp = true\n").epsilon == 2.0


def test_declared_domains_round_trip_and_change_the_hash():
    policy = parse_policy("[columns.region]\ndomain = ['north', 'south']\n")
    assert policy.column_rule("region").domain == ("north", "south")
    assert Policy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    assert policy.sha256() != parse_policy("").sha256()


def test_combine_takes_the_smallest_per_job_cap_of_the_dp_inputs():
    a = parse_policy("[privacy]\njob_epsilon = 0.5\njob_delta = 1e-8\n")
    b = parse_policy("[privacy]\nrequire_dp = false\n")
    both = combine({"a": a, "b": b})
    assert both.require_dp and (both.epsilon_cap, both.delta_cap) == (0.5, 1e-8)
    exact = combine({"b": b})
    assert not exact.require_dp and exact.epsilon_cap is None and exact.review_by == ("b",)


def test_release_precision_is_declared_checked_and_combined() -> None:
    plain = parse_policy("")
    assert plain.precision is None and "precision" not in plain.to_dict()["release"]  # the hash is unchanged
    two = parse_policy("[release]\nprecision = 2\n")
    assert two.precision == 2 and Policy.from_dict(two.to_dict()) == two and two.sha256() != plain.sha256()
    assert combine({"a": two, "b": plain}).to_dict()["precision"] == 2
    assert combine({"a": plain}).to_dict()["precision"] == 3
    for bad in ("0", "16", '"3"', "2.5"):
        with pytest.raises(PolicyError, match="precision"):
            parse_policy(f"[release]\nprecision = {bad}\n")
