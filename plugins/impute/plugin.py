"""Fill missing values per column (median, mean, most frequent, constant)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from cleanroom.hookspecs import hookimpl

STRATEGIES = ("median", "mean", "most_frequent", "constant")


def is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def fill_for(series: pd.Series, strategy: str, params: dict[str, Any]) -> Any:
    numeric = is_numeric(series)
    if strategy in ("mean", "median") and not numeric:
        raise ValueError(f"column {series.name!r} is not numeric: use most_frequent or constant")
    if strategy == "mean":
        value = series.mean()
    elif strategy == "median":
        value = series.median()
    elif strategy == "most_frequent":
        modes = series.mode(dropna=True)
        value = modes.iloc[0] if len(modes) else None
    else:
        value = None
    if value is None or pd.isna(value):  # constant, or a column with no value at all
        value = params["fill_value"] if numeric else params["fill_text"]
    return value


@hookimpl
def preprocess(df: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    per_column = params["per_column"]
    for column, strategy in per_column.items():
        if strategy not in STRATEGIES:
            raise ValueError(f"per_column: {column!r} has strategy {strategy!r}; use one of {STRATEGIES}")
    columns = params["columns"] or [c for c in df.columns if not str(c).startswith("_") and df[c].isna().any()]
    unknown = [c for c in [*columns, *per_column] if c not in df.columns]
    if unknown:
        raise ValueError(f"no column {unknown[0]!r} to impute")
    out = df.copy()
    for column in columns:
        if str(column).startswith("_"):
            raise ValueError(f"reserved column {column!r} cannot be imputed")
        series = out[column]
        default = params["strategy"] if is_numeric(series) else params["text_strategy"]
        strategy = per_column.get(column, default)
        missing = series.isna()
        if params["add_indicator"]:
            out[f"{column}_missing"] = missing.astype("int8")
        if missing.any():
            out[column] = series.fillna(fill_for(series, strategy, params))
    return out
