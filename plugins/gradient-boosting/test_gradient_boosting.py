"""gradient-boosting, called through its hooks."""

from __future__ import annotations

import pytest

COLUMNS = ["_pid", "spend", "age", "visits", "churned"]


def test_regressor_spec_with_defaults(plugin):
    spec = plugin.call(COLUMNS, target="spend")
    assert spec == {
        "estimator": "gradient_boosting_regressor",
        "target": "spend",
        "features": None,
        "task": "regression",
        "params": {
            "n_estimators": 100,
            "max_depth": 3,
            "learning_rate": 0.1,
            "min_samples_leaf": 20,
            "subsample": 1.0,
            "random_state": 0,
        },
    }


def test_classifier_spec(plugin):
    spec = plugin.call(
        COLUMNS,
        estimator="gradient_boosting_classifier",
        target="churned",
        features=["age", "visits"],
        n_estimators=50,
        min_samples_leaf=25,
    )
    assert spec["task"] == "classification" and spec["features"] == ["age", "visits"]
    assert spec["params"]["n_estimators"] == 50 and spec["params"]["min_samples_leaf"] == 25


def test_refuses_bad_columns_and_params(plugin):
    with pytest.raises(ValueError, match="no column"):
        plugin.call(COLUMNS, target="spend", features=["income"])
    with pytest.raises(ValueError, match="cannot be a feature"):
        plugin.call(COLUMNS, target="spend", features=["spend"])
    with pytest.raises(Exception, match="at most 16"):
        plugin.call(COLUMNS, target="spend", max_depth=40)
