"""block-quantile, called through its hook and the compute phase's answer check."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest


def frame(n: int = 101) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "_pid": np.arange(n),
            "spend": np.arange(n, dtype=float),
            "income": np.arange(n, dtype=float) * 10,
            "region": ["n"] * n,
        }
    )


def test_returns_one_quantile_per_column_in_order(plugin):
    assert plugin.call(frame(), columns=["spend", "income"]) == [50.0, 500.0]
    assert plugin.call(frame(), columns=["income"], q=0.9) == [pytest.approx(900.0)]


def test_an_empty_block_answers_no_number_and_bad_params_raise(plugin):
    empty = plugin.call(frame(0), columns=["spend"])
    assert len(empty) == 1 and empty[0] is None  # NaN: the runner uses the declared default
    assert math.isnan(plugin.hook.block_statistic(df=frame(0), params=plugin.params(columns=["spend"]))[0])
    with pytest.raises(ValueError, match="no column"):
        plugin.call(frame(), columns=["_pid"])
    with pytest.raises(ValueError, match="0 <= q <= 1"):
        plugin.call(frame(), columns=["spend"], q=2)
