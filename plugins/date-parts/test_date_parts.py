"""date-parts, called through its hooks."""

from __future__ import annotations

import pandas as pd
import pytest


def frame() -> pd.DataFrame:
    return pd.DataFrame({"_pid": list("abc"), "last_purchase": ["2026-01-05", "2026-03-31", "not a date"]})


def test_default_parts(plugin):
    out = plugin.call(frame(), column="last_purchase")
    assert "last_purchase" not in out.columns
    assert out["last_purchase_year"].tolist()[:2] == [2026, 2026]
    assert out["last_purchase_month"].tolist()[:2] == [1, 3]
    assert out["last_purchase_weekday"].tolist()[:2] == [0, 1]
    assert out["last_purchase_year"].isna().tolist() == [False, False, True]


def test_days_since_and_keep(plugin):
    df = frame().iloc[:2]
    out = plugin.call(
        df, column="last_purchase", parts=["days_since", "quarter"], reference_date="2026-04-01", drop=False
    )
    assert out["last_purchase_days_since"].tolist() == [86, 1]
    assert out["last_purchase_quarter"].tolist() == [1, 1]
    assert out["last_purchase_days_since"].dtype == "int64"
    assert "last_purchase" in out.columns


def test_errors(plugin):
    with pytest.raises(ValueError, match="reference_date"):
        plugin.call(frame(), column="last_purchase", parts=["days_since"])
    with pytest.raises(ValueError, match="no date column"):
        plugin.call(frame(), column="nope")
