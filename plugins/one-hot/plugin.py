"""One-hot encode categorical columns, with a cap on the number of categories."""

from __future__ import annotations

from typing import Any

import pandas as pd

from cleanroom.hookspecs import hookimpl


def categories(series: pd.Series, limit: int) -> tuple[list[str], bool]:
    """The `limit` most frequent categories (ties by name) and whether others exist."""
    counts = series.dropna().astype(str).value_counts()
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [value for value, _ in ordered[:limit]], len(ordered) > limit


@hookimpl
def features(df: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    numeric = pd.api.types.is_numeric_dtype
    columns = params["columns"] or [c for c in df.columns if not str(c).startswith("_") and not numeric(df[c])]
    sep, other = params["sep"], params["other_label"]
    out = df.copy()
    for column in columns:
        if column not in df.columns or str(column).startswith("_"):
            raise ValueError(f"no column {column!r} to encode")
        values = df[column].astype(str).where(df[column].notna())
        kept, has_other = categories(df[column], params["max_categories"])
        if has_other and other in kept:
            raise ValueError(f"column {column!r} has a category named like other_label {other!r}")
        new = {f"{column}{sep}{value}": (values == value) for value in kept}
        if has_other:
            new[f"{column}{sep}{other}"] = values.notna() & ~values.isin(kept)
        clash = [name for name in new if name in out.columns]
        if clash:
            raise ValueError(f"one-hot column {clash[0]!r} exists already")
        for name, flags in new.items():
            out[name] = flags.astype("int8")
        if not params["keep_original"]:
            out = out.drop(columns=[column])
    return out
