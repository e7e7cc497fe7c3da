"""Year, month, weekday and other numeric parts of a date column."""

from __future__ import annotations

from typing import Any

import pandas as pd

from cleanroom.hookspecs import hookimpl

PARTS = {
    "year": lambda dates: dates.dt.year,
    "month": lambda dates: dates.dt.month,
    "day": lambda dates: dates.dt.day,
    "weekday": lambda dates: dates.dt.day_of_week,
    "quarter": lambda dates: dates.dt.quarter,
    "dayofyear": lambda dates: dates.dt.dayofyear,
}


def numeric(values: pd.Series) -> pd.Series:
    """Integers when nothing is missing, floats (with NaN) otherwise."""
    return values.astype("int64") if values.notna().all() else values.astype("float64")


@hookimpl
def features(df: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    column = params["column"]
    if column not in df.columns or column.startswith("_"):
        raise ValueError(f"no date column {column!r}")
    dates = pd.to_datetime(df[column], errors="coerce", format=params["format"])
    out = df.copy()
    for part in params["parts"]:
        name = f"{column}_{part}"
        if name in out.columns:
            raise ValueError(f"column {name!r} exists already")
        if part == "days_since":
            if not params["reference_date"]:
                raise ValueError("days_since needs reference_date")
            reference = pd.Timestamp(params["reference_date"])
            out[name] = numeric((reference - dates).dt.days)
        else:
            out[name] = numeric(PARTS[part](dates))
    if params["drop"]:
        out = out.drop(columns=[column])
    return out
