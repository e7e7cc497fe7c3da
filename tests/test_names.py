"""The released-name rule (cleanroom/sandbox/names.py): public names pass, names carrying data do not."""

from __future__ import annotations

import pytest

from cleanroom.sandbox.names import MAX_JOB_STRINGS, NameRule, UnsafeName, job_strings

SCHEMAS = {
    "schemas": {
        "retail.customers": {"region": ["north", "south"], "age": [], "signup": []},
        "bank.accounts": {"region": ["n", "s"], "income": []},
    },
    "job_strings": ["_b", "grp"],
}


@pytest.fixture
def rule() -> NameRule:
    return NameRule.from_request(SCHEMAS)


@pytest.mark.parametrize(
    "name",
    [
        "age",
        "region",
        "region@retail.customers",
        "region@bank.accounts",
        "income_missing",
        "signup_year",
        "region_north",
        "region__south",
        "region=north",
        "region@bank.accounts_s",
        "region_other",
        "age_b",
        "age_grp",
        "age_bin_missing",
        "income_log_missing",
        "region_True",
    ],
)
def test_public_names_pass(rule: NameRule, name: str) -> None:
    rule.check([name], "feature")


@pytest.mark.parametrize(
    "name",
    [
        "u_4f2a9c",
        "leak_ab12_1234",
        "spend",
        "region_west",  # unknown base, unpublished category
        "region@bank.accounts_north",  # another dataset's category
        "age_" + "bin_" * 40 + "missing",  # too long
        "agebin",
        "age_12345",
        "age ",
        "_pid",
        "",
    ],
)
def test_names_that_could_carry_data_fail(rule: NameRule, name: str) -> None:
    with pytest.raises(UnsafeName) as refused:
        rule.check(["age", name], "feature")
    assert "feature #2" in str(refused.value)
    assert name not in str(refused.value) or name in ("", "age ")  # the message never quotes the name


def test_job_strings_are_collected_and_capped() -> None:
    steps = [{"params": {"suffix": "_b", "columns": ["x", "y"], "nested": {"a": "z"}, "n": 3}}, {"params": {}}]
    assert job_strings(steps) == ["_b", "x", "y", "z"]
    many = [f"s{i:04d}" for i in range(1000)]
    rule = NameRule({"age": []}, many)
    assert len(rule.job_strings) == MAX_JOB_STRINGS  # a dictionary of tokens is not a way to spell values


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {},
        {"schemas": []},
        {"schemas": {"d": {"c": "north"}}},
        {"schemas": {"d": {"c": [1]}}},
        {"schemas": {}, "job_strings": "x"},
    ],
)
def test_malformed_requests_are_refused(raw: object) -> None:
    with pytest.raises(ValueError):
        NameRule.from_request(raw)


def test_names_derived_from_a_forbidden_column_are_refused(rule: NameRule) -> None:
    for name in ("region_north", "region@bank.accounts_s", "region_missing", "region"):
        with pytest.raises(UnsafeName, match="never_output or join_only"):
            rule.check([name], "feature", forbidden={"region"})
    rule.check(["age_bin", "income_missing"], "feature", forbidden={"region"})  # control
    assert rule.roots("region@bank.accounts_s") == {"region"}
