"""The mock run: a job's approved pipeline over its inputs' public mock data, before the real run.

What the pipeline produces on mock data (the joined frame's columns and types, the model and
analysis specs, the values of group-by columns) depends only on the signed job spec, the approved
code and data every member of the room can read. The release phase compares the real run with it
(`cleanroom.sandbox.release.structure`), so the structure of a release is fixed before the data is touched.

Mock inputs are built as the real inputs reach the compute phase: the schema's Arrow types, the
columns the policies mark `never_output` left out, and `_pid` as int64 codes. The codes are the
row numbers (0..n-1 in every input), so the inner join of several mock inputs keeps their rows
(the mock `_pid`s of different datasets are unrelated random strings, which would join to
nothing). A column whose summary says it has gaps gets at least one missing value, as the real
column has: pandas reads an integer column with gaps as float, and the types must match.
`cleanroom plugin test` uses the same inputs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from cleanroom.errors import MockRunFailed
from cleanroom.published import Column, Schema
from cleanroom.runner.recode import CODE_TYPE, write_table
from cleanroom.runner.requests import JOINED_FRAME, MOCK_FRAME, compute_request
from cleanroom.sandbox.vocabulary import PID

__all__ = ["MOCK_FRAME", "MockRunFailed", "dropped_columns", "mock_table", "outcome", "request", "specs"]


def _values(column: Column, raw: list[Any]) -> pa.Array:
    kind = column.arrow_type()
    if column.type in ("date", "datetime"):
        stamps = pd.to_datetime(
            pd.Series(raw, dtype=object), utc=column.timezone is not None, errors="coerce", format="ISO8601"
        )
        if column.type == "date":
            return pa.array([None if pd.isna(v) else v.date() for v in stamps], type=kind)
        return pa.array(stamps, type=kind, from_pandas=True)
    try:
        return pa.array(raw, from_pandas=True).cast(kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pa.array([None] * len(raw), type=kind)  # a mock that does not fit its schema: gaps only


def mock_table(dataset: Mapping[str, Any], drop: Collection[str] = ()) -> pa.Table:
    """A dataset's mock rows as the compute phase receives its real rows (see the module docstring)."""
    schema = Schema.from_dict(dataset["schema"])
    records = [r for r in dataset.get("mock") or [] if isinstance(r, dict)]
    n = len(records)
    fields = [pa.field(PID, CODE_TYPE, nullable=False)]
    arrays: list[pa.Array] = [pa.array(np.arange(n, dtype=np.int64), type=CODE_TYPE)]
    for column in schema.columns:
        if column.name == PID or column.name in drop:
            continue
        raw = [r.get(column.name) for r in records]
        gaps = float((column.stats or {}).get("null_fraction") or 0.0)
        if column.nullable and gaps > 0 and n and all(v is not None for v in raw):
            raw[0] = None
        arrays.append(_values(column, raw))
        fields.append(pa.field(column.name, column.arrow_type()))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def dropped_columns(datasets: Sequence[Mapping[str, Any]], never_output: Collection[str]) -> dict[str, list[str]]:
    """Per input, the schema columns the runner leaves out before the compute phase."""
    out = {}
    for ds in datasets:
        names = [str(c.get("name")) for c in (ds.get("schema") or {}).get("columns", []) if isinstance(c, dict)]
        out[ds["name"]] = sorted(set(names) & set(never_output))
    return out


def request(
    job_id: str,
    datasets: Sequence[Mapping[str, Any]],
    steps: list[dict[str, Any]],
    bundles: Mapping[str, bytes],
    max_output_bytes: int,
    drop: Collection[str] = (),
) -> bytes:
    """The compute phase's request for the mock run (the real run's, with mock inputs)."""
    inputs = [(str(ds["name"]), write_table(mock_table(ds, drop))) for ds in datasets]
    return compute_request(job_id, steps, inputs, bundles, max_output_bytes).getvalue()


def outcome(result: dict[str, Any], files: dict[str, bytes], outputs: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """What the release phase gets from the mock run: {model_spec, analysis_specs} and the mock frame."""
    if not result.get("ok"):
        raise MockRunFailed(f"the pipeline failed on the inputs' mock data: {str(result.get('error'))[:1000]}")
    frame = files.get(JOINED_FRAME)
    if frame is None:
        raise MockRunFailed("the mock run returned no frame")
    return specs(result, outputs), frame


def specs(result: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    """The model and analysis specs the release phase reads, from a compute phase's result."""
    model_specs = [m["spec"] for m in result.get("model_specs", [])]
    return {
        "model_spec": model_specs[0] if outputs.get("model") and len(model_specs) == 1 else None,
        "analysis_specs": [a["spec"] for a in result.get("analysis_specs", [])] if outputs.get("aggregates") else [],
    }
