"""Linear, ridge, lasso or logistic regression model specs."""

from __future__ import annotations

from typing import Any

from cleanroom.hookspecs import hookimpl


def check_columns(columns: list[str], target: str, features: list[str]) -> None:
    for column in [target, *features]:
        if column.startswith("_"):
            raise ValueError(f"reserved column {column!r} cannot be a target or a feature")
        if column not in columns:
            raise ValueError(f"no column {column!r} in the frame")
    if target in features:
        raise ValueError(f"the target {target!r} cannot be a feature")


@hookimpl
def model_spec(columns: list[str], params: dict[str, Any]) -> dict[str, Any]:
    estimator, alpha = params["estimator"], float(params["alpha"])
    check_columns(columns, params["target"], params["features"])
    if estimator in ("lasso", "logistic_regression") and alpha <= 0:
        raise ValueError(f"{estimator} needs alpha > 0")
    hyper: dict[str, Any] = {"fit_intercept": params["fit_intercept"]}
    if estimator in ("ridge", "lasso"):
        hyper["alpha"] = alpha
    if estimator in ("lasso", "logistic_regression"):
        hyper["max_iter"] = params["max_iter"]
    if estimator == "logistic_regression":
        hyper["C"] = 1.0 / alpha
    return {
        "estimator": estimator,
        "params": hyper,
        "target": params["target"],
        "features": list(params["features"]) or None,
        "task": "classification" if estimator == "logistic_regression" else "regression",
    }
