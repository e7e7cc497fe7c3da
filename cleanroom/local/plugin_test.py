"""`cleanroom plugin test`: run a plugin on datasets' mock data in the sandbox image, with job limits."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import pandas as pd

from cleanroom.crypto import digest
from cleanroom.runner.mockrun import mock_table
from cleanroom.runner.phases import Phase, PhaseRunner, run_phase
from cleanroom.runner.recode import write_table
from cleanroom.runner.requests import JOINED_FRAME, compute_request
from cleanroom.sandbox import wire
from cleanroom.sandbox.vocabulary import TRANSFORM_KINDS
from cleanroom.settings import Settings


def mock_frame(dataset: dict[str, Any]) -> pd.DataFrame:
    """A dataset's mock rows as a job's compute phase would get them (`cleanroom.runner.mockrun`)."""
    return mock_table(dataset, never_output(dataset)).to_pandas()


def never_output(dataset: dict[str, Any]) -> list[str]:
    """The columns the dataset's policy marks never_output: a job's plugins never see them."""
    policy = dataset.get("policy") if isinstance(dataset.get("policy"), dict) else {}
    columns = (policy or {}).get("columns") or {}
    return sorted(
        name for name, rule in columns.items() if isinstance(rule, dict) and rule.get("rule") == "never_output"
    )


def test_plugin(
    client: Any,
    folder: Path,
    datasets: list[str],
    params: dict[str, Any],
    *,
    image: str,
    settings: Settings | None = None,
    phases: PhaseRunner | None = None,
) -> dict[str, Any]:
    """The plugin's compute phase on the datasets' mock data; `phases` defaults to Docker with `image`."""
    from cleanroom import bundle

    archive = bundle.pack(folder)
    manifest = bundle.unpack(archive).manifest
    params = bundle.validate_params(manifest, params)
    plugin_id = digest(archive)
    records = [client.get_dataset(name) for name in datasets]
    hidden = sorted({c for ds in records for c in never_output(ds)})  # as a job: every input's, from each input
    inputs = [(name, write_table(mock_table(ds, hidden))) for name, ds in zip(datasets, records, strict=True)]
    step = {
        "plugin_id": plugin_id,
        "name": manifest["name"],
        "kind": manifest["kind"],
        "entry": manifest["entry"],
        "params": params,
        "dataset": datasets[0] if len(datasets) == 1 and manifest["kind"] in TRANSFORM_KINDS else None,
    }
    settings = dataclasses.replace(settings or Settings.from_env(), sandbox_image=image)
    request = compute_request("plugin-test", [step], inputs, {plugin_id: archive}, settings.job_max_output_bytes)
    res = run_phase(phases or _docker(settings), Phase.MOCK, "plugin-test", request.getbuffer())
    out: dict[str, Any] = {
        "plugin_id": plugin_id,
        "exit_code": res.exit_code,
        "seconds": res.seconds,
        "oom_killed": res.oom_killed,
        "timed_out": res.timed_out,
        "log": res.logs[-4000:],
    }
    if res.exit_code == 0:
        result, frames = wire.read_message(io.BytesIO(res.stdout), "result.json", settings.job_max_output_bytes)
        out.update({k: result.get(k) for k in ("ok", "error", "rows", "columns", "model_specs", "analysis_specs")})
        if "statistic" in result:  # a sample-and-aggregate statistic's answer on the mock data
            out["statistic"] = result["statistic"]
        if JOINED_FRAME in frames:
            out["head"] = wire.frame_from_bytes(frames[JOINED_FRAME]).head(5).to_dict(orient="records")
    return out


def _docker(settings: Settings) -> PhaseRunner:
    from cleanroom.runner.launcher import Sandbox

    return Sandbox(settings)
