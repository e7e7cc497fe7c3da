"""The q-quantile of each named column over one block of units (a sample-and-aggregate statistic)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from cleanroom.hookspecs import hookimpl


@hookimpl
def block_statistic(df: pd.DataFrame, params: dict[str, Any]) -> list[float]:
    q = float(params["q"])
    if not 0 <= q <= 1:
        raise ValueError("block-quantile needs 0 <= q <= 1")
    out = []
    for column in params["columns"]:
        if column not in df.columns or column == "_pid":
            raise ValueError(f"block-quantile: no column {column!r}")
        values = pd.to_numeric(df[column], errors="coerce").dropna()
        out.append(float(values.quantile(q)) if len(values) else float("nan"))  # NaN: the room's default
    return out
