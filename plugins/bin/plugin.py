"""Generalise numeric columns into ranges and merge rare categories."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cleanroom.hookspecs import hookimpl


def computed_edges(values: pd.Series, bins: int, strategy: str) -> list[float]:
    values = values.dropna().astype("float64")
    if values.empty:
        return []
    if strategy == "quantile":
        inner = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    else:
        inner = np.linspace(values.min(), values.max(), bins + 1)[1:-1]
    return sorted({float(np.round(edge, 6)) for edge in inner})


def labels(edges: list[float]) -> list[str]:
    inner = [f"[{lo:g}, {hi:g})" for lo, hi in zip(edges, edges[1:], strict=False)]
    return [f"< {edges[0]:g}", *inner, f">= {edges[-1]:g}"]


def to_ranges(series: pd.Series, edges: list[float]) -> pd.Series:
    if not edges:
        return series.astype("object").where(series.isna(), None)
    bounds = [-np.inf, *edges, np.inf]
    cut = pd.cut(series.astype("float64"), bounds, right=False, labels=labels(edges))
    return cut.astype("object").where(cut.notna(), None)


def merge_rare(series: pd.Series, pids: pd.Series, min_count: int, other: str) -> pd.Series:
    units = pd.DataFrame({"value": series, "pid": pids}).dropna().groupby("value")["pid"].nunique()
    rare = set(units[units < min_count].index)
    return series.where(~series.isin(rare), other)


@hookimpl
def preprocess(df: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    edges = [float(e) for e in params["edges"]]
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError("edges must be strictly increasing")
    out = df.copy()
    for column in params["columns"]:
        if column not in df.columns or str(column).startswith("_"):
            raise ValueError(f"no column {column!r} to bin")
        series = df[column]
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        if numeric:
            cuts = edges or computed_edges(series, params["bins"], params["strategy"])
            result = to_ranges(series, cuts)
        else:
            result = series
        if params["min_count"]:
            result = merge_rare(result, df["_pid"], params["min_count"], params["other_label"])
        out[f"{column}{params['suffix']}"] = result
    return out
