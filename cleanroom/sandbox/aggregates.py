"""Group-by aggregates released by the trusted release phase.

An aggregate spec (from an analysis plugin, so untrusted) names the groups and the metrics:
`{"name": "spend_by_region", "group_by": ["region"], "metrics": [{"agg": "count"},
{"agg": "mean", "column": "spend"}]}`. Allowed aggs: count, sum, mean, std (std without DP only).
min, max and median are refused: each is one row's value.

Rules, all enforced here:
- rows with a missing value in any group-by or metric column of the spec are dropped first, so
  every cell of a group is computed over the same rows;
- a group is released only when it holds at least `k` distinct `_pid` (privacy units), not rows;
  smaller groups vanish without a trace: no row, no marker, no total that includes them;
- `_pid`, reserved `_` columns, and columns the policy marks never_output or join_only can be
  neither group-by nor metric columns;
- without DP, one job may not hold two specs where one's group-by is a strict subset of the
  other's (the coarse table minus the fine one would give back the suppressed groups);
- with DP (see `dp.py` for the semantics), each unit keeps one random row, groups are selected by
  a noisy count that must reach k, and sums and means need policy bounds for their column.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cleanroom.sandbox import dp

NAME_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
AGGS = ("count", "sum", "mean", "std")
DP_AGGS = ("count", "sum", "mean")
MAX_GROUP_BY = 8
MAX_METRICS = 32
PID = "_pid"


class AggregateError(Exception):
    """An aggregate spec breaks a rule; the message names columns and rules, never data values."""


@dataclass(frozen=True)
class Metric:
    agg: str
    column: str | None

    @property
    def label(self) -> str:
        return "count" if self.column is None else f"{self.agg}_{self.column}"


@dataclass(frozen=True)
class AggregateSpec:
    name: str
    group_by: tuple[str, ...]
    metrics: tuple[Metric, ...]

    @property
    def columns(self) -> list[str]:
        seen = list(self.group_by)
        for metric in self.metrics:
            if metric.column is not None and metric.column not in seen:
                seen.append(metric.column)
        return seen

    @property
    def summed_columns(self) -> list[str]:
        return sorted({m.column for m in self.metrics if m.column is not None})


def parse_spec(spec: Any, frame: pd.DataFrame, forbidden: set[str]) -> AggregateSpec:
    """Validate an untrusted aggregate spec against the frame and the policy's forbidden columns."""
    if isinstance(spec, dict) and set(spec) == {"plugin_id", "spec"}:
        spec = spec["spec"]
    if not isinstance(spec, dict):
        raise AggregateError("an aggregate spec must be an object")
    unknown = set(spec) - {"name", "group_by", "metrics"}
    if unknown:
        raise AggregateError(f"unknown aggregate spec keys: {sorted(unknown)}")
    name = spec.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise AggregateError("aggregate name must match ^[a-z0-9_-]{1,64}$")
    group_by = spec.get("group_by", [])
    if not isinstance(group_by, list) or len(group_by) > MAX_GROUP_BY or len(set(map(str, group_by))) != len(
            group_by):
        raise AggregateError(f"{name}: group_by must be a list of at most {MAX_GROUP_BY} distinct columns")
    for column in group_by:
        _check_column(name, column, frame, forbidden, "group-by")
    raw_metrics = spec.get("metrics")
    if not isinstance(raw_metrics, list) or not 1 <= len(raw_metrics) <= MAX_METRICS:
        raise AggregateError(f"{name}: metrics must be a list of 1 to {MAX_METRICS} entries")
    metrics: list[Metric] = []
    for raw in raw_metrics:
        if not isinstance(raw, dict) or set(raw) - {"agg", "column"}:
            raise AggregateError(f"{name}: a metric is an object with keys agg and column")
        agg, column = raw.get("agg"), raw.get("column")
        if agg not in AGGS:
            raise AggregateError(f"{name}: agg must be one of {', '.join(AGGS)} (min, max and median "
                                 "reveal single rows)")
        if agg == "count":
            if column is not None:
                raise AggregateError(f"{name}: count takes no column")
        else:
            _check_column(name, column, frame, forbidden, "metric")
            if column in group_by:
                raise AggregateError(f"{name}: column {column!r} is both grouped and aggregated")
            types = pd.api.types
            if not (types.is_numeric_dtype(frame[column]) or types.is_bool_dtype(frame[column])):
                raise AggregateError(f"{name}: metric column {column!r} is not numeric")
        metrics.append(Metric(agg, column))
    labels = [m.label for m in metrics]
    if len(set(labels)) != len(labels) or set(labels) & set(group_by):
        raise AggregateError(f"{name}: duplicate metric or output column name")
    return AggregateSpec(name, tuple(group_by), tuple(metrics))


def _check_column(name: str, column: Any, frame: pd.DataFrame, forbidden: set[str], role: str) -> None:
    if not isinstance(column, str) or not column:
        raise AggregateError(f"{name}: a {role} column must be a column name")
    if column.startswith("_"):
        raise AggregateError(f"{name}: reserved column {column!r} cannot be a {role} column")
    if column in forbidden:
        raise AggregateError(f"{name}: the policy forbids releasing column {column!r}")
    if column not in frame.columns:
        raise AggregateError(f"{name}: no column {column!r} in the frame")


def check_nesting(specs: list[AggregateSpec]) -> None:
    """Without DP, refuse a spec whose groups are a strict coarsening of another spec's groups."""
    for a in specs:
        for b in specs:
            if set(a.group_by) < set(b.group_by):
                raise AggregateError(f"{a.name} groups by a strict subset of {b.name}'s group-by; the "
                                     "difference could reveal suppressed groups (use DP or one spec)")


def dp_query_count(spec: AggregateSpec) -> int:
    """How many DP queries a spec makes: one noisy count per spec plus one noisy sum per column."""
    return 1 + len(spec.summed_columns)


def _usable_rows(frame: pd.DataFrame, spec: AggregateSpec) -> pd.DataFrame:
    df = frame[[PID, *spec.columns]].dropna()
    for column in spec.summed_columns:
        df[column] = df[column].astype("float64")
    if not np.isfinite(df[spec.summed_columns].to_numpy(dtype="float64")).all():
        df = df[np.isfinite(df[spec.summed_columns].to_numpy(dtype="float64")).all(axis=1)]
    return df


def _grouped(df: pd.DataFrame, spec: AggregateSpec) -> Any:
    if spec.group_by:
        return df.groupby(list(spec.group_by), observed=True, sort=True, dropna=True)
    return df.groupby(np.zeros(len(df), dtype="int8"), sort=True)


def compute(frame: pd.DataFrame, spec: AggregateSpec, k: int) -> pd.DataFrame:
    """The released table without DP: groups with at least k distinct units, exact metrics."""
    df = _usable_rows(frame, spec)
    grouped = _grouped(df, spec)
    table = pd.DataFrame({"_units": grouped[PID].nunique()})
    for metric in spec.metrics:
        if metric.column is None:
            table[metric.label] = grouped.size()
        else:
            table[metric.label] = grouped[metric.column].agg(metric.agg)
    table = table[table["_units"] >= k].drop(columns="_units")
    if spec.group_by:
        return table.reset_index()
    return table.reset_index(drop=True)


def compute_dp(frame: pd.DataFrame, spec: AggregateSpec, k: int, bounds: dict[str, tuple[float, float]],
               epsilon_per_query: float, delta: float, budget: dp.Budget) -> pd.DataFrame:
    """The released table with DP: one row per unit, noisy threshold on counts, noisy sums."""
    for metric in spec.metrics:
        if metric.agg not in DP_AGGS:
            raise AggregateError(f"{spec.name}: {metric.agg} is not available with DP")
        if metric.column is not None and metric.column not in bounds:
            raise AggregateError(f"{spec.name}: DP {metric.agg} of {metric.column!r} needs policy bounds "
                                 "for that column")
    df = _usable_rows(frame, spec)
    # contribution bounding: each unit keeps one row chosen at random (independently of other units)
    order = np.random.default_rng().permutation(len(df))
    df = df.iloc[order].drop_duplicates(PID, keep="first")
    for column in spec.summed_columns:
        df[column] = df[column].clip(*bounds[column])
    grouped = _grouped(df, spec)
    sizes = grouped.size()
    keys: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for idx, size in sizes.items():
        key = dp.key_of(_as_tuple(idx))
        keys[key], counts[key] = idx, int(size)
    released = dp.noisy_counts(counts, epsilon_per_query, delta, k, budget)
    order_keys = sorted(released)
    rows: dict[str, dict[str, Any]] = {key: {} for key in order_keys}
    noisy_sum: dict[str, list[float]] = {}
    for column in spec.summed_columns:
        lo, hi = bounds[column]
        sums = grouped[column].sum()
        exact = [float(sums.loc[keys[key]]) for key in order_keys]
        noisy_sum[column] = dp.noisy_sums(exact, max(abs(lo), abs(hi)), epsilon_per_query, budget)
    for i, key in enumerate(order_keys):
        for metric in spec.metrics:
            if metric.column is None:
                rows[key][metric.label] = released[key]
            elif metric.agg == "sum":
                rows[key][metric.label] = noisy_sum[metric.column][i]
            else:
                lo, hi = bounds[metric.column]
                mean = noisy_sum[metric.column][i] / max(released[key], 1)
                rows[key][metric.label] = min(max(mean, lo), hi)
    out = pd.DataFrame([rows[key] for key in order_keys], columns=[m.label for m in spec.metrics])
    if spec.group_by:
        groups = pd.DataFrame([_as_tuple(keys[key]) for key in order_keys], columns=list(spec.group_by))
        out = pd.concat([groups, out], axis=1)
    return out


def _as_tuple(idx: Any) -> tuple[Any, ...]:
    return idx if isinstance(idx, tuple) else (idx,)


def to_csv(table: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    table.to_csv(buffer, index=False, lineterminator="\n", float_format="%.10g")
    return buffer.getvalue().encode()
