import pytest

from cleanroom.errors import PolicyError, ValidationError
from cleanroom.jobspec import FORBIDDEN_KEYS, JobOutputs, JobSpec, Step, check_job, parse_jobspec
from cleanroom.policy import Policy, parse_policy

DROP, SCALE, RIDGE, GROUPBY, GROUPBY2 = (c * 64 for c in "abcde")

JOB = f"""\
name = "spend-model"
recipient = "acme"

[[inputs]]
dataset = "retail.purchases"
[[inputs]]
dataset = "bank.customers"

[join]
how = "inner"

[[steps]]
plugin = "{DROP}"
params = {{ columns = ["email"] }}
dataset = "bank.customers"

[[steps]]
plugin = "{SCALE}"
[steps.params]
columns = ["age"]

[[steps]]
plugin = "{RIDGE}"
params = {{ target = "spend" }}

[outputs]
model = true
metrics = true
aggregates = false
holdout_fraction = 0.2
seed = 7
"""


def test_parse_design_style_job():
    spec = parse_jobspec(JOB)
    assert spec.name == "spend-model" and spec.recipient == "acme" and spec.join == "inner"
    assert spec.dataset_names() == ("retail.purchases", "bank.customers")
    assert spec.plugin_ids() == (DROP, SCALE, RIDGE)
    assert spec.steps[0] == Step(DROP, {"columns": ["email"]}, "bank.customers")
    assert spec.steps[1] == Step(SCALE, {"columns": ["age"]}, None)
    assert spec.outputs == JobOutputs(model=True, metrics=True, holdout_fraction=0.2, seed=7)


def test_to_dict_round_trip():
    spec = parse_jobspec(JOB)
    data = spec.to_dict()
    assert data["steps"][1] == {"plugin": SCALE, "params": {"columns": ["age"]}, "dataset": None}
    assert data["outputs"]["epsilon"] is None
    assert JobSpec.from_dict(data) == spec
    data["steps"][1]["params"]["columns"].append("x")  # to_dict hands out copies
    assert spec.steps[1].params == {"columns": ["age"]}


def test_defaults():
    spec = parse_jobspec(
        f'name = "j"\nrecipient = "acme"\ninputs = [{{dataset = "a"}}]\n'
        f'steps = [{{plugin = "{RIDGE}"}}]\n[outputs]\nmodel = true\n'
    )
    assert spec.join == "inner" and spec.steps[0].params == {} and spec.steps[0].dataset is None
    assert spec.outputs == JobOutputs(model=True)
    assert spec.outputs.holdout_fraction == 0.2 and spec.outputs.seed == 0 and spec.outputs.epsilon is None


def test_from_dict_is_strict():
    data = parse_jobspec(JOB).to_dict()
    data["outputs"]["network"] = "bridge"
    with pytest.raises(ValidationError, match="cannot set 'network'"):
        JobSpec.from_dict(data)
    data = parse_jobspec(JOB).to_dict()
    data["steps"][0]["plugin"] = "x"
    with pytest.raises(ValidationError, match="plugin id") as info:
        JobSpec.from_dict(data)
    assert info.value.details == {"line": None, "key": "steps[0].plugin"}


def _edit(old: str, new: str) -> str:
    assert old in JOB
    return JOB.replace(old, new, 1)


BAD = [
    # (job text, line, key, message fragment)
    (_edit('name = "spend-model"', 'name = "Spend Model"'), 1, "name", "job name 'Spend Model'"),
    (_edit('name = "spend-model"\n', ""), None, "", "needs 'name'"),
    (_edit('recipient = "acme"', 'recipient = "ACME"'), 2, "recipient", "not a valid org name"),
    (_edit('recipient = "acme"', 'recipient = ["acme"]'), 2, "recipient", "must be a string"),
    (_edit('recipient = "acme"', 'recipiant = "acme"'), 2, "recipiant", "did you mean 'recipient'?"),
    (
        _edit('dataset = "bank.customers"\n\n[join]', 'dataset = "retail.purchases"\n\n[join]'),
        7,
        "inputs[1].dataset",
        "an input twice",
    ),
    (_edit('dataset = "retail.purchases"', 'dataset = "Retail"'), 5, "inputs[0].dataset", "not a valid dataset name"),
    (
        _edit('dataset = "retail.purchases"', 'datset = "retail.purchases"'),
        5,
        "inputs[0].datset",
        "did you mean 'dataset'?",
    ),
    (_edit('how = "inner"', 'how = "outer"'), 10, "join.how", "only 'inner'"),
    (_edit(f'plugin = "{DROP}"', f'plugin = "{DROP.upper()}"'), 13, "steps[0].plugin", "lowercase hex"),
    (_edit(f'plugin = "{DROP}"', 'plugin = "drop-identifiers"'), 13, "steps[0].plugin", "plugin id"),
    (_edit(f'plugin = "{SCALE}"', 'plugn = "x"'), 18, "steps[1].plugn", "did you mean 'plugin'?"),
    (
        _edit('dataset = "bank.customers"\n\n[[steps]]', 'dataset = "bank.other"\n\n[[steps]]'),
        15,
        "steps[0].dataset",
        "'bank.other', which is not an input",
    ),
    (_edit('params = { target = "spend" }', "params = [1]"), 24, "steps[2].params", "must be a table"),
    (
        _edit('params = { target = "spend" }', "params = { when = 2024-01-01 }"),
        24,
        "steps[2].params.when",
        "date or time",
    ),
    (_edit("model = true", "modle = true"), 27, "outputs.modle", "did you mean 'model'?"),
    (_edit("model = true\nmetrics = true", "model = false\nmetrics = false"), 26, "outputs", "asks for nothing"),
    (_edit("model = true", "model = false"), 28, "outputs.metrics", "metrics = true needs model = true"),
    (_edit("aggregates = false", "aggregates = 1"), 29, "outputs.aggregates", "true or false"),
    (_edit("holdout_fraction = 0.2", "holdout_fraction = 0.9"), 30, "outputs.holdout_fraction", "in [0.05, 0.5]"),
    (_edit("holdout_fraction = 0.2", "holdout_fraction = 0.01"), 30, "outputs.holdout_fraction", "0.05"),
    (_edit("seed = 7", "seed = -1"), 31, "outputs.seed", "seed must be in"),
    (_edit("seed = 7", "seed = 1.5"), 31, "outputs.seed", "an integer"),
    (_edit("seed = 7", "seed = 7\ndelta = 0.5"), 32, "outputs.delta", "delta must be in (0, 0.001]"),
    (_edit("seed = 7", "seed = 7\nbounds = { age = [5, 1] }"), 32, "outputs.bounds.age", "need lo < hi"),
    (_edit("seed = 7", "seed = 7\nbounds = { age = 5 }"), 32, "outputs.bounds.age", "must be [lo, hi]"),
    (_edit("seed = 7", "seed = 7\nbounds = 5"), 32, "outputs.bounds", "must be a table"),
    (_edit("aggregates = false", "aggregates = true\nepsilon = 0"), 30, "outputs.epsilon", "greater than 0"),
    (_edit('how = "inner"', 'how = "inner"\n[foo]'), 11, "foo", "unknown key 'foo' in the job spec"),
    (_edit('recipient = "acme"', 'recipient = "acme"\ninputs2 = 1'), 3, "inputs2", "did you mean 'inputs'?"),
    (_edit("[outputs]", "colour = 1\n[outputs]"), 26, "steps[2].colour", "unknown key 'colour' in steps[2]"),
]


@pytest.mark.parametrize(("text", "line", "key", "fragment"), BAD)
def test_invalid_specs_name_the_line(text, line, key, fragment):
    with pytest.raises(ValidationError) as info:
        parse_jobspec(text)
    assert info.value.details == {"line": line or 1, "key": key}
    assert fragment in info.value.message


def test_input_and_step_counts():
    head = 'name = "j"\nrecipient = "acme"\n'
    step = f'[[steps]]\nplugin = "{RIDGE}"\n'
    out = "[outputs]\nmodel = true\n"
    nine = "".join(f'[[inputs]]\ndataset = "d{i}"\n' for i in range(9))
    with pytest.raises(ValidationError, match="1 to 8 inputs"):
        parse_jobspec(head + "inputs = []\n" + step + out)
    with pytest.raises(ValidationError, match="1 to 8 inputs"):
        parse_jobspec(head + nine + step + out)
    one = '[[inputs]]\ndataset = "d"\n'
    with pytest.raises(ValidationError, match="1 to 20 steps"):
        parse_jobspec(head + one + step * 21 + out)
    with pytest.raises(ValidationError, match="1 to 20 steps"):
        parse_jobspec(head + "steps = []\n" + one + out)
    assert len(parse_jobspec(head + one + step * 20 + out).steps) == 20


def test_toml_errors_are_validation_errors():
    with pytest.raises(ValidationError, match="the job spec is not valid TOML: .* at line 2") as info:
        parse_jobspec('name = "j"\nrecipient = \n')
    assert info.value.details["line"] == 2


@pytest.mark.parametrize(
    ("old", "new", "key", "line"),
    [
        ('recipient = "acme"', 'recipient = "acme"\nnetwork = true', "network", 3),
        ('recipient = "acme"', 'recipient = "acme"\nimage = "evil:latest"', "image", 3),
        ("[join]", "[runtime]\nname = 'runc'\n[join]", "runtime", 9),
        ('how = "inner"', 'how = "inner"\nmounts = ["/:/host"]', "join.mounts", 11),
        ('dataset = "retail.purchases"', 'dataset = "retail.purchases"\nprivileged = true', "inputs[0].privileged", 6),
        (
            'params = { columns = ["email"] }',
            "params = { columns = [\"email\"] }\nenv = { A = '1' }",
            "steps[0].env",
            15,
        ),
        ("seed = 7", "seed = 7\n[outputs.limits]\nmemory = '64g'", "outputs.limits", 32),
        ("seed = 7", "seed = 7\nmemory = '64g'", "outputs.memory", 32),
        ("seed = 7", "seed = 7\ntimeout = 99999", "outputs.timeout", 32),
        ('columns = ["age"]', "columns = [\"age\"]\nNetwork = 'host'", "steps[1].params.Network", 21),
    ],
)
def test_security_knobs_are_refused_anywhere(old, new, key, line):
    with pytest.raises(ValidationError) as info:
        parse_jobspec(_edit(old, new))
    name = key.split(".")[-1].split("]")[-1]
    assert f"the job spec cannot set {name!r}: isolation is set by the room's policy" in info.value.message
    assert info.value.details == {"line": line, "key": key}


def test_forbidden_keys_cover_the_usual_knobs():
    assert {
        "network",
        "image",
        "runtime",
        "mounts",
        "privileged",
        "env",
        "limits",
        "memory",
        "timeout",
    } <= FORBIDDEN_KEYS


# -- check_job ---------------------------------------------------------------------------------


def _manifest(name: str, kind: str, params: dict) -> dict:
    return {
        "name": name,
        "version": "1.0.0",
        "kind": kind,
        "entry": "plugin.py",
        "description": f"{name} for tests",
        "params": params,
    }


COLUMNS = {"columns": {"type": "array", "items": "string", "required": True}}
PLUGINS = {
    DROP: {
        "name": "drop-identifiers",
        "kind": "preprocess",
        "manifest": _manifest("drop-identifiers", "preprocess", COLUMNS),
    },
    SCALE: {"name": "scale", "kind": "features", "manifest": _manifest("scale", "features", COLUMNS)},
    RIDGE: {
        "name": "ridge",
        "kind": "model",
        "manifest": _manifest(
            "ridge",
            "model",
            {
                "target": {"type": "string", "required": True},
                "estimator": {"type": "string", "default": "ridge"},
                "alpha": {"type": "number", "default": 1.0},
            },
        ),
    },
    GROUPBY: {
        "name": "group-by",
        "kind": "analysis",
        "manifest": _manifest(
            "group-by", "analysis", {"group_by": {"type": "array", "items": "string", "required": True}}
        ),
    },
    GROUPBY2: {"name": "group-by-2", "kind": "analysis", "manifest": _manifest("group-by-2", "analysis", {})},
}
RETAIL = "[release]\nrecipients = ['acme']\n[privacy]\nepsilon = 3.0\n[columns.age]\nbounds = [18, 100]\n"
BANK = "[release]\nrecipients = ['acme', 'other']\nreview = true\n[columns.email]\nrule = 'never_output'\n"


def _datasets(retail: str = RETAIL, bank: str = BANK) -> dict:
    return {
        "retail.purchases": {
            "owner": "retail",
            "policy": parse_policy(retail),
            "policy_version": 1,
            "sha256": "1" * 64,
        },
        "bank.customers": {"owner": "bank", "policy": parse_policy(bank), "policy_version": 3, "sha256": "2" * 64},
    }


def _approvals(datasets: dict, plugins=PLUGINS) -> set:
    return {(pid, name, ds["policy_version"], ds["sha256"]) for pid in plugins for name, ds in datasets.items()}


def _check(spec=None, *, datasets=None, plugins=PLUGINS, approvals=None, recipient_exists=True, budget=None):
    spec = spec if isinstance(spec, JobSpec) else parse_jobspec(spec or JOB)
    datasets = datasets or _datasets()
    approvals = _approvals(datasets) if approvals is None else approvals
    budget = {"retail.purchases": 3.0} if budget is None else budget
    return check_job(
        spec,
        datasets=datasets,
        plugins=plugins,
        approvals=approvals,
        recipient_exists=recipient_exists,
        budget_remaining=budget,
    )


AGG_JOB = _edit(
    "model = true\nmetrics = true\naggregates = false", "model = false\nmetrics = false\naggregates = true"
).replace(
    f'plugin = "{RIDGE}"\nparams = {{ target = "spend" }}',
    f'plugin = "{GROUPBY}"\nparams = {{ group_by = ["region"] }}',
)


def test_check_job_passes_and_returns_the_effective_policy():
    effective = _check()
    assert effective.to_dict() == {
        "k": 10,
        "outputs": ["aggregate", "model"],
        "estimators": sorted(Policy().estimators),
        "allow_row_storing": False,
        "max_model_bytes": 5_000_000,
        "never_output": ["email"],
        "join_only": [],
        "bounds": {"age": [18.0, 100.0]},
        "require_dp": True,
        "recipients": ["acme"],
        "review_by": ["bank.customers"],
        "limits": {},
        "dp": {"epsilon": 1.0, "delta": 1e-7},
        "precision": 3,
    }


def test_check_job_accepts_stored_policy_dicts_and_dp_within_budget():
    datasets = _datasets()
    for ds in datasets.values():
        ds["policy"] = ds["policy"].to_dict()
    _check(AGG_JOB.replace("seed = 7", "seed = 7\nepsilon = 1.0"), datasets=datasets)


def test_step_on_one_dataset_needs_only_that_owners_approval():
    datasets = _datasets()
    approvals = _approvals(datasets) - {(DROP, "retail.purchases", 1, "1" * 64)}
    _check(approvals=approvals)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"datasets": {"bank.customers": _datasets()["bank.customers"]}}, "unknown dataset 'retail.purchases'"),
        ({"recipient_exists": False}, "no org named 'acme' in the room"),
        ({"plugins": {k: v for k, v in PLUGINS.items() if k != SCALE}}, f"unknown plugin {SCALE[:12]}"),
        (
            {"datasets": _datasets(bank="[release]\nrecipients = ['other']\n")},
            "dataset 'bank.customers' does not allow releases to 'acme'",
        ),
        (
            {"datasets": _datasets(retail="[release]\nrecipients = ['acme']\n[outputs]\nallowed = ['aggregate']\n")},
            "dataset 'retail.purchases' does not allow model outputs",
        ),
        (
            {"approvals": _approvals(_datasets()) - {(SCALE, "bank.customers", 3, "2" * 64)}},
            f"plugin 'scale' ({SCALE[:12]}) is not approved by 'bank' for dataset 'bank.customers'",
        ),
        (
            {"approvals": _approvals(_datasets()) - {(DROP, "bank.customers", 3, "2" * 64)}},
            f"plugin 'drop-identifiers' ({DROP[:12]}) is not approved by 'bank'",
        ),
        (
            {"approvals": {(p, d, v - 1, s) for p, d, v, s in _approvals(_datasets())}},  # an older policy
            "is not approved by 'bank' for dataset 'bank.customers' at policy version 3 and",
        ),
        (
            {"approvals": {(p, d, v, "9" * 64) for p, d, v, s in _approvals(_datasets())}},  # other data
            "and its current data (4 more missing)",
        ),
    ],
)
def test_check_job_refusals(kwargs, fragment):
    with pytest.raises(PolicyError) as info:
        _check(**kwargs)
    assert fragment in info.value.message


def test_recipient_may_be_the_owner_of_every_input():
    datasets = _datasets(retail="[privacy]\nepsilon = 1.0\n", bank="")
    spec = parse_jobspec(JOB.replace('recipient = "acme"', 'recipient = "bank"'))
    with pytest.raises(
        PolicyError,
        match="dataset 'retail.purchases' does not allow releases to 'bank'"
        " \\(its policy allows: nobody but its owner\\)",
    ):
        _check(spec, datasets=datasets)
    datasets["retail.purchases"]["owner"] = "bank"
    assert _check(spec, datasets=datasets).recipients == ("bank",)


def _steps(*steps: tuple[str, str | None], **outputs) -> JobSpec:
    return JobSpec(
        name="j",
        recipient="acme",
        inputs=("retail.purchases", "bank.customers"),
        steps=tuple(Step(pid, _PARAMS[pid], ds) for pid, ds in steps),
        outputs=JobOutputs(**outputs),
    )


_PARAMS = {
    DROP: {"columns": ["email"]},
    SCALE: {"columns": ["age"]},
    RIDGE: {"target": "spend"},
    GROUPBY: {"group_by": ["region"]},
    GROUPBY2: {},
}


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (_steps((DROP, None), model=True), "model = true needs exactly one model step (the job has 0)"),
        (_steps((RIDGE, None), (RIDGE, None), model=True), "exactly one model step (the job has 2)"),
        (_steps((RIDGE, None), (GROUPBY, None), model=True), "does not ask for aggregates"),
        (_steps((RIDGE, None), aggregates=True), "does not ask for a model"),
        (_steps((DROP, None), aggregates=True), "aggregates = true needs at least one analysis step"),
        (
            _steps((RIDGE, None), (SCALE, None), model=True),
            "step 1 ('scale', bbbbbbbbbbbb) is a features step after a model step",
        ),
        (_steps((GROUPBY, None), (DROP, None), aggregates=True), "is a preprocess step after an analysis step"),
        (_steps((RIDGE, "bank.customers"), model=True), "is a model step: it runs on the joined inputs"),
        (
            _steps((SCALE, None), (DROP, "bank.customers"), (RIDGE, None), model=True),
            "step 1 ('drop-identifiers', aaaaaaaaaaaa) runs on 'bank.customers' before the join",
        ),
        (_steps((DROP, "bank.other"), (RIDGE, None), model=True), "'bank.other', which is not an input"),
    ],
)
def test_check_job_refuses_bad_pipelines(spec, fragment):
    with pytest.raises(PolicyError) as info:
        _check(spec)
    assert fragment in info.value.message


def test_several_analysis_steps_and_per_dataset_steps_pass():
    spec = _steps(
        (DROP, "bank.customers"),
        (DROP, "retail.purchases"),
        (SCALE, None),
        (RIDGE, None),
        (GROUPBY, None),
        (GROUPBY2, None),
        model=True,
        metrics=True,
        aggregates=True,
    )
    assert _check(spec).k == 10


def test_unknown_plugin_kind_is_refused():
    plugins = dict(PLUGINS)
    plugins[SCALE] = {**PLUGINS[SCALE], "kind": "exfiltrate"}
    with pytest.raises(PolicyError, match="unknown kind 'exfiltrate'"):
        _check(plugins=plugins)


@pytest.mark.parametrize("params", [{}, {"columns": "age"}, {"columns": ["age"], "colums": ["x"]}])
def test_check_job_validates_params_against_the_manifest(params):
    spec = _steps((SCALE, None), (RIDGE, None), model=True)
    spec = JobSpec(**{**spec.__dict__, "steps": (Step(SCALE, params), spec.steps[1])})
    with pytest.raises(PolicyError) as info:
        _check(spec)
    assert info.value.message.startswith(f"step 0 ('scale', {SCALE[:12]}): ")


def test_every_job_over_a_dp_dataset_gets_the_per_job_cap_by_default():
    effective = _check(AGG_JOB)  # no epsilon in the spec: the smallest per-job cap of the inputs
    assert effective.job_epsilon == 1.0 and effective.job_delta == 1e-7
    assert _check(AGG_JOB.replace("seed = 7", "seed = 7\nepsilon = 0.5")).job_epsilon == 0.5
    with pytest.raises(
        PolicyError,
        match="asks for epsilon 2, delta 1e-07 but dataset 'bank.customers' allows at "
        "most epsilon 1, delta 1e-07 per job",
    ):
        _check(AGG_JOB.replace("seed = 7", "seed = 7\nepsilon = 2.0"))
    # exact mode only when every input says so; then the job spends nothing
    exact = "[release]\nrecipients = ['acme']\n[privacy]\nrequire_dp = false\n"
    assert _check(AGG_JOB, datasets=_datasets(retail=exact, bank=exact)).job_epsilon is None
    assert _check(AGG_JOB, datasets=_datasets(retail=exact)).job_epsilon == 1.0


def test_dp_jobs_with_a_model_other_than_linear_or_ridge_are_refused_at_submission():
    spec = _steps((RIDGE, None), model=True)
    tree = JobSpec(**{**spec.__dict__, "steps": (Step(RIDGE, {"target": "spend", "estimator": "svr"}),)})
    plugins = {
        **PLUGINS,
        RIDGE: {
            **PLUGINS[RIDGE],
            "manifest": _manifest(
                "ridge", "model", {"target": {"type": "string", "required": True}, "estimator": {"type": "string"}}
            ),
        },
    }
    with pytest.raises(
        PolicyError, match="fits only linear_regression, ridge, .* not 'svr'.*outputs.sample_and_aggregate"
    ):
        _check(tree, plugins=plugins)
    ridge = JobSpec(**{**spec.__dict__, "steps": (Step(RIDGE, {"target": "spend", "estimator": "ridge"}),)})
    _check(ridge, plugins=plugins)  # control
    _check(JobSpec(**{**spec.__dict__, "steps": (Step(RIDGE, {"target": "spend"}),)}))  # the manifest default
    unknown = {
        **PLUGINS,
        RIDGE: {
            **PLUGINS[RIDGE],
            "manifest": _manifest("ridge", "model", {"target": {"type": "string", "required": True}}),
        },
    }
    with pytest.raises(PolicyError, match="must name its estimator"):  # not known before running: refused
        _check(JobSpec(**{**spec.__dict__, "steps": (Step(RIDGE, {"target": "spend"}),)}), plugins=unknown)


def test_epsilon_beyond_the_remaining_budget_is_refused():
    spec = AGG_JOB.replace("seed = 7", "seed = 7\nepsilon = 0.5")
    with pytest.raises(PolicyError) as info:
        _check(spec, budget={"retail.purchases": 0.25})
    assert info.value.message == (
        "the job asks for epsilon 0.5 but dataset 'retail.purchases' has 0.25 left of its budget 3"
    )
    assert info.value.details == {"dataset": "retail.purchases", "remaining": 0.25}
    _check(spec, budget={"retail.purchases": 0.5})  # exactly what is left
    _check(spec, budget={"retail.purchases": 1.0, "bank.customers": None})  # None: checked by the ledger


def test_job_spec_bounds_narrow_the_owners_and_fill_the_rest():
    spec = AGG_JOB.replace("seed = 7", "seed = 7\nbounds = { age = [20, 200], spend = [0, 100] }")
    assert dict(_check(spec).bounds) == {"age": (20.0, 100.0), "spend": (0.0, 100.0)}
    with pytest.raises(PolicyError, match="bounds of 'age' do not overlap"):
        _check(AGG_JOB.replace("seed = 7", "seed = 7\nbounds = { age = [200, 300] }"))


def test_check_job_refusals_are_policy_errors():
    assert issubclass(PolicyError, ValidationError)
