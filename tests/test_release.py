"""The release phase end to end: the wire round trip, all-or-nothing, policy and DP gates."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cleanroom import modelio
from cleanroom.sandbox import wire
from cleanroom.sandbox.release import phase as release

POLICY: dict[str, Any] = {
    "k": 10,
    "outputs": ["aggregate", "model"],
    "estimators": ["ridge", "linear_regression"],
    "allow_row_storing": False,
    "max_model_bytes": 5_000_000,
    "never_output": ["email"],
    "join_only": [],
    "bounds": {"spend": [0, 400]},
    "require_dp": False,
    "recipients": ["acme"],
    "review": True,
}
MODEL_SPEC = {"estimator": "ridge", "params": {"alpha": 1.0}, "target": "spend", "features": None, "task": "regression"}
SPEND_BY_REGION = {
    "name": "spend_by_region",
    "group_by": ["region"],
    "metrics": [{"agg": "count"}, {"agg": "mean", "column": "spend"}, {"agg": "sum", "column": "spend"}],
}


def joined(units: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Synthetic linear data: spend = 2 age + 0.5 income + noise; one unit has a lonely region."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, units)
    income = rng.normal(50, 10, units)
    region = rng.choice(["north", "south", "east"], units)
    region[0] = "lonely"
    return pd.DataFrame(
        {
            "_pid": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(units)],
            "age": age,
            "income": income,
            "region": region,
            "email": "a@example.org",
            "spend": 2 * age + 0.5 * income + rng.normal(0, 5, units),
        }
    )


def request(**overrides: Any) -> dict[str, Any]:
    outputs = {"model": True, "metrics": True, "aggregates": True, "holdout_fraction": 0.2, "seed": 0}
    base = {
        "job_id": "job-42",
        "policy": POLICY,
        "outputs": outputs,
        "model_spec": {"plugin_id": "ab" * 32, "spec": MODEL_SPEC},
        "analysis_specs": [{"plugin_id": "cd" * 32, "spec": SPEND_BY_REGION}],
        "dp": {"epsilon": None, "delta": None},
        "names": {"schemas": {"acme.joined": {c: [] for c in joined(10).columns}}, "job_strings": []},
        "table_names": ["spend_by_region"],
    }
    base.update(overrides)
    return base


def run(req: dict[str, Any], df: pd.DataFrame | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    return release.run(req, {release.FRAME: wire.frame_to_bytes(joined() if df is None else df)})


def run_subprocess(stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-I", "-m", "cleanroom.sandbox.release"],
        input=stdin,
        capture_output=True,
        timeout=300,
        check=False,
    )


def test_subprocess_round_trip(tmp_path: Path) -> None:
    stdin = io.BytesIO()
    wire.write_message(stdin, "job.json", request(), {release.FRAME: wire.frame_to_bytes(joined())})
    proc = run_subprocess(stdin.getvalue())
    assert proc.returncode == 0, proc.stderr.decode()
    meta, files = wire.read_message(io.BytesIO(proc.stdout), "result.json", 10**9)
    assert meta["ok"] is True and meta["error"] is None, meta
    assert set(meta["artifacts"]) == {"model.skops", "metrics.json", "model_card.md", "aggregates/spend_by_region.csv"}
    for name, info in meta["artifacts"].items():
        data = files[f"artifacts/{name}"]
        assert info == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert all(check["passed"] for check in meta["checks"])
    metrics = json.loads(files["artifacts/metrics.json"])
    assert metrics["metrics"]["r2"] > 0.5
    table = pd.read_csv(io.BytesIO(files["artifacts/aggregates/spend_by_region.csv"]))
    assert sorted(table["region"]) == ["east", "north", "south"]  # the lonely unit is gone
    assert meta["epsilon_spent"] == 0.0
    path = tmp_path / "model.skops"
    path.write_bytes(files["artifacts/model.skops"])
    assert list(modelio.load_model(path).feature_names_in_) == ["age", "income"]
    assert b"example.org" not in proc.stdout and b"example.org" not in proc.stderr


@pytest.mark.slow  # one subprocess per malformed request
def test_garbage_input_still_gets_a_response() -> None:
    proc = run_subprocess(b"this is not a tar stream" * 100)
    assert proc.returncode == 0, proc.stderr.decode()
    meta, files = wire.read_message(io.BytesIO(proc.stdout), "result.json", 10**6)
    assert meta["ok"] is False and files == {}


def test_release_imports_no_server_or_plugin_code() -> None:
    code = (
        "import sys, cleanroom.sandbox.release; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('fastapi', 'httpx', 'docker', 'starlette', "
        "'uvicorn', 'cryptography', 'pyrage') or m in ('cleanroom.errors', 'cleanroom.hookspecs') "
        "or m.startswith(('cleanroom.api', 'cleanroom.runner', 'plugins'))]; print(bad)"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, timeout=120, check=True)
    assert proc.stdout.strip() == b"[]"


DP_BOUNDS = {"spend": [0, 400], "age": [18, 90], "income": [0, 100]}


def test_dp_release_spends_the_job_epsilon() -> None:
    meta, files = run(
        request(dp={"epsilon": 1.0, "delta": 1e-6}, policy={**POLICY, "require_dp": True, "bounds": DP_BOUNDS})
    )
    assert meta["ok"], meta
    # aggregates spend their half exactly (Laplace); the model's Gaussian at most its half (zCDP converts tighter)
    assert 0.5 < meta["epsilon_spent"] <= 1.0 + 1e-9
    assert 0 < meta["delta_spent"] <= 1e-6
    assert {c["name"] for c in meta["checks"]} >= {"model:dp", "metrics:dp", "model:bounds"}
    table = pd.read_csv(io.BytesIO(files["artifacts/aggregates/spend_by_region.csv"]))
    assert "lonely" not in set(table["region"])


def test_any_failed_check_releases_nothing() -> None:
    bad_aggregate = {**SPEND_BY_REGION, "group_by": ["email"]}
    meta, files = run(request(analysis_specs=[bad_aggregate]))
    assert meta["ok"] is False and files == {} and meta["artifacts"] == {}
    assert meta["checks"][-1] == {
        "name": "aggregate:spec",
        "passed": False,
        "detail": "spend_by_region: the policy forbids releasing column 'email'",
    }
    meta, files = run(request(model_spec={**MODEL_SPEC, "estimator": "lasso"}))
    assert meta["ok"] is False and files == {}
    assert "not allowed by the policy" in meta["error"]


def test_outputs_must_be_allowed_by_the_policy() -> None:
    meta, _ = run(request(policy={**POLICY, "outputs": ["aggregate"]}))
    assert not meta["ok"] and meta["checks"][-1]["name"] == "outputs"
    meta, files = run(
        request(policy={**POLICY, "outputs": ["aggregate"]}, outputs={"aggregates": True}, model_spec=None)
    )
    assert meta["ok"] and set(files) == {"artifacts/aggregates/spend_by_region.csv"}


def test_metrics_only_release_has_no_model() -> None:
    meta, files = run(request(outputs={"metrics": True}))
    assert meta["ok"] and set(meta["artifacts"]) == {"metrics.json"}


def test_model_without_metrics_leaves_them_out() -> None:
    meta, files = run(request(outputs={"model": True}))
    assert meta["ok"] and set(meta["artifacts"]) == {"model.skops", "model_card.md"}
    assert b"r2" not in files["artifacts/model_card.md"]


def test_require_dp_needs_an_epsilon() -> None:
    meta, _ = run(request(policy={**POLICY, "require_dp": True}))
    assert not meta["ok"] and meta["checks"][-1]["name"] == "dp"
    meta, _ = run(
        request(policy={**POLICY, "require_dp": True, "bounds": DP_BOUNDS}, dp={"epsilon": 2.0, "delta": None})
    )
    assert meta["ok"] and 1.0 < meta["epsilon_spent"] <= 2.0 + 1e-9
    meta, _ = run(
        request(
            policy={**POLICY, "require_dp": True},
            dp={"epsilon": 2.0, "delta": None},
            outputs={"model": True, "metrics": False, "aggregates": False},
        )
    )
    assert not meta["ok"] and "declared bounds for every feature: none for 'age', 'income'" in meta["error"]


@pytest.mark.parametrize(
    "policy",
    [
        {k: v for k, v in POLICY.items() if k != "k"},
        {**POLICY, "k": 1},
        {**POLICY, "k": True},
        {**POLICY, "outputs": ["everything"]},
        {**POLICY, "bounds": {"spend": [5, 1]}},
        {**POLICY, "max_model_bytes": -1},
        {**POLICY, "require_dp": "no"},
        "not a dict",
    ],
)
def test_malformed_policies_fail_closed(policy: Any) -> None:
    meta, files = run(request(policy=policy))
    assert not meta["ok"] and files == {} and meta["checks"][-1]["name"] == "policy"


@pytest.mark.parametrize(
    "overrides",
    [
        {"job_id": "../x"},
        {"outputs": {"model": "yes"}},
        {"outputs": {"model": True, "holdout_fraction": 0.9}},
        {"dp": {"epsilon": -1}},
        {"dp": {"epsilon": 1.0, "delta": 2}},
        {"analysis_specs": []},
    ],
)
def test_malformed_requests_fail_closed(overrides: dict[str, Any]) -> None:
    meta, files = run(request(**overrides))
    assert not meta["ok"] and files == {}


def test_frame_without_pid_is_refused() -> None:
    meta, _ = run(request(), df=joined().drop(columns="_pid"))
    assert not meta["ok"] and "_pid" in meta["error"]


def test_columns_derived_from_never_output_columns_do_not_leave() -> None:
    """A one-hot of a never_output column gets a new name; the release still knows where it came from."""
    df = joined()
    df["email_missing"] = 0.0
    df.loc[df.index[:500], "email_missing"] = 1.0
    spec = {**MODEL_SPEC, "features": ["age", "income", "email_missing"]}
    meta, files = run(
        request(
            model_spec=spec,
            analysis_specs=[],
            table_names=[],
            outputs={"model": True, "metrics": False, "aggregates": False},
        ),
        df,
    )
    assert meta["ok"] is False and files == {}
    assert any(c["name"] == "names" and not c["passed"] for c in meta["checks"])
    by_email = {"name": "t", "group_by": ["email_missing"], "metrics": [{"agg": "count"}]}
    meta, files = run(
        request(
            model_spec=None,
            analysis_specs=[by_email],
            table_names=["t"],
            outputs={"model": False, "metrics": False, "aggregates": True},
        ),
        df,
    )
    assert meta["ok"] is False and files == {}
    meta, _ = run(
        request(
            model_spec={**MODEL_SPEC, "features": ["age", "income"]},
            analysis_specs=[],
            table_names=[],
            outputs={"model": True, "metrics": False, "aggregates": False},
        ),
        df,
    )
    assert meta["ok"] is True  # control
