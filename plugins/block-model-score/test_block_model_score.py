"""block-model-score, called through its hook and the compute phase's answer check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def frame(n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 10, n)
    return pd.DataFrame(
        {"_pid": np.arange(n), "x": x, "z": rng.normal(0, 1, n), "y": 3 * np.sin(x) + x + rng.normal(0, 0.3, n)}
    )


@pytest.mark.parametrize("estimator", ["gradient_boosting", "random_forest"])
def test_returns_the_holdout_r2_then_a_prediction_per_point(plugin, estimator):
    out = plugin.call(
        frame(),
        target="y",
        features=["x", "z"],
        estimator=estimator,
        max_depth=6,
        points=[{"x": 2.0, "z": 0.0}, {"x": 8.0, "z": 0.0}],
    )
    assert len(out) == 3 and out[0] > 0.9  # a non-linear fit a linear model could not make
    assert out[1] == pytest.approx(3 * np.sin(2) + 2, abs=1.0) and out[2] == pytest.approx(3 * np.sin(8) + 8, abs=1.0)


def test_a_small_block_gives_no_answer_and_bad_params_raise(plugin):
    assert plugin.call(frame(10), target="y", features=["x"], points=[{"x": 1.0}]) == [None, None]
    with pytest.raises(ValueError, match="no column"):
        plugin.call(frame(), target="y", features=["_pid"])
    with pytest.raises(ValueError, match="every point"):
        plugin.call(frame(), target="y", features=["x"], points=[{"z": 1.0}])
