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
- group-by values are text; with a mock run (`cleanroom.sandbox.release.structure`) every declared group
  is reported (metrics empty where it holds fewer than k units) and a value outside its column's
  declared domain is counted in `other`; metrics are rounded to the policy's significant digits;
- without DP, one job may not hold two specs whose group-by lineages nest (the input columns their
  group-by columns derive from, whatever their names) unless they group by the same columns, nor
  two specs whose groups nest on the data (the coarse table minus the fine one would give back
  the suppressed groups);
- with DP (see `dp.py` for the semantics), each unit keeps one random row, groups are selected by
  a noisy count that must reach k, and sums and means need policy bounds for their column.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cleanroom.sandbox.release import dp
from cleanroom.sandbox.vocabulary import PID, TABLE_NAME

AGGS = ("count", "sum", "mean", "std")
DP_AGGS = ("count", "sum", "mean")
MAX_GROUP_BY = 8
MAX_METRICS = 32


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
    if not isinstance(name, str) or not TABLE_NAME.fullmatch(name):
        raise AggregateError("aggregate name must match ^[a-z0-9_-]{1,64}$")
    group_by = spec.get("group_by", [])
    if not isinstance(group_by, list) or len(group_by) > MAX_GROUP_BY or len(set(map(str, group_by))) != len(group_by):
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
            raise AggregateError(
                f"{name}: agg must be one of {', '.join(AGGS)} (min, max and median reveal single rows)"
            )
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


def check_nesting(specs: list[AggregateSpec], roots: Callable[[str], frozenset[str]] | None = None) -> None:
    """Without DP, refuse two specs that group the same rows by nested lineages.

    Lineage is what the rows are grouped by, not the columns' names: the input columns a group-by
    column is derived from (`roots`, from `cleanroom.sandbox.names`). Two specs are refused when one's
    roots are a subset of the other's (equal included) and they do not group by the very same
    columns: `age_band` and `age_band2` (two binnings of `age`) or `region` and `region_x` give a
    table and its complement-of-one, whatever their names. `check_refinement` is the same rule on
    the data itself, for a column whose name lies about its lineage.
    """
    roots = roots or (lambda column: frozenset({column}))
    lineage = [frozenset().union(*[roots(c) for c in s.group_by]) for s in specs]
    for i, a in enumerate(specs):
        for j, b in enumerate(specs):
            if i == j or set(a.group_by) == set(b.group_by):
                continue
            if lineage[i] <= lineage[j]:
                raise AggregateError(
                    f"{a.name} groups by columns derived from a subset of the columns that "
                    f"{b.name}'s group-by is derived from; the difference could reveal "
                    "suppressed groups (use DP, or one spec)"
                )


def check_refinement(
    frame: pd.DataFrame, specs: list[AggregateSpec], domains: dict[str, list[str]] | None = None
) -> None:
    """Without DP, refuse two specs whose groups, on the rows they share, nest strictly (one spec's groups
    are unions of the other's): differencing them gives back suppressed groups, whatever the columns
    are called. Defence in depth: `check_nesting` decides on lineage before any value is read."""
    for i, a in enumerate(specs):
        for b in specs[i + 1 :]:
            if set(a.group_by) == set(b.group_by):
                continue
            columns = sorted(set(a.group_by) | set(b.group_by))
            rows = frame[columns].dropna() if columns else frame[[PID]]
            if domains is not None:
                rows = declared(rows.assign(**{PID: 0}), AggregateSpec("x", tuple(columns), ()), domains)
            ga = _group_ids(rows, a.group_by)
            gb = _group_ids(rows, b.group_by)
            pairs = len(pd.unique(ga * (int(gb.max(initial=0)) + 1) + gb))
            na, nb = len(pd.unique(ga)), len(pd.unique(gb))
            if na != nb and pairs in (na, nb):
                coarse, fine = (a, b) if pairs == nb else (b, a)
                raise AggregateError(
                    f"{coarse.name}'s groups are unions of {fine.name}'s groups; the difference "
                    "could reveal suppressed groups (use DP, or one spec)"
                )


def _group_ids(rows: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    if not columns:
        return np.zeros(len(rows), dtype=np.int64)
    ids: np.ndarray = rows.groupby(list(columns), sort=False).ngroup().to_numpy(dtype=np.int64)
    return ids


def declared(frame: pd.DataFrame, spec: AggregateSpec, domains: dict[str, list[str]]) -> pd.DataFrame:
    """The spec's columns with every group-by value as text, a value outside its declared domain as
    `other` (`cleanroom.sandbox.release.structure`); missing values stay missing (and are dropped)."""
    from cleanroom.sandbox.release.structure import OTHER, key_text

    df = frame[[PID, *spec.columns]].copy()
    for column in spec.group_by:
        keys = key_text(df[column])
        known = keys.isna() | keys.isin(domains[column])
        df[column] = keys.where(known, OTHER)
    return df


def complete(table: pd.DataFrame, spec: AggregateSpec, domains: dict[str, list[str]]) -> pd.DataFrame:
    """Every declared group, in domain order; a group not released (too small) has empty metrics."""
    labels = [m.label for m in spec.metrics]
    if not spec.group_by:
        return table if len(table) else pd.DataFrame({label: [np.nan] for label in labels})
    index = pd.MultiIndex.from_product([domains[c] for c in spec.group_by], names=list(spec.group_by))
    full = table.set_index(list(spec.group_by))[labels]
    if len(spec.group_by) == 1:
        full.index = pd.MultiIndex.from_arrays([full.index], names=list(spec.group_by))
    return full.reindex(index).reset_index()


def rounded(table: pd.DataFrame, spec: AggregateSpec, digits: int) -> pd.DataFrame:
    """Metrics rounded to `digits` significant digits: low decimals of an exact statistic carry values."""
    from cleanroom.sandbox.release.structure import round_sig

    out = table.copy()
    for label in (m.label for m in spec.metrics):
        if label in out.columns:
            out[label] = round_sig(out[label].to_numpy(dtype="float64"), digits)
    return out


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


def compute_dp(
    frame: pd.DataFrame,
    spec: AggregateSpec,
    k: int,
    bounds: dict[str, tuple[float, float]],
    epsilon_per_query: float,
    delta: float,
    budget: dp.Budget,
) -> pd.DataFrame:
    """The released table with DP: one row per unit, noisy threshold on counts, noisy sums."""
    for metric in spec.metrics:
        if metric.agg not in DP_AGGS:
            raise AggregateError(f"{spec.name}: {metric.agg} is not available with DP")
        if metric.column is not None and metric.column not in bounds:
            raise AggregateError(
                f"{spec.name}: DP {metric.agg} of {metric.column!r} needs policy bounds for that column"
            )
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
