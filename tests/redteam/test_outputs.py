"""Poisoned outputs (checklist A.10, E): pickles in frames and artifacts, hostile specs for the release phase.

The release phase is trusted code, but everything it reads comes from the compute phase: the frame
(Arrow), the model spec and the aggregate specs. These attacks hand it hostile versions directly
(`cleanroom.sandbox.release.phase.run`, the function its container runs) or go through the real sandbox.
"""

from __future__ import annotations

import io
import os
import pickle
import secrets
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cleanroom.sandbox import wire
from cleanroom.sandbox.release import phase as release
from tests.redteam.conftest import preprocess, run_compute

MARKER_DIR = Path(os.environ.get("TMPDIR", "/tmp"))


class Boom:
    """Unpickling this creates a marker file: proof that attacker code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _marker() -> str:
    return str(MARKER_DIR / f"cleanroom-redteam-pwned-{secrets.token_hex(6)}")


# --------------------------------------------------------------------------------------------- frames


@pytest.mark.docker
def test_a_frame_holding_python_objects_never_leaves_the_compute_phase(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "out-pickle-frame",
        """
        class Boom:
            def __reduce__(self):
                return (os.system, ("touch /tmp/pwned",))
        df["payload"] = [Boom() for _ in range(len(df))]
    """,
    )
    out = run_compute(sandbox, plugin)
    assert out.result is not None and out.result["ok"] is False
    assert "cannot be encoded as Arrow" in out.result["error"] and out.frame is None
    control = preprocess(tmp_path, "out-plain-frame", 'df["payload"] = 1.5\n')
    second = run_compute(sandbox, control)
    assert second.result and second.result["ok"] and second.frame is not None
    assert (second.frame["payload"] == 1.5).all()


def test_an_arrow_stream_with_a_pickled_extension_type_runs_no_code() -> None:
    marker = _marker()
    evil = pa.field(
        "x",
        pa.int64(),
        metadata={
            b"ARROW:extension:name": b"arrow.py_extension_type",
            b"ARROW:extension:metadata": pickle.dumps(Boom(marker)),
        },
    )
    table = pa.table({"_pid": pa.array(["a", "b"]), "x": pa.array([1, 2])}).cast(
        pa.schema([pa.field("_pid", pa.string()), evil])
    )
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    try:
        frame = wire.frame_from_bytes(sink.getvalue())
        assert list(frame["x"]) == [1, 2]  # read as plain integers
    except wire.WireError:
        pass  # refusing it is fine too
    assert not os.path.exists(marker)
    pickled = pd.DataFrame({"_pid": ["a"], "obj": [pickle.dumps(Boom(marker))]})
    with pytest.raises((wire.WireError, Exception)):
        wire.frame_from_bytes(wire.frame_to_bytes(pickled))  # binary columns are refused
    assert not os.path.exists(marker)
    assert len(wire.frame_from_bytes(wire.frame_to_bytes(pd.DataFrame({"_pid": ["a"], "v": [1.0]})))) == 1


# --------------------------------------------------------------------------------------------- artifacts


def test_a_pickled_model_artifact_is_refused_without_running_it(tmp_path: Path) -> None:
    from cleanroom.modelio import ModelFileError, load_model

    marker = _marker()
    for name, data in {
        "model.pkl": pickle.dumps(Boom(marker)),
        "model.skops": pickle.dumps(Boom(marker)),  # a pickle under the skops name
        "joblib.skops": b"\x80\x04" + pickle.dumps(Boom(marker))[2:],
    }.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelFileError):
            load_model(tmp_path / name)
    assert not os.path.exists(marker)


def test_a_skops_artifact_with_untrusted_types_is_refused(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from cleanroom.modelio import ModelFileError, load_model

    evil = make_pipeline(FunctionTransformer(os.system), Ridge())
    (tmp_path / "evil.skops").write_bytes(sio.dumps(evil))
    with pytest.raises(ModelFileError, match="untrusted"):
        load_model(tmp_path / "evil.skops")
    good = Ridge().fit(np.arange(20).reshape(10, 2), np.arange(10))
    (tmp_path / "good.skops").write_bytes(sio.dumps(good))
    assert load_model(tmp_path / "good.skops").coef_.shape == (2,)  # control


def test_a_zip_bomb_artifact_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cleanroom import modelio

    monkeypatch.setattr(modelio, "MAX_UNCOMPRESSED_BYTES", 8 * 2**20)  # the same check, a smaller bomb
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("schema.json", b"{}")
        z.writestr("bomb.npy", b"\0" * (32 * 2**20))
    assert len(buf.getvalue()) < 100 * 2**10
    (tmp_path / "bomb.skops").write_bytes(buf.getvalue())
    with pytest.raises(modelio.ModelFileError, match="size limit"):
        modelio.load_model(tmp_path / "bomb.skops")


# --------------------------------------------------------------------------------------------- release phase

POLICY = {
    "k": 5,
    "outputs": ["aggregate", "model"],
    "allow_row_storing": False,
    "max_model_bytes": 5_000_000,
    "estimators": [
        "ridge",
        "linear_regression",
        "decision_tree_regressor",
        "k_neighbors_regressor",
        "random_forest_regressor",
    ],
    "never_output": ["income"],
    "join_only": [],
    "bounds": {"spend": [0, 5000]},
    "require_dp": False,
}


def _frame(n: int = 80, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "_pid": [secrets.token_hex(32) for _ in range(n)],
            "region": rng.choice(["north", "south", "east", "west"], n),
            "age": rng.integers(18, 90, n),
            "visits": rng.poisson(10, n).astype(float),
            "income": rng.lognormal(10, 0.4, n).round(2),
            "spend": rng.gamma(3, 100, n).round(2),
            "code": [f"person-{secrets.token_hex(4)}" for _ in range(n)],
        }
    )


def _release(
    frame: pd.DataFrame,
    *,
    model: dict[str, Any] | None = None,
    specs: list[dict[str, Any]] | None = None,
    epsilon: float | None = None,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    request = {
        "job_id": "job_rt",
        "policy": POLICY,
        "outputs": {"model": model is not None, "metrics": False, "aggregates": bool(specs)},
        "model_spec": model,
        "analysis_specs": specs or [],
        "dp": {"epsilon": epsilon},
        "names": {"schemas": {"owner.data": {c: [] for c in _frame(2).columns}}, "job_strings": []},
        "table_names": [s["name"] for s in specs or []],
    }
    return release.run(request, {"frames/joined.arrow": wire.frame_to_bytes(frame)})


RIDGE = {
    "estimator": "ridge",
    "params": {"alpha": 1.0},
    "target": "spend",
    "features": ["age", "visits"],
    "task": "regression",
}
HOSTILE_MODELS = {
    "row-storing knn": {**RIDGE, "estimator": "k_neighbors_regressor", "params": {"n_neighbors": 1}},
    "single-row tree leaves": {**RIDGE, "estimator": "decision_tree_regressor", "params": {"min_samples_leaf": 1}},
    "all cores": {**RIDGE, "estimator": "random_forest_regressor", "params": {"n_jobs": -1}},
    "object in params": {**RIDGE, "params": {"alpha": {"__class__": "os.system"}}},
    "not allow-listed class": {**RIDGE, "estimator": "sklearn.pipeline.Pipeline"},
    "pid as target": {**RIDGE, "target": "_pid"},
    "never_output feature": {**RIDGE, "features": ["age", "income"]},
    "never_output target": {**RIDGE, "target": "income"},
    "extra spec key": {**RIDGE, "callback": "os.system"},
}


@pytest.mark.parametrize("attack", sorted(HOSTILE_MODELS))
def test_hostile_model_specs_release_nothing(attack: str) -> None:
    frame = _frame()
    meta, files = _release(frame, model=HOSTILE_MODELS[attack])
    assert meta["ok"] is False and files == {} and meta["artifacts"] == {}, (attack, meta["error"])


def test_a_plain_model_spec_is_released() -> None:
    meta, files = _release(_frame(), model=RIDGE)
    assert meta["ok"] is True and "artifacts/model.skops" in files  # the control for the specs above


AGG = {"name": "by_region", "group_by": ["region"], "metrics": [{"agg": "count"}, {"agg": "mean", "column": "spend"}]}
HOSTILE_AGGREGATES = {
    "max reveals a row": [{**AGG, "metrics": [{"agg": "max", "column": "spend"}]}],
    "median reveals a row": [{**AGG, "metrics": [{"agg": "median", "column": "spend"}]}],
    "group by pid": [{**AGG, "group_by": ["_pid"]}],
    "never_output metric": [{**AGG, "metrics": [{"agg": "sum", "column": "income"}]}],
    "extra key": [{**AGG, "filter": "code == 'person-1'"}],
    "path in the name": [{**AGG, "name": "../../etc/cron.d/x"}],
    "coarse minus fine (differencing in one job)": [
        AGG,
        {**AGG, "name": "by_region_code", "group_by": ["region", "code"]},
    ],
    "overall minus groups": [{**AGG, "name": "overall", "group_by": []}, AGG],
}


@pytest.mark.parametrize("attack", sorted(HOSTILE_AGGREGATES))
def test_hostile_aggregate_specs_release_nothing(attack: str) -> None:
    meta, files = _release(_frame(), specs=HOSTILE_AGGREGATES[attack])
    assert meta["ok"] is False and files == {}, (attack, meta)


def test_small_groups_vanish_without_a_trace() -> None:
    frame = _frame()
    meta, files = _release(frame, specs=[{**AGG, "name": "by_code", "group_by": ["code"]}])
    assert meta["ok"] is True
    assert files["artifacts/aggregates/by_code.csv"].decode().strip() == "code,count,mean_spend"
    meta, files = _release(frame, specs=[AGG])  # control
    table = pd.read_csv(io.BytesIO(files["artifacts/aggregates/by_region.csv"]))
    assert len(table) == 4 and (table["count"] >= 5).all()


def test_duplicated_rows_of_one_unit_do_not_reach_k() -> None:
    """k counts distinct privacy units: one person's row repeated k times stays suppressed."""
    frame = _frame()
    one = frame.iloc[[0] * 10].copy()
    one["code"] = "the-one"
    meta, files = _release(pd.concat([frame, one]), specs=[{**AGG, "name": "by_code", "group_by": ["code"]}])
    assert meta["ok"] is True
    assert b"the-one" not in files["artifacts/aggregates/by_code.csv"]


def test_known_limit_a_hostile_transform_can_copy_one_row_onto_k_units() -> None:
    """Documents a limit (docs/security.md): k and DP hold for the frame the compute phase hands over.

    A hostile but approved preprocess step can overwrite k-1 other people's rows with one person's
    values; the release phase sees k distinct units and releases that person's values. Only code
    review stops it. If this test starts failing, a defence landed: update docs/security.md. (Through the
    runner, the release also gets the mock run, which fixes group keys: a cloned key then falls into
    `other`, tests/redteam/test_structure_channels.py. A cloned value in a declared group still leaks, to
    the policy's 3 significant digits.)
    """
    frame = _frame()
    cloned = frame.copy()
    cloned.loc[1:4, ["code", "spend"]] = frame.loc[0, ["code", "spend"]].to_numpy()
    meta, files = _release(cloned, specs=[{**AGG, "name": "by_code", "group_by": ["code"]}])
    table = pd.read_csv(io.BytesIO(files["artifacts/aggregates/by_code.csv"]))
    assert meta["ok"] is True and list(table["code"]) == [frame.loc[0, "code"]]
    assert table["mean_spend"].iloc[0] == pytest.approx(frame.loc[0, "spend"], rel=5e-3)


def test_known_limit_differencing_across_jobs_without_dp() -> None:
    """Documents a limit: without DP, two exact jobs that differ by one unit give that unit's value away.

    The nesting check stops it inside one job; across jobs only a DP budget (the policy's epsilon,
    with require_dp) bounds it: tests/redteam/test_approvals.py shows that budget running out. Rounding
    to 3 significant digits blurs a sum, not a count: the difference still says that the unit is there.
    """
    frame = _frame()
    overall = {"name": "overall", "group_by": [], "metrics": [{"agg": "count"}, {"agg": "sum", "column": "spend"}]}
    everyone = pd.read_csv(io.BytesIO(_release(frame, specs=[overall])[1]["artifacts/aggregates/overall.csv"]))
    all_but_one = pd.read_csv(
        io.BytesIO(_release(frame.iloc[1:], specs=[overall])[1]["artifacts/aggregates/overall.csv"])
    )
    assert everyone["count"].iloc[0] - all_but_one["count"].iloc[0] == 1
    leaked = everyone["sum_spend"].iloc[0] - all_but_one["sum_spend"].iloc[0]
    step = 10 ** (np.floor(np.log10(frame["spend"].sum())) - 2)  # the rounding step of the sum
    assert abs(leaked - frame.loc[0, "spend"]) <= step
    noisy = [
        pd.read_csv(io.BytesIO(_release(f, specs=[overall], epsilon=0.5)[1]["artifacts/aggregates/overall.csv"]))
        for f in (frame, frame.iloc[1:])
    ]
    assert noisy[0]["sum_spend"].iloc[0] - noisy[1]["sum_spend"].iloc[0] != pytest.approx(leaked, abs=1e-6)
