"""impute, called through its hooks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "_pid": list("abcde"),
            "tenure": [1.0, np.nan, 3.0, 10.0, np.nan],
            "segment": ["mass", None, "mass", "private", "affluent"],
            "age": [20, 30, 40, 50, 60],
        }
    )


def test_median_for_numbers_and_most_frequent_for_text(plugin):
    out = plugin.call(frame())
    assert out["tenure"].tolist() == [1.0, 3.0, 3.0, 10.0, 3.0]
    assert out["segment"].tolist() == ["mass", "mass", "mass", "private", "affluent"]
    assert out["age"].tolist() == [20, 30, 40, 50, 60]


def test_mean_constant_per_column_and_indicator(plugin):
    out = plugin.call(frame(), strategy="mean", per_column={"segment": "constant"}, add_indicator=True)
    assert out["tenure"].tolist()[1] == pytest.approx(14 / 3)
    assert out["segment"].tolist()[1] == "missing"
    assert out["tenure_missing"].tolist() == [0, 1, 0, 0, 1]
    out = plugin.call(frame(), columns=["tenure"], strategy="constant", fill_value=-1)
    assert out["tenure"].tolist() == [1.0, -1.0, 3.0, 10.0, -1.0]
    assert out["segment"].isna().sum() == 1


def test_refuses_mean_of_text_and_unknown_columns(plugin):
    with pytest.raises(ValueError, match="not numeric"):
        plugin.call(frame(), per_column={"segment": "mean"})
    with pytest.raises(ValueError, match="no column"):
        plugin.call(frame(), columns=["nope"])
    with pytest.raises(ValueError, match="strategy"):
        plugin.call(frame(), per_column={"tenure": "magic"})
