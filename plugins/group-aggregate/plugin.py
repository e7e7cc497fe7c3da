"""Group-by aggregate specs (count, sum, mean, std per group)."""

from __future__ import annotations

import re
from typing import Any

from cleanroom.hookspecs import hookimpl

NAME = re.compile(r"^[a-z0-9_-]{1,64}$")
AGGS = ("count", "sum", "mean", "std")


def check_column(columns: list[str], column: Any, role: str) -> None:
    if not isinstance(column, str) or column not in columns:
        raise ValueError(f"{role} column {column!r} is not in the frame")
    if column.startswith("_"):
        raise ValueError(f"reserved column {column!r} cannot be a {role} column")


@hookimpl
def analysis_spec(columns: list[str], params: dict[str, Any]) -> dict[str, Any]:
    if not NAME.match(params["name"]):
        raise ValueError("name must be 1-64 of a-z, 0-9, _ and -")
    group_by = list(params["group_by"])
    if len(group_by) > 8 or len(set(group_by)) != len(group_by):
        raise ValueError("group_by must list at most 8 distinct columns")
    for column in group_by:
        check_column(columns, column, "group-by")
    metrics = []
    for metric in params["metrics"]:
        if set(metric) - {"agg", "column"} or metric.get("agg") not in AGGS:
            raise ValueError(f"a metric is {{agg = one of {', '.join(AGGS)}, column = ...}}")
        if metric["agg"] == "count":
            if metric.get("column") is not None:
                raise ValueError("count takes no column")
            metrics.append({"agg": "count"})
        else:
            check_column(columns, metric.get("column"), "metric")
            if metric["column"] in group_by:
                raise ValueError(f"column {metric['column']!r} is both grouped and aggregated")
            metrics.append({"agg": metric["agg"], "column": metric["column"]})
    if not metrics:
        raise ValueError("metrics must not be empty")
    return {"name": params["name"], "group_by": group_by, "metrics": metrics}
