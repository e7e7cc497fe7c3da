"""What a dataset publishes about its columns, and synthetic ("mock") rows made from it alone.

Published (`published_schema`): only what the owner declares public: names, types, nullability, and
the policy's declared bounds (`[columns.X] bounds`) and category domains (`[columns.X] domain`), or
summaries written by hand in a schema override. Nothing is computed from the rows for publication:
an exact mean, range or category count of the data is one exact release per dataset, given to every
org with no budget, and one exact job plus a published mean gives away a person.

Mock rows let analysts write and test plugins without seeing data. They are drawn from the published
schema only (uniform in declared bounds, uniform over declared categories, random tokens otherwise).

`StatsCollector` still summarises the rows, on the owner's machine only: its summaries are
*suggestions* (`suggest_policy`) the owner may copy into the policy after checking them; they are
never sent to the room. A string value is suggested only when MIN_CATEGORY_COUNT rows share it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cleanroom.published import Column, Schema

if TYPE_CHECKING:
    pass

__all__ = ["MIN_CATEGORY_COUNT", "StatsCollector", "suggest_policy"]

MIN_CATEGORY_COUNT = 20
MAX_CATEGORIES = 50
_COUNTER_CAP = 50_000


class _Categories:
    """Counts of string values in bounded memory. Pruning only lowers counts, so a value published
    as frequent is at least that frequent.

    The counts live in arrays (values in the order first seen, as a dict would keep them) and are
    merged with each batch's `value_counts` by Arrow and numpy, so a column of mostly distinct
    values costs no Python work per value.
    """

    def __init__(self) -> None:
        self._values: pa.Array = pa.array([], pa.string())
        self._counts = np.zeros(0, dtype=np.int64)

    @property
    def counts(self) -> dict[str, int]:
        return dict(zip(self._values.to_pylist(), self._counts.tolist(), strict=True))

    def update(self, values: pa.Array | pa.ChunkedArray) -> None:
        found = pc.value_counts(values)  # distinct values in the order first seen
        found_values, found_counts = found.field("values").cast(pa.string()), found.field("counts").to_numpy()
        where = pc.index_in(found_values, value_set=self._values)
        known = where.is_valid().to_numpy(zero_copy_only=False)
        counts = self._counts.copy()
        counts[where.drop_null().to_numpy()] += found_counts[known]  # each known value once: no clashes
        fresh = pc.invert(where.is_valid())
        values = pa.concat_arrays([self._values, found_values.filter(fresh)])
        counts = np.concatenate([counts, found_counts[~known]])
        if len(counts) > _COUNTER_CAP:  # keep the most frequent half; ties: the first seen (stable sort)
            keep = np.argsort(-counts, kind="stable")[: _COUNTER_CAP // 2]
            values, counts = values.take(pa.array(keep)), counts[keep]
        self._values, self._counts = values, counts

    def frequent(self) -> dict[str, int]:
        table = pa.table({"values": self._values, "counts": self._counts})
        if table.num_rows > MAX_CATEGORIES:
            order = pc.sort_indices(table, sort_keys=[("counts", "descending"), ("values", "descending")])
            table = table.take(order[:MAX_CATEGORIES])
        top = zip(table["values"].to_pylist(), table["counts"].to_pylist(), strict=True)
        return {v: c for v, c in sorted(top, key=lambda p: (-p[1], p[0])) if c >= MIN_CATEGORY_COUNT}


class StatsCollector:
    """Summaries of typed record batches, merged batch by batch (memory stays flat)."""

    def __init__(self, columns: list[Column]) -> None:
        self.columns = {c.name: c for c in columns}
        self.rows = 0
        self._acc: dict[str, dict[str, Any]] = {c.name: {"nulls": 0, "n": 0} for c in columns}
        self._cats = {c.name: _Categories() for c in columns if c.type == "string"}

    def update(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        for name, col in self.columns.items():
            values = batch.column(name)
            acc = self._acc[name]
            acc["nulls"] += values.null_count
            values = values.drop_null()
            if col.type == "number":
                values = values.filter(pc.is_finite(values))
            if not len(values):
                continue
            if col.type == "string":
                self._cats[name].update(values)
                acc["n"] += len(values)
            elif col.type == "boolean":
                acc["true"] = acc.get("true", 0) + pc.sum(values).as_py()
                acc["n"] += len(values)
            else:
                self._update_range(acc, col.type, values)

    @staticmethod
    def _update_range(acc: dict[str, Any], kind: str, values: pa.Array) -> None:
        low, high = pc.min_max(values).values()
        acc["min"] = low if "min" not in acc or pc.less(low, acc["min"]).as_py() else acc["min"]
        acc["max"] = high if "max" not in acc or pc.greater(high, acc["max"]).as_py() else acc["max"]
        n = len(values)
        if kind in ("integer", "number"):  # Chan et al.: merge (n, mean, M2) of two parts
            mean = pc.mean(values).as_py()
            m2 = pc.variance(values, ddof=0).as_py() * n
            total = acc["n"] + n
            if acc["n"]:
                delta = mean - acc["mean"]
                acc["m2"] += m2 + delta * delta * acc["n"] * n / total
                acc["mean"] += delta * n / total
            else:
                acc["mean"], acc["m2"] = mean, m2
        acc["n"] += n

    def stats(self, name: str) -> dict[str, Any]:
        col, acc = self.columns[name], self._acc[name]
        out: dict[str, Any] = {"null_fraction": round(acc["nulls"] / self.rows, 6) if self.rows else 0.0}
        if not acc["n"]:
            return out
        if col.type in ("integer", "number"):
            mean, std = acc["mean"], math.sqrt(max(acc["m2"], 0.0) / acc["n"])
            low, high = _published_range(
                acc["min"].as_py(), acc["max"].as_py(), mean, std, integer=col.type == "integer"
            )
            out.update(min=low, max=high, mean=_num(mean), std=_num(std))
        elif col.type in ("date", "datetime"):
            low, high = acc["min"].as_py(), acc["max"].as_py()
            out.update(min=_month_start(low).isoformat(), max=_month_end(high).isoformat())
        elif col.type == "boolean":
            out["true_fraction"] = round(acc["true"] / acc["n"], 6)
        else:
            categories = self._cats[name].frequent()
            out["categories"] = categories
            out["other_fraction"] = round(1 - sum(categories.values()) / acc["n"], 6)
        return out

    def column(self, col: Column) -> Column:
        """`col` with summaries and, for an inferred column, nullability from the data."""
        nullable = bool(self._acc[col.name]["nulls"]) if col.stats is None else col.nullable
        stats = self.stats(col.name) if col.stats is None else col.stats
        return Column(col.name, col.type, nullable, col.timezone, stats)


def _num(x: float) -> float:
    return float(f"{x:.6g}")


def _published_range(low: float, high: float, mean: float, std: float, *, integer: bool) -> tuple[Any, Any]:
    """The range a summary publishes: never a real extreme. Tails beyond three standard deviations are
    cut off (an outlier is one person), then both ends are rounded outward to two significant digits."""
    if std > 0:
        low, high = max(low, mean - 3 * std), min(high, mean + 3 * std)
    low, high = _round_out(low, math.floor), _round_out(high, math.ceil)
    return (int(low), int(high)) if integer else (low, high)


def _round_out(x: float, direction: Any) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    step = 10.0 ** (math.floor(math.log10(abs(x))) - 1)
    return float(f"{direction(x / step) * step:.12g}")


def _month_start(value: Any) -> Any:
    return value.replace(
        day=1, **({"hour": 0, "minute": 0, "second": 0, "microsecond": 0} if isinstance(value, dt.datetime) else {})
    )


def _month_end(value: Any) -> Any:
    first_next = (value.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    last = first_next - dt.timedelta(days=1)
    if isinstance(value, dt.datetime):
        return last.replace(hour=23, minute=59, second=59, microsecond=0)
    return last


def suggest_policy(schema: Schema) -> str:
    """Policy lines an owner may check and add: bounds and domains seen in its own data (never sent).

    Ranges are already cut at three standard deviations and rounded outward (`_published_range`)."""
    lines = []
    for col in schema.columns:
        stats = col.stats or {}
        if col.name.startswith("_") or stats.get("declared"):
            continue
        if col.type in ("integer", "number") and "min" in stats and "max" in stats:
            lines += [f"[columns.{col.name}]", f"bounds = [{stats['min']}, {stats['max']}]"]
        elif col.type == "string" and stats.get("categories"):
            values = ", ".join(json.dumps(v) for v in sorted(stats["categories"]))
            lines += [f"[columns.{col.name}]", f"domain = [{values}]"]
    return "\n".join(lines) + ("\n" if lines else "")
