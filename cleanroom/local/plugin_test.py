"""`cleanroom plugin test`: run a plugin on datasets' mock data in the sandbox image, with job limits."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pandas as pd

from cleanroom.runner.launcher import Sandbox
from cleanroom.runner.mockrun import mock_table
from cleanroom.runner.recode import write_table
from cleanroom.sandbox import wire
from cleanroom.settings import Settings


def mock_frame(dataset: dict[str, Any]) -> pd.DataFrame:
    """A dataset's mock rows as a job's compute phase would get them (`cleanroom.runner.mockrun`)."""
    return mock_table(dataset, never_output(dataset)).to_pandas()


def never_output(dataset: dict[str, Any]) -> list[str]:
    """The columns the dataset's policy marks never_output: a job's plugins never see them."""
    policy = dataset.get("policy") if isinstance(dataset.get("policy"), dict) else {}
    columns = (policy or {}).get("columns") or {}
    return sorted(name for name, rule in columns.items()
                  if isinstance(rule, dict) and rule.get("rule") == "never_output")


def test_plugin(client: Any, folder: Path, datasets: list[str], params: dict[str, Any], *,
                image: str, settings: Settings | None = None) -> dict[str, Any]:
    from cleanroom import bundle

    archive = bundle.pack(folder)
    manifest = bundle.unpack(archive).manifest
    params = bundle.validate_params(manifest, params)
    plugin_id = hashlib.sha256(archive).hexdigest()
    files = {f"plugins/{plugin_id}.tar": archive}
    inputs = []
    records = [client.get_dataset(name) for name in datasets]
    hidden = sorted({c for ds in records for c in never_output(ds)})  # as a job: every input's, from each input
    for i, (name, ds) in enumerate(zip(datasets, records, strict=True)):
        files[f"inputs/{i}.arrow"] = write_table(mock_table(ds, hidden))
        inputs.append({"dataset": name, "file": f"inputs/{i}.arrow"})
    step = {"plugin_id": plugin_id, "name": manifest["name"], "kind": manifest["kind"], "entry": manifest["entry"],
            "params": params, "dataset": datasets[0] if len(datasets) == 1 and
            manifest["kind"] in ("preprocess", "features") else None}
    settings = settings or Settings.from_env(sandbox_image=image)
    request = io.BytesIO()
    wire.write_message(request, "job.json", {"job_id": "plugin-test", "inputs": inputs, "steps": [step],
                                             "max_output_bytes": settings.job_max_output_bytes}, files)
    res = Sandbox(settings).run_phase("compute", "plugin-test", request.getvalue(), image=image)
    out: dict[str, Any] = {"plugin_id": plugin_id, "exit_code": res.exit_code, "seconds": res.seconds,
                           "oom_killed": res.oom_killed, "timed_out": res.timed_out,
                           "log": res.stderr.decode("utf-8", "replace")[-4000:]}
    if res.exit_code == 0:
        result, frames = wire.read_message(io.BytesIO(res.stdout), "result.json", settings.job_max_output_bytes)
        out.update({k: result.get(k) for k in ("ok", "error", "rows", "columns", "model_specs", "analysis_specs")})
        if "statistic" in result:  # a sample-and-aggregate statistic's answer on the mock data
            out["statistic"] = result["statistic"]
        if "frames/joined.arrow" in frames:
            out["head"] = wire.frame_from_bytes(frames["frames/joined.arrow"]).head(5).to_dict(orient="records")
    return out
