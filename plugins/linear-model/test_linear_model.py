"""linear-model, called through its hooks."""

from __future__ import annotations

import pytest

COLUMNS = ["_pid", "spend", "age", "visits", "churned"]


def test_ridge_spec_with_default_features(plugin):
    spec = plugin.call(COLUMNS, target="spend", alpha=2.5)
    assert spec == {
        "estimator": "ridge",
        "params": {"fit_intercept": True, "alpha": 2.5},
        "target": "spend",
        "features": None,
        "task": "regression",
    }


def test_logistic_and_lasso_specs(plugin):
    spec = plugin.call(COLUMNS, estimator="logistic_regression", target="churned", features=["age"], alpha=0.5)
    assert spec["params"] == {"fit_intercept": True, "max_iter": 1000, "C": 2.0}
    assert spec["task"] == "classification" and spec["features"] == ["age"]
    spec = plugin.call(COLUMNS, estimator="lasso", target="spend", alpha=0.1)
    assert spec["params"] == {"fit_intercept": True, "alpha": 0.1, "max_iter": 1000}
    spec = plugin.call(COLUMNS, estimator="linear_regression", target="spend", fit_intercept=False)
    assert spec["params"] == {"fit_intercept": False}


def test_refuses_bad_columns(plugin):
    with pytest.raises(ValueError, match="no column"):
        plugin.call(COLUMNS, target="income")
    with pytest.raises(ValueError, match="reserved"):
        plugin.call(COLUMNS, target="spend", features=["_pid"])
    with pytest.raises(ValueError, match="cannot be a feature"):
        plugin.call(COLUMNS, target="spend", features=["spend"])
    with pytest.raises(ValueError, match="alpha"):
        plugin.call(COLUMNS, estimator="lasso", target="spend", alpha=0)
