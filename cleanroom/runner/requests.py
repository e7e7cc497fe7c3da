"""The two requests the runner sends the sandbox (docs/design.md, "Sandbox phases"), built in one place.

The real run, the mock run, a sample-and-aggregate block, `cleanroom plugin test` and `cleanroom job
test` all send the compute phase the same message with different inputs; the real run and `job test`
send the release phase the same message with different frames.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from cleanroom.sandbox import wire

JOINED_FRAME = "frames/joined.arrow"
MOCK_FRAME = "frames/mock.arrow"  # what the mock run gave, next to the real frame


def compute_message(
    job_id: str,
    steps: list[dict[str, Any]],
    inputs: Sequence[tuple[str, bytes]],
    bundles: Mapping[str, bytes],
    max_output_bytes: int,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """`job.json` and its files: `inputs/<i>.arrow` (one per (dataset name, Arrow stream), in order) and the
    plugins' bundles."""
    files = {f"inputs/{i}.arrow": data for i, (_, data) in enumerate(inputs)}
    files.update({f"plugins/{pid}.tar": data for pid, data in bundles.items()})
    meta = {
        "job_id": job_id,
        "steps": steps,
        "max_output_bytes": max_output_bytes,
        "inputs": [{"dataset": name, "file": f"inputs/{i}.arrow"} for i, (name, _) in enumerate(inputs)],
    }
    return meta, files


def compute_request(
    job_id: str,
    steps: list[dict[str, Any]],
    inputs: Sequence[tuple[str, bytes]],
    bundles: Mapping[str, bytes],
    max_output_bytes: int,
) -> io.BytesIO:
    """The compute phase's request (`compute_message`, written as one wire message)."""
    request = io.BytesIO()
    wire.write_message(request, "job.json", *compute_message(job_id, steps, inputs, bundles, max_output_bytes))
    return request


def release_request(
    job_id: str,
    *,
    policy: dict[str, Any],
    outputs: dict[str, Any],
    result: dict[str, Any],
    names: dict[str, Any],
    table_names: list[str],
    mock: dict[str, Any],
    frame: bytes,
    mock_frame: bytes,
) -> io.BytesIO:
    """`job.json` for the release phase: the effective policy, the job's outputs, the compute phase's specs
    (`result`), the names a release may use, the mock run's structure, and both frames."""
    model_specs = [m["spec"] for m in result.get("model_specs", [])]
    request = io.BytesIO()
    wire.write_message(
        request,
        "job.json",
        {
            "job_id": job_id,
            "policy": policy,
            "outputs": outputs,
            "model_spec": model_specs[0] if outputs.get("model") else None,
            "analysis_specs": [a["spec"] for a in result.get("analysis_specs", [])]
            if outputs.get("aggregates")
            else [],
            "dp": policy.get("dp") or {"epsilon": None, "delta": None},  # the job's charge (cleanroom.ledger)
            "names": names,
            "table_names": table_names,
            "mock": mock,
        },
        {JOINED_FRAME: frame, MOCK_FRAME: mock_frame},
    )
    return request
