"""clip, called through its hooks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def frame() -> pd.DataFrame:
    values = np.arange(101, dtype=float)
    values[-1] = 1e9  # one extreme outlier
    return pd.DataFrame(
        {
            "_pid": [f"p{i}" for i in range(101)],
            "income": values,
            "spend": values.copy(),
            "flag": [0, 1] * 50 + [0],
            "region": ["n"] * 101,
        }
    )


def test_clips_numeric_columns_to_quantiles_but_not_excluded_or_binary(plugin):
    out = plugin.call(frame(), exclude=["spend"], lower=0.05, upper=0.95)
    assert out["income"].max() == pytest.approx(95.0) and out["income"].min() == pytest.approx(5.0)
    assert out["spend"].max() == 1e9
    assert out["flag"].tolist() == frame()["flag"].tolist()
    assert out["region"].tolist() == ["n"] * 101
    assert out["_pid"].tolist() == frame()["_pid"].tolist()


def test_named_columns_and_bad_params(plugin):
    out = plugin.call(frame(), columns=["spend"])
    assert out["spend"].max() < 1e9 and out["income"].max() == 1e9
    with pytest.raises(ValueError, match="not numeric"):
        plugin.call(frame(), columns=["region"])
    with pytest.raises(ValueError, match="no column"):
        plugin.call(frame(), columns=["_pid"])
    with pytest.raises(ValueError, match="lower < 0.5 < upper"):
        plugin.call(frame(), lower=0.6)
