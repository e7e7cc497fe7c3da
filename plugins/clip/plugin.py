"""Clip (winsorise) numeric columns to quantiles of their own values."""

from __future__ import annotations

from typing import Any

import pandas as pd

from cleanroom.hookspecs import hookimpl
from cleanroom.plugin_helpers import numeric_columns


@hookimpl
def features(df: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    lower, upper = float(params["lower"]), float(params["upper"])
    if not (0 <= lower < 0.5 < upper <= 1):
        raise ValueError("clip needs 0 <= lower < 0.5 < upper <= 1")
    columns = numeric_columns(df, params, "clip")
    out = df.copy()
    for column in columns:
        low, high = out[column].quantile([lower, upper])
        if pd.notna(low) and pd.notna(high):
            out[column] = out[column].clip(low, high)
    return out
