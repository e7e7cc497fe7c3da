"""one-hot, called through its hooks."""

from __future__ import annotations

import pandas as pd
import pytest


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "_pid": list("abcdef"),
            "region": ["n", "n", "s", "s", "e", None],
            "category": ["x", "x", "x", "y", "z", "w"],
            "age": [1, 2, 3, 4, 5, 6],
        }
    )


def test_encodes_every_text_column(plugin):
    out = plugin.call(frame())
    assert "region" not in out.columns and "category" not in out.columns
    assert out["region_n"].tolist() == [1, 1, 0, 0, 0, 0]
    assert out["region_e"].tolist() == [0, 0, 0, 0, 1, 0]
    assert out[["region_n", "region_s", "region_e"]].sum(axis=1).tolist() == [1, 1, 1, 1, 1, 0]
    assert out["age"].tolist() == [1, 2, 3, 4, 5, 6]


def test_max_categories_groups_the_rest(plugin):
    out = plugin.call(frame(), columns=["category"], max_categories=1, keep_original=True, sep="=")
    assert out["category=x"].tolist() == [1, 1, 1, 0, 0, 0]
    assert out["category=other"].tolist() == [0, 0, 0, 1, 1, 1]
    assert "category" in out.columns and "region" in out.columns


def test_refuses_unknown_and_clashing_columns(plugin):
    with pytest.raises(ValueError, match="no column"):
        plugin.call(frame(), columns=["nope"])
    df = frame().assign(region_n=0)
    with pytest.raises(ValueError, match="exists already"):
        plugin.call(df, columns=["region"])
