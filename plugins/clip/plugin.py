"""Clip (winsorise) numeric columns to quantiles of their own values."""

from __future__ import annotations

from typing import Any

import pandas as pd

from cleanroom.hookspecs import hookimpl


def is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def is_binary(series: pd.Series) -> bool:
    return bool(series.dropna().isin([0, 1]).all())


@hookimpl
def features(df: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    lower, upper = float(params["lower"]), float(params["upper"])
    if not (0 <= lower < 0.5 < upper <= 1):
        raise ValueError("clip needs 0 <= lower < 0.5 < upper <= 1")
    exclude = set(params["exclude"])
    if params["columns"]:
        columns = [c for c in params["columns"] if c not in exclude]
        for column in columns:
            if column not in df.columns or str(column).startswith("_"):
                raise ValueError(f"no column {column!r} to clip")
            if not is_numeric(df[column]):
                raise ValueError(f"column {column!r} is not numeric")
    else:
        columns = [c for c in df.columns if not str(c).startswith("_") and c not in exclude
                   and is_numeric(df[c]) and not is_binary(df[c])]
    out = df.copy()
    for column in columns:
        low, high = out[column].quantile([lower, upper])
        if pd.notna(low) and pd.notna(high):
            out[column] = out[column].clip(low, high)
    return out
