"""Standardise (or min-max scale) numeric columns."""

from __future__ import annotations

from typing import Any

import pandas as pd

from cleanroom.hookspecs import hookimpl
from cleanroom.plugin_helpers import numeric_columns


@hookimpl
def features(df: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    columns = numeric_columns(df, params, "scale")
    out = df.copy()
    for column in columns:
        values = out[column].astype("float64")
        if params["method"] == "standard":
            centre, spread = values.mean(), values.std(ddof=0)
        else:
            centre, spread = values.min(), values.max() - values.min()
        out[column] = (values - centre) / spread if spread and pd.notna(spread) else values * 0.0
    return out
