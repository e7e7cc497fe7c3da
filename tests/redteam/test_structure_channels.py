"""Release structure chosen by the data (issue 12, classes 1, 4, 5 and 6): a hostile but approved plugin
tries to make the *shape* of a release carry values: group keys, column names, hyper-parameters, the
low decimals of a statistic, renamed bins that difference each other, models with more free
parameters than units, and a never_output column copied under another name.

Most attacks hand the trusted release phase (`cleanroom.sandbox.release.phase.run`, the function its container
runs) exactly what the runner hands it: the real run's frame and specs, and the mock run's frame and
specs (`cleanroom.runner.mockrun`). The never_output and mock-run attacks go through the whole stack
(API over HTTP, runner, Docker sandboxes). Every attack has a harmless control that still releases.
"""

from __future__ import annotations

import io
import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio

from cleanroom.sandbox import wire
from cleanroom.sandbox.release import phase as release
from cleanroom.sandbox.release import structure
from tests.redteam.conftest import AGGREGATE_CODE, AGGREGATE_PARAMS, stack_for_module, write_plugin

K = 5
REGIONS = ["east", "north", "south", "west"]
SEGMENTS = ["affluent", "mass", "private"]
POLICY = {
    "k": K,
    "outputs": ["aggregate", "model"],
    "allow_row_storing": False,
    "max_model_bytes": 5_000_000,
    "estimators": [
        "ridge",
        "linear_regression",
        "decision_tree_regressor",
        "random_forest_regressor",
        "gradient_boosting_regressor",
    ],
    "never_output": [],
    "join_only": [],
    "bounds": {},
    "require_dp": False,
}


def frame(n: int = 400, seed: int = 0, rows_per_unit: int = 1) -> pd.DataFrame:
    """The joined frame as the compute phase hands it over (int64 `_pid` codes)."""
    rng = np.random.default_rng(seed)
    units = n // rows_per_unit
    base = pd.DataFrame(
        {
            "_pid": np.arange(units, dtype=np.int64),
            "region": rng.choice(REGIONS, units),
            "segment": rng.choice(SEGMENTS, units),
            "age": rng.integers(18, 90, units),
            "visits": rng.poisson(10, units).astype("float64"),
            "code": [f"person-{secrets.token_hex(4)}" for _ in range(units)],
        }
    )
    df = base.loc[base.index.repeat(rows_per_unit)].reset_index(drop=True)
    df["spend"] = 3.0 * df["age"] + 5 * df["visits"] + rng.normal(0, 10, len(df))
    return df


def mock(n: int = 100) -> pd.DataFrame:
    """What the same pipeline gives on the public mock data: same columns and types, other values."""
    df = frame(n, seed=99)
    df["code"] = [f"code-{i:08x}" for i in range(len(df))]  # mock strings are random tokens
    return df


NAMES = {
    "schemas": {
        "owner.data": {"region": REGIONS, "segment": SEGMENTS, "age": [], "visits": [], "spend": [], "code": []}
    },
    "job_strings": ["_band", "_band2"],
}


def run(
    real: pd.DataFrame,
    mocked: pd.DataFrame | None = None,
    *,
    specs: list[dict[str, Any]] | None = None,
    model: dict[str, Any] | None = None,
    mock_specs: list[dict[str, Any]] | None = None,
    mock_model: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
    names: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The release phase, fed as the runner feeds it (the mock run's specs default to the real run's)."""
    mocked = mock() if mocked is None else mocked
    request = {
        "job_id": "job_structure",
        "policy": policy or POLICY,
        "outputs": {"model": model is not None, "metrics": model is not None, "aggregates": bool(specs)},
        "model_spec": model,
        "analysis_specs": specs or [],
        "dp": {"epsilon": None, "delta": None},
        "names": names or NAMES,
        "table_names": [s["name"] for s in specs or []],
        "mock": {
            "model_spec": model if mock_model is None else mock_model,
            "analysis_specs": (specs or []) if mock_specs is None else mock_specs,
        },
    }
    return release.run(
        request, {release.FRAME: wire.frame_to_bytes(real), structure.MOCK_FRAME: wire.frame_to_bytes(mocked)}
    )


def table(files: dict[str, bytes], name: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(files[f"artifacts/aggregates/{name}.csv"]), dtype={0: str})


def failed(meta: dict[str, Any], check: str) -> str:
    assert meta["ok"] is False and meta["artifacts"] == {}, meta
    assert any(c["name"] == check and not c["passed"] for c in meta["checks"]), meta["checks"]
    return str(meta["error"])


BY = {"name": "t", "group_by": ["segment"], "metrics": [{"agg": "count"}, {"agg": "mean", "column": "spend"}]}
BY_REGION = {**BY, "name": "by_region", "group_by": ["region"]}


# ------------------------------------------------------------------------------ 1. structure chosen by the data


def _whole_rows(df: pd.DataFrame) -> pd.Series:
    return df["code"] + "|" + df["age"].astype(str) + "|" + df["spend"].round(2).astype(str)


GROUP_KEY_ATTACKS = {
    # the plugin overwrites a public column with whole rows on the real data only (it can tell mock data)
    "whole rows on real data only": lambda real, mocked: (real.assign(segment=_whole_rows(real)), mocked),
    # ... or on both, so that the mock run declares its own rows and the real run brings others
    "whole rows on both runs": lambda real, mocked: (
        real.assign(segment=_whole_rows(real)),
        mocked.assign(segment=_whole_rows(mocked)),
    ),
    # one person's value copied onto k units, so its group reaches k (the old known limit)
    "one row cloned onto k units": lambda real, mocked: (
        real.assign(segment=np.where(real.index < K, real["code"].iloc[0], real["segment"])),
        mocked,
    ),
    # a rare value: categories the owner never published (fewer than 20 rows hold each)
    "rare unpublished values": lambda real, mocked: (
        real.assign(segment=np.where(real.index < 3 * K, "vip-" + real["code"].str[-2:], real["segment"])),
        mocked,
    ),
}


@pytest.mark.parametrize("attack", sorted(GROUP_KEY_ATTACKS))
def test_a_group_key_made_from_the_data_releases_no_value(attack: str) -> None:
    real, mocked = GROUP_KEY_ATTACKS[attack](frame(), mock())
    meta, files = run(real, mocked, specs=[BY])
    assert meta["ok"] is True, meta
    out = table(files, "t")
    declared = [*sorted(set(structure.key_text(mocked["segment"]).dropna()) | set(SEGMENTS) - {"other"}), "other"]
    assert list(out["segment"]) == declared  # every declared group, nothing else: keys are fixed before the run
    text = files["artifacts/aggregates/t.csv"].decode()
    assert not any(code in text for code in real["code"]) and "vip-" not in text
    counted = out.set_index("segment")["count"]
    assert counted["other"] >= K  # what fell outside the domain is counted in `other`, not named


def test_control_a_public_group_key_releases_its_groups() -> None:
    meta, files = run(frame(), specs=[BY_REGION])
    assert meta["ok"] is True, meta
    out = table(files, "by_region").set_index("region")
    assert list(out.index) == [*REGIONS, "other"]
    assert (out.loc[REGIONS, "count"] >= K).all() and pd.isna(out.loc["other", "count"])


def test_every_declared_group_is_reported_so_its_presence_says_nothing() -> None:
    real = frame()
    real = real[real["region"] != "west"]  # nobody of the real data is in the west
    meta, files = run(real, specs=[BY_REGION])
    out = table(files, "by_region").set_index("region")
    assert meta["ok"] and list(out.index) == [*REGIONS, "other"]
    assert out.loc["west"].isna().all() and (out.loc[["east", "north", "south"], "count"] >= K).all()


STRUCTURE_ATTACKS = {
    # the plugin picks which allowed name to emit from the data (one-hot of a published category)
    "a name chosen by the data": lambda df: df.rename(columns={"segment": "segment_" + df["segment"].iloc[0]}),
    "an extra column": lambda df: df.assign(region_other=(df["code"].str[-1] == "a").astype("int8")),
    "a missing column": lambda df: df.drop(columns=["visits"]),
    "another type": lambda df: df.assign(visits=df["visits"].astype("int64")),
}


@pytest.mark.parametrize("attack", sorted(STRUCTURE_ATTACKS))
def test_columns_chosen_by_the_data_release_nothing(attack: str) -> None:
    meta, files = run(STRUCTURE_ATTACKS[attack](frame()), specs=[BY_REGION])
    message = failed(meta, "structure")
    assert "person-" not in message and files == {}


def test_control_the_same_columns_in_another_order_release_in_the_mock_order() -> None:
    real = frame()
    shuffled = real[list(reversed(real.columns))]
    model = {"estimator": "ridge", "params": {"alpha": 1.0}, "target": "spend", "features": None, "task": "regression"}
    meta, files = run(shuffled, model=model)
    assert meta["ok"] is True, meta
    metrics = json.loads(files["artifacts/metrics.json"])
    assert metrics["features"] == ["age", "visits"]  # the mock frame's order, not the real one's


RIDGE = {
    "estimator": "ridge",
    "params": {"alpha": 1.0},
    "target": "spend",
    "features": ["age", "visits"],
    "task": "regression",
}
SPEC_ATTACKS: dict[str, dict[str, Any]] = {
    "alpha from the data": {"model": {**RIDGE, "params": {"alpha": 1.2345}}},
    "features chosen by the data": {"model": {**RIDGE, "features": ["age"]}},
    "estimator chosen by the data": {"model": {**RIDGE, "estimator": "linear_regression", "params": {}}},
    "metrics chosen by the data": {"specs": [{**BY_REGION, "metrics": [{"agg": "count"}]}]},
    "group-by chosen by the data": {"specs": [{**BY_REGION, "group_by": ["segment"]}]},
    "one more table": {"specs": [BY_REGION, {**BY, "name": "u"}]},
}


@pytest.mark.parametrize("attack", sorted(SPEC_ATTACKS))
def test_specs_that_differ_from_the_mock_run_release_nothing(attack: str) -> None:
    """Hyper-parameters, features, metrics and groups come from the spec, the code and the mock data: a value
    computed in the compute phase (the model_spec hook runs after plugins saw the data) cannot reach them."""
    real = SPEC_ATTACKS[attack]
    specs = real.get("specs", [BY_REGION])
    model = real.get("model", RIDGE)
    meta, files = run(frame(), specs=specs, model=model, mock_specs=[BY_REGION], mock_model=RIDGE)
    failed(meta, "structure")


def test_control_specs_equal_to_the_mock_run_release() -> None:
    meta, files = run(frame(), specs=[BY_REGION], model=RIDGE)
    assert meta["ok"] is True and "artifacts/model.skops" in files, meta


def _significant(text: str) -> int:
    digits = re.sub(r"[^0-9]", "", text.split("e")[0]).lstrip("0")
    return len(digits.rstrip("0")) if "." not in text else len(digits)


def test_low_decimals_of_exact_numbers_carry_no_value() -> None:
    """A plugin nudges one row so that the 6th digit of a mean spells a value; every exact number leaves
    with at most 3 significant digits (tables, metrics, model coefficients, tree thresholds and leaves)."""
    real = frame()
    real.loc[0, "spend"] += 0.004321 * len(real)  # the mean of everyone's spend now ends in ...4321
    meta, files = run(
        real,
        specs=[BY_REGION, {**BY_REGION, "name": "by_region_sum", "metrics": [{"agg": "sum", "column": "spend"}]}],
        model=RIDGE,
    )
    assert meta["ok"] is True, meta
    for name in ("by_region", "by_region_sum"):
        cells = files[f"artifacts/aggregates/{name}.csv"].decode().splitlines()[1:]
        numbers = [c for line in cells for c in line.split(",")[1:] if c]
        assert numbers and all(_significant(c) <= 3 for c in numbers), numbers
    metrics = json.loads(files["artifacts/metrics.json"])["metrics"]
    assert all(v is None or float(f"{v:.3g}") == v for v in metrics.values()), metrics
    model = sio.loads(files["artifacts/model.skops"], trusted=[])
    assert np.allclose(structure.round_sig(model.coef_, 3), model.coef_, rtol=1e-12, atol=0)
    assert np.isclose(structure.round_sig(float(model.intercept_), 3), float(model.intercept_), rtol=1e-12)
    # control: still the statistic, to 3 digits
    exact = real.groupby("region")["spend"].mean()
    released = table(files, "by_region").set_index("region")["mean_spend"]
    assert np.allclose(released[REGIONS], exact[REGIONS], rtol=5e-3)


def test_tree_thresholds_and_leaf_values_are_rounded() -> None:
    tree = {**RIDGE, "estimator": "decision_tree_regressor", "params": {"min_samples_leaf": 40}}
    meta, files = run(frame(), model=tree)
    assert meta["ok"] is True, meta
    fitted = sio.loads(files["artifacts/model.skops"], trusted=["sklearn.tree._tree.Tree"])
    inner = fitted.tree_.children_left != -1
    thresholds, values = fitted.tree_.threshold[inner], fitted.tree_.value
    assert np.allclose(structure.round_sig(thresholds, 3), thresholds, rtol=1e-12, atol=0)
    assert np.allclose(structure.round_sig(values, 3), values, rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------ 4. differencing that renaming defeats


def _bins(values: pd.Series, edges: list[float]) -> pd.Series:
    labels = [
        f"< {edges[0]:g}",
        *[f"[{a:g}, {b:g})" for a, b in zip(edges, edges[1:], strict=False)],
        f">= {edges[-1]:g}",
    ]
    return pd.cut(values, [-np.inf, *edges, np.inf], right=False, labels=labels).astype(str)


def _with_bins(df: pd.DataFrame, **columns: list[float]) -> pd.DataFrame:
    return df.assign(**{name: _bins(df["age"], edges) for name, edges in columns.items()})


def _spec(name: str, *group_by: str) -> dict[str, Any]:
    return {"name": name, "group_by": list(group_by), "metrics": [{"agg": "count"}, {"agg": "sum", "column": "spend"}]}


def _binned(**columns: list[float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    return _with_bins(frame(), **columns), _with_bins(mock(), **columns)


DIFFERENCING = {
    # a table and its complement-of-one: bins [< 30, >= 30] and [< 30, [30, 31), >= 31] of the same column
    "two binnings of one column under two suffixes": (
        _binned(age_band=[30], age_band2=[30, 31]),
        [_spec("coarse", "age_band"), _spec("fine", "age_band2")],
    ),
    "a binning and its raw column": (_binned(age_band=[30]), [_spec("coarse", "age_band"), _spec("fine", "age")]),
    "the overall row and one renamed group-by": (_binned(age_band=[30]), [_spec("overall"), _spec("fine", "age_band")]),
    # a bin of age hidden under another public name: lineage is fooled, the groups themselves nest
    "a binning disguised as another column": (
        (
            _with_bins(frame(), age_band=[30, 31]).assign(segment=lambda d: _bins(d["age"], [30])),
            _with_bins(mock(), age_band=[30, 31]).assign(segment=lambda d: _bins(d["age"], [30])),
        ),
        [_spec("coarse", "segment"), _spec("fine", "age_band")],
    ),
}


@pytest.mark.parametrize("attack", sorted(DIFFERENCING))
def test_renamed_groupings_that_nest_release_nothing(attack: str) -> None:
    (real, mocked), specs = DIFFERENCING[attack]
    meta, files = run(real, mocked, specs=specs)
    message = failed(meta, "aggregate:spec")
    assert "suppressed" in message and files == {}


def test_control_unrelated_groupings_and_repeated_ones_release() -> None:
    real, mocked = _binned(age_band=[30, 60])
    meta, files = run(
        real,
        mocked,
        specs=[
            _spec("a", "region"),
            _spec("b", "age_band"),
            {**_spec("c", "region"), "metrics": [{"agg": "mean", "column": "spend"}]},
        ],
    )
    assert meta["ok"] is True, meta
    assert list(table(files, "b")["age_band"]) == [*sorted(set(mocked["age_band"])), "other"]


# ------------------------------------------------------------------------------ 5. models that memorise


def _model(estimator: str, **params: Any) -> dict[str, Any]:
    return {**RIDGE, "estimator": estimator, "params": params}


SUBSAMPLED = {
    "forest of small bootstraps": _model(
        "random_forest_regressor", max_samples=0.02, min_samples_leaf=K, n_estimators=3, max_depth=2, random_state=0
    ),
    "boosting on 5 % subsamples": _model(
        "gradient_boosting_regressor", subsample=0.05, min_samples_leaf=K, n_estimators=3, max_depth=2, random_state=1
    ),
}


@pytest.mark.parametrize("attack", sorted(SUBSAMPLED))
def test_subsampled_ensembles_over_repeated_rows_are_refused(attack: str) -> None:
    """Each tree of these sees a few rows; with 10 rows per unit, a leaf of min_samples_leaf=k in-bag rows
    can hold one unit, though all training rows falling in it span many (what the old count counted)."""
    meta, _ = run(frame(n=4000, rows_per_unit=10), mock(), model=SUBSAMPLED[attack])
    failed(meta, "model:leaf_units")


def test_control_a_subsampled_ensemble_over_one_row_per_unit_releases() -> None:
    spec = _model(
        "gradient_boosting_regressor", subsample=0.5, min_samples_leaf=K, n_estimators=3, max_depth=2, random_state=0
    )
    meta, files = run(frame(), model=spec)
    assert meta["ok"] is True and "artifacts/model.skops" in files, meta


TOO_MANY = {
    "a forest of many trees": _model("random_forest_regressor", n_estimators=60, min_samples_leaf=K, random_state=0),
    "boosting with many stages": _model("gradient_boosting_regressor", n_estimators=300, min_samples_leaf=K),
    "deep boosting": _model("gradient_boosting_regressor", n_estimators=20, max_depth=6, min_samples_leaf=K),
}


@pytest.mark.parametrize("attack", sorted(TOO_MANY))
def test_models_with_more_free_parameters_than_units_over_k_are_refused(attack: str) -> None:
    """Every leaf holds k units, but 60 trees x 30 leaves are 1800 values fitted to 320 units: enough
    equations to solve for training targets. The budget is units / k free parameters in all."""
    meta, _ = run(frame(), model=TOO_MANY[attack])
    message = failed(meta, "model:parameters")
    found = re.search(r"has (\d+) free parameters .*its (\d+) training units allow at most \2 / k=5 = (\d+)", message)
    assert found, message
    count, units, cap = map(int, found.groups())
    assert count > cap == units // K


def test_control_a_model_within_its_parameter_budget_releases() -> None:
    meta, files = run(
        frame(), model=_model("gradient_boosting_regressor", n_estimators=4, max_depth=2, min_samples_leaf=K)
    )
    assert meta["ok"] is True, meta
    assert any(c["name"] == "model:parameters" and c["passed"] for c in meta["checks"])


# ------------------------------------------------------------------------------ whole stack: mock run, never_output

NEVER_OUTPUT = '[columns.visits]\nrule = "never_output"\n'
EXACT = "require_dp = false"
# Looks for `visits` (by name or any name derived from it) and launders it into `spend`, which the
# job releases as mean_spend; prints the columns it saw to the owners' log.
LAUNDER = """\
import sys


@hookimpl
def preprocess(df, params):
    seen = [c for c in df.columns if c == "visits" or str(c).startswith("visits")]
    print("SAW", sorted(map(str, df.columns)), file=sys.stderr)
    df = df.copy()
    if seen:
        df["spend"] = df[seen[0]].astype("float64") * 1000.0 + 7.0  # laundered into an allowed column
    return df
"""
# Makes the group key out of whole rows, on the real data only (mock secret codes are public tokens).
WHOLE_ROWS = """\
@hookimpl
def preprocess(df, params):
    df = df.copy()
    if not df["secret_code"].astype(str).str.startswith("secret_code-").all():
        df["region"] = df["secret_code"].astype(str) + "|" + df["spend"].astype(str)
    return df
"""
# The model_spec hook runs after the preprocess plugin saw the data: the two share the process, so a
# value computed from the data can reach a hyper-parameter (here through `builtins`).
PASS_ON = """\
import builtins


@hookimpl
def preprocess(df, params):
    builtins.CLEANROOM_ALPHA = float(df["spend"].mean()) if params.get("hostile") else 1.0
    return df
"""
MODEL_FROM_DATA = """\
import builtins


@hookimpl
def model_spec(columns, params):
    return {"estimator": "ridge", "params": {"alpha": getattr(builtins, "CLEANROOM_ALPHA", 1.0)},
            "target": "spend", "features": ["visits"], "task": "regression"}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shared_keys: Path) -> Iterator[SimpleNamespace]:
    with stack_for_module(tmp_path_factory, shared_keys, "structure") as stack:
        w = SimpleNamespace(stack=stack, canary="cnry" + secrets.token_hex(6))
        w.owner = stack.owner("oscar-shop")
        w.hidden = stack.dataset(w.owner, "oscar.hidden", w.canary, extra_privacy=EXACT, extra=NEVER_OUTPUT)
        w.plain = stack.dataset(w.owner, "oscar.plain", w.canary, seed=2, extra_privacy=EXACT)
        both = [(w.owner, w.hidden), (w.owner, w.plain)]
        w.launder = stack.plugin(LAUNDER, approvers=both)
        w.aggregate = stack.plugin(AGGREGATE_CODE, kind="analysis", params=AGGREGATE_PARAMS, approvers=both)
        w.pass_on = stack.plugin(
            PASS_ON, params='[params.hostile]\ntype = "boolean"\ndefault = false\n', approvers=both
        )
        w.hyper = stack.plugin(MODEL_FROM_DATA, kind="model", approvers=both)
        w.whole = stack.plugin(WHOLE_ROWS, approvers=both)
        yield w


def _released_table(w: SimpleNamespace, job: dict[str, Any], tmp_path: Path, name: str) -> pd.DataFrame:
    w.owner.approve_release(job["id"])  # exact mode: the owner reviews every release first
    out = tmp_path / job["id"]
    w.stack.analyst.get_result(job["id"], out)
    return pd.read_csv(out / "aggregates" / f"{name}.csv")


@pytest.mark.docker
@pytest.mark.slow
def test_a_never_output_column_never_reaches_a_plugin(world: SimpleNamespace, tmp_path: Path) -> None:
    w = world
    steps = [(w.launder, {}), (w.aggregate, {"name": "by_region", "group_by": ["region"]})]
    job = w.stack.run(w.stack.job_spec(w.hidden, steps, aggregates=True))
    assert job["status"] == "succeeded", job
    log = w.owner.job_logs(job["id"])
    assert "SAW" in log and "'visits'" not in log  # neither the mock run nor the real run had it
    means = _released_table(w, job, tmp_path, "by_region")["mean_spend"].dropna()
    assert len(means) and (means < 5000).all()  # real spend, not visits * 1000 + 7
    receipt = json.loads((tmp_path / job["id"] / "receipt.json").read_text())
    assert receipt["body"]["dropped_columns"] == {w.hidden: ["visits"]}
    # control: the same plugin over a dataset whose policy allows visits launders it as designed
    control = w.stack.run(w.stack.job_spec(w.plain, steps, aggregates=True))
    assert control["status"] == "succeeded", control
    assert "'visits'" in w.owner.job_logs(control["id"])
    laundered = _released_table(w, control, tmp_path, "by_region")["mean_spend"].dropna()
    assert len(laundered) and (laundered > 5000).all()


@pytest.mark.docker
@pytest.mark.slow
def test_a_hyper_parameter_computed_from_the_data_fails_the_job(world: SimpleNamespace) -> None:
    """The model_spec hook runs after the plugin saw the data: here alpha is the mean spend. The real run's
    spec differs from the mock run's, so nothing is released, and the reason names no value."""
    w = world
    hostile = w.stack.run(w.stack.job_spec(w.plain, [(w.pass_on, {"hostile": True}), (w.hyper, {})], model=True))
    assert hostile["status"] == "failed" and hostile["error_class"] == "release_check_failed", hostile
    assert "structure" in hostile["reason"] and w.canary not in json.dumps(hostile)
    assert hostile.get("release_id") is None
    control = w.stack.run(w.stack.job_spec(w.plain, [(w.pass_on, {"hostile": False}), (w.hyper, {})], model=True))
    assert control["status"] == "succeeded", control


def test_the_policy_declares_the_precision() -> None:
    meta, files = run(frame(), specs=[BY_REGION], policy={**POLICY, "precision": 2})
    cells = files["artifacts/aggregates/by_region.csv"].decode().splitlines()[1:]
    numbers = [c for line in cells for c in line.split(",")[1:] if c]
    assert meta["ok"] and numbers and all(_significant(c) <= 2 for c in numbers), numbers
    meta, _ = run(frame(), specs=[BY_REGION], policy={**POLICY, "precision": 0})
    failed(meta, "structure")


@pytest.mark.docker
@pytest.mark.slow
def test_a_group_key_made_of_whole_rows_through_the_whole_stack(world: SimpleNamespace, tmp_path: Path) -> None:
    """The runner's mock run declares the group keys; the real run's keys (secret code and spend of each row)
    are all counted in `other`, and the table lists the same groups as any other job's."""
    w = world
    by_region = (w.aggregate, {"name": "by_region", "group_by": ["region"]})
    job = w.stack.run(w.stack.job_spec(w.plain, [(w.whole, {}), by_region], aggregates=True))
    assert job["status"] == "succeeded", job
    rows = _released_table(w, job, tmp_path, "by_region")
    out = tmp_path / job["id"]
    assert not any(w.canary.encode() in p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert list(rows["region"])[-1] == "other" and rows["count"].notna().sum() == 1
    assert rows.set_index("region").loc["other", "count"] >= 5
    # control: the same table without the hostile step names the regions, with the same declared groups
    control = w.stack.run(w.stack.job_spec(w.plain, [by_region], aggregates=True))
    assert control["status"] == "succeeded", control
    regions = _released_table(w, control, tmp_path, "by_region")
    assert list(regions["region"]) == list(rows["region"]) and regions["count"].notna().sum() >= 2


@pytest.mark.docker
@pytest.mark.slow
def test_plugin_test_shows_the_inputs_a_job_gives(world: SimpleNamespace, tmp_path: Path) -> None:
    """`cleanroom plugin test` feeds the mock inputs of a job's mock run: never_output columns left out."""
    from cleanroom.local.plugin_test import test_plugin

    w = world
    folder = write_plugin(tmp_path, "launder-local", LAUNDER)
    hidden = test_plugin(w.stack.analyst, folder, [w.hidden], {}, image=w.stack.image)
    assert hidden["ok"] is True and "visits" not in hidden["columns"], hidden
    assert hidden["head"] and all(row["spend"] < 5000 for row in hidden["head"])
    control = test_plugin(w.stack.analyst, folder, [w.plain], {}, image=w.stack.image)
    assert control["ok"] is True and "visits" in control["columns"], control
