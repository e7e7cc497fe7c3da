"""Drop direct identifiers by name and by identifier-looking column names."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from cleanroom.hookspecs import hookimpl


def normalise(column: str) -> str:
    """`E-Mail Address` -> `e_mail_address`."""
    return re.sub(r"[^a-z0-9]+", "_", column.lower()).strip("_")


def looks_like_identifier(column: str, names: set[str], words: set[str]) -> bool:
    norm = normalise(column)
    return norm in names or bool(set(norm.split("_")) & words)


@hookimpl
def preprocess(df: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    named = list(params["columns"])
    reserved = [c for c in named if c.startswith("_")]
    if reserved:
        raise ValueError(f"reserved column {reserved[0]!r} cannot be dropped")
    missing = [c for c in named if c not in df.columns]
    if missing and not params["missing_ok"]:
        raise ValueError(f"no column {missing[0]!r} to drop")
    drop = {c for c in named if c in df.columns}
    if params["identifier_like"]:
        names = {normalise(n) for n in params["identifiers"]}
        words = {normalise(w) for w in params["identifier_words"]}
        keep = set(params["keep"])
        drop |= {
            c
            for c in df.columns
            if isinstance(c, str) and not c.startswith("_") and c not in keep and looks_like_identifier(c, names, words)
        }
    return df.drop(columns=[c for c in df.columns if c in drop])
