"""Small helpers for plugin authors, importable inside the sandbox (`from cleanroom.plugin_helpers import ...`).

Trusted library code like pandas: it ships in the sandbox image, not in a plugin's bundle.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["is_binary", "is_numeric", "numeric_columns"]


def is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def is_binary(series: pd.Series) -> bool:
    return bool(series.dropna().isin([0, 1]).all())


def numeric_columns(df: pd.DataFrame, params: dict[str, Any], verb: str) -> list[str]:
    """The columns a numeric transform works on: `params["columns"]` (checked: present, not reserved,
    numeric) minus `params["exclude"]`, or else every numeric, non-0/1, non-reserved column."""
    exclude = set(params.get("exclude", []))
    if params.get("columns"):
        columns = [c for c in params["columns"] if c not in exclude]
        for column in columns:
            if column not in df.columns or str(column).startswith("_"):
                raise ValueError(f"no column {column!r} to {verb}")
            if not is_numeric(df[column]):
                raise ValueError(f"column {column!r} is not numeric")
        return columns
    return [
        c
        for c in df.columns
        if not str(c).startswith("_") and c not in exclude and is_numeric(df[c]) and not is_binary(df[c])
    ]
