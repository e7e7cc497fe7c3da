"""The release's structure, fixed before the data is touched (trusted code, release phase).

Plugin code sees the data, so anything it chooses (a column name, a hyper-parameter, a group key)
can carry a value. Before the real run, the runner runs the same approved pipeline on the inputs'
public mock data (`cleanroom.runner.mockrun`) and sends what that run produced along with the real
run's output: the mock frame (`frames/mock.arrow`) and the mock run's model and analysis specs
(`request["mock"]`). Here, before any release check reads a value:

- the real run's model spec and analysis specs must equal the mock run's exactly (so estimator,
  hyper-parameters, features, target, group-by and metrics come from the signed job spec, the
  approved code and public mock data, never from the real data);
- the real frame must hold exactly the mock frame's columns with the same Arrow types; the real
  frame is then put in the mock frame's column order (an order chosen by the data says nothing);
- every group-by column gets a declared domain: the values it takes in the mock frame, the
  categories the owners published for a schema column of that name, and `other`. The release
  reports every declared group (small ones suppressed), and a real value outside the domain is
  counted in `other` (missing group-by values are dropped, as before).

A mismatch fails the release with the check `structure`; the message names the part that differs
(a column name, a type, which spec), never a data value. A plugin that behaves differently on the
mock and the real data can therefore make a job fail, which is one bit per job, and nothing more.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

MOCK_FRAME = "frames/mock.arrow"
OTHER = "other"
MAX_DECLARED_GROUPS = 1000
DEFAULT_PRECISION = 3


class StructureError(Exception):
    """The real run's structure differs from the mock run's; the message holds no data value."""


@dataclass
class Expected:
    """What the mock run fixed: the frame's column order and the group-by domains."""

    order: list[str]
    domains: dict[str, list[str]] = field(default_factory=dict)


def frame_fields(data: bytes | memoryview, label: str) -> list[tuple[str, str]]:
    """(name, Arrow type) of every column of an Arrow IPC stream, read without decoding the data."""
    try:
        with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
            schema = reader.schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise StructureError(f"the {label} is not a valid Arrow stream") from exc
    return [(f.name, str(f.type)) for f in schema]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=False, default=str)


def _unwrap(spec: Any) -> Any:
    if isinstance(spec, dict) and set(spec) == {"plugin_id", "spec"}:
        return spec["spec"]
    return spec


def compare_specs(request: dict[str, Any], mock: dict[str, Any]) -> None:
    """The real run's specs must be the mock run's, byte for byte (as canonical JSON)."""
    real_model, mock_model = _unwrap(request.get("model_spec")), _unwrap(mock.get("model_spec"))
    if _canonical(real_model) != _canonical(mock_model):
        raise StructureError(
            "the model spec differs from the one the same pipeline gave on the mock data "
            "(estimator, hyper-parameters, features and target must not depend on the data)"
        )
    real = [_unwrap(s) for s in request.get("analysis_specs") or []]
    fixed = [_unwrap(s) for s in mock.get("analysis_specs") or []]
    if len(real) != len(fixed):
        raise StructureError("the number of analysis specs differs from the mock run's")
    for n, (a, b) in enumerate(zip(real, fixed, strict=True), 1):
        if _canonical(a) != _canonical(b):
            raise StructureError(
                f"analysis spec #{n} differs from the one the same pipeline gave on the mock "
                "data (group-by and metrics must not depend on the data)"
            )


def compare_frames(real: bytes | memoryview, mock: bytes | memoryview) -> list[str]:
    """The real frame must have the mock frame's columns and types; returns the mock's column order."""
    real_fields, mock_fields = frame_fields(real, "frame"), frame_fields(mock, "mock frame")
    real_types, mock_types = dict(real_fields), dict(mock_fields)
    if len(real_types) != len(real_fields) or len(mock_types) != len(mock_fields):
        raise StructureError("a frame repeats a column name")
    extra = sorted(set(real_types) - set(mock_types))
    if extra:
        raise StructureError(
            f"the frame has {len(extra)} column(s) the mock run did not produce (not named "
            "here: such names were chosen on the data); columns must not depend on the data"
        )
    missing = sorted(set(mock_types) - set(real_types))
    if missing:
        raise StructureError(f"the frame lacks the mock run's column {missing[0]!r}")
    for name, kind in mock_fields:
        if real_types[name] != kind:
            raise StructureError(
                f"column {name!r} is {real_types[name]} in the real run but {kind} in the "
                "mock run (a column with gaps in one of them? impute it)"
            )
    return [name for name, _ in mock_fields]


def key_text(series: pd.Series) -> pd.Series:
    """Group keys as text, the same for the mock and the real frame (missing stays missing)."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    texts = np.array([_text(v) for v in uniques] + [None], dtype=object)
    return pd.Series(texts[codes], index=series.index, dtype=object)


def _text(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        return str(int(number)) if number.is_integer() and abs(number) < 2**53 else repr(number)
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


def domains(mock_frame: pd.DataFrame, specs: list[Any], published: dict[str, set[str]]) -> dict[str, list[str]]:
    """The declared domain of every group-by column of `specs` (parsed aggregate specs)."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        for column in spec.group_by:
            if column in out:
                continue
            values = set(key_text(mock_frame[column]).dropna()) if column in mock_frame.columns else set()
            values |= published.get(column, set())
            out[column] = sorted(values - {OTHER}) + [OTHER]  # `other` last
        size = math.prod(len(out[c]) for c in spec.group_by)
        if size > MAX_DECLARED_GROUPS:
            raise StructureError(
                f"{spec.name}: the mock run declares {size} groups (the product of the "
                f"group-by columns' domains), over the limit of {MAX_DECLARED_GROUPS}; "
                "group by coarser columns (bin them with edges in the job spec)"
            )
    return out


def published_categories(names: Any) -> dict[str, set[str]]:
    """Column -> the categories the owners published for it (from the request's `names`)."""
    out: dict[str, set[str]] = {}
    schemas = names.get("schemas", {}) if isinstance(names, dict) else {}
    for dataset, schema in schemas.items():
        if not isinstance(schema, dict):
            continue
        for column, cats in schema.items():
            if isinstance(cats, list):
                for name in (column, f"{column}@{dataset}"):
                    out.setdefault(name, set()).update(str(c) for c in cats)
    return out


def precision(policy: Any) -> int:
    """Significant digits of released exact numbers: the policy's `precision`, default 3."""
    value = policy.get("precision", DEFAULT_PRECISION) if isinstance(policy, dict) else DEFAULT_PRECISION
    if value is None:
        return DEFAULT_PRECISION
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 15:
        raise StructureError("policy precision must be an integer in [1, 15]")
    return value


def round_sig(values: Any, digits: int) -> Any:
    """`values` (a float or an array) rounded to `digits` significant digits; zeros, NaN, inf kept."""
    array = np.asarray(values, dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.where(np.isfinite(array) & (array != 0), np.floor(np.log10(np.abs(array))), 0)
        scale = 10.0 ** (digits - 1 - magnitude)
        rounded = np.where(np.isfinite(array) & (array != 0), np.round(array * scale) / scale, array)
    if np.ndim(values) == 0:
        return float(rounded)
    return rounded


def check(request: dict[str, Any], files: dict[str, bytes], frame_name: str) -> tuple[list[str], bytes] | None:
    """Compare the real run with the mock run; (the mock's column order, the mock frame's bytes).

    None when the request carries no mock run (direct callers such as unit tests; the runner
    always sends one).
    """
    mock = request.get("mock")
    if mock is None:
        return None
    if not isinstance(mock, dict) or MOCK_FRAME not in files:
        raise StructureError("the request's mock run is malformed (mock specs and frames/mock.arrow)")
    compare_specs(request, mock)
    order = compare_frames(files[frame_name], files[MOCK_FRAME])
    return order, files.pop(MOCK_FRAME)


class Fixed:
    """What the release checks use from the mock run: the real frame in the mock's column order, the
    group-by domains and the precision of exact numbers. Without a mock run (direct callers), group-by
    values are released as they are (groups below k vanish) and only the rounding applies."""

    def __init__(
        self, frame: pd.DataFrame, mock_frame: pd.DataFrame | None, published: dict[str, set[str]], digits: int
    ) -> None:
        self.frame, self.mock_frame, self.published, self.digits = frame, mock_frame, published, digits
        self._domains: dict[str, list[str]] | None = None

    def domains(self, specs: list[Any]) -> dict[str, list[str]] | None:
        if self.mock_frame is None:
            return None
        self._domains = {**(self._domains or {}), **domains(self.mock_frame, specs, self.published)}
        return self._domains

    def source(self, frame: pd.DataFrame, spec: Any) -> pd.DataFrame:
        """The rows an aggregate is computed from: group keys mapped onto their declared domains."""
        from cleanroom.sandbox.release import aggregates

        found = self.domains([spec])
        return frame if found is None else aggregates.declared(frame, spec, found)

    def finish(self, table: pd.DataFrame, spec: Any) -> pd.DataFrame:
        """Every declared group reported, metrics rounded."""
        from cleanroom.sandbox.release import aggregates

        if self._domains is not None:
            table = aggregates.complete(table, spec, self._domains)
        return aggregates.rounded(table, spec, self.digits)


def fix(
    request: dict[str, Any], files: dict[str, bytes], frame_name: str, frame: pd.DataFrame, checks: list[dict[str, Any]]
) -> Fixed:
    """Check the real run against the mock run (`check`) and return what the release uses from it."""
    from cleanroom.sandbox import wire

    digits = precision(request.get("policy"))
    found = check(request, files, frame_name)
    if found is None:
        return Fixed(frame, None, {}, digits)
    order, mock_bytes = found
    mock_frame = wire.frame_from_bytes(mock_bytes)
    checks.append({"name": "structure", "passed": True, "detail": "specs, frame columns and types are the mock run's"})
    if list(frame.columns) != order:  # a copy of the whole frame: only when the order differs
        frame = frame[order]
    return Fixed(frame, mock_frame, published_categories(request.get("names")), digits)
