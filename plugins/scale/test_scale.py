"""scale, called through its hooks."""

from __future__ import annotations

import pandas as pd
import pytest


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "_pid": list("abcd"),
            "age": [20, 30, 40, 50],
            "spend": [1.0, 2.0, 3.0, 4.0],
            "region_north": [0, 1, 0, 1],
            "flat": [5, 5, 5, 5],
            "region": list("nsns"),
        }
    )


def test_standardises_numeric_columns_but_not_binary_or_excluded(plugin):
    out = plugin.call(frame(), exclude=["spend"])
    assert out["age"].mean() == pytest.approx(0) and out["age"].std(ddof=0) == pytest.approx(1)
    assert out["spend"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert out["region_north"].tolist() == [0, 1, 0, 1]
    assert out["flat"].tolist() == [0.0] * 4
    assert out["region"].tolist() == list("nsns")


def test_minmax_on_named_columns(plugin):
    out = plugin.call(frame(), columns=["age"], method="minmax")
    assert out["age"].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert out["spend"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_refuses_text_and_unknown_columns(plugin):
    with pytest.raises(ValueError, match="not numeric"):
        plugin.call(frame(), columns=["region"])
    with pytest.raises(ValueError, match="no column"):
        plugin.call(frame(), columns=["_pid"])
