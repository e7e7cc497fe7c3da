"""bin, called through its hooks."""

from __future__ import annotations

import pandas as pd
import pytest


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "_pid": ["a", "b", "c", "d", "e", "e"],
            "age": [17, 18, 30, 64, 65, None],
            "city": ["x", "x", "y", "y", "z", "z"],
        }
    )


def test_numeric_ranges_from_edges(plugin):
    out = plugin.call(frame(), columns=["age"], edges=[18, 65])
    assert out["age"].tolist() == ["< 18", "[18, 65)", "[18, 65)", "[18, 65)", ">= 65", None]


def test_quantile_bins_and_suffix(plugin):
    out = plugin.call(frame(), columns=["age"], bins=2, suffix="_band")
    assert out["age"].tolist()[:5] == [17, 18, 30, 64, 65]
    assert out["age_band"].nunique() == 2


def test_rare_categories_merge_by_distinct_pid(plugin):
    out = plugin.call(frame(), columns=["city"], min_count=2)
    assert out["city"].tolist() == ["x", "x", "y", "y", "other", "other"]


def test_refuses_bad_edges_and_columns(plugin):
    with pytest.raises(ValueError, match="increasing"):
        plugin.call(frame(), columns=["age"], edges=[5, 1])
    with pytest.raises(ValueError, match="no column"):
        plugin.call(frame(), columns=["_pid"])
