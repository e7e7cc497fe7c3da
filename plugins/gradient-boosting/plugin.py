"""Gradient boosting regressor or classifier specs."""

from __future__ import annotations

from typing import Any

from cleanroom.hookspecs import hookimpl

HYPER = ("n_estimators", "max_depth", "learning_rate", "min_samples_leaf", "subsample", "random_state")


@hookimpl
def model_spec(columns: list[str], params: dict[str, Any]) -> dict[str, Any]:
    target, features = params["target"], list(params["features"])
    for column in [target, *features]:
        if column.startswith("_"):
            raise ValueError(f"reserved column {column!r} cannot be a target or a feature")
        if column not in columns:
            raise ValueError(f"no column {column!r} in the frame")
    if target in features:
        raise ValueError(f"the target {target!r} cannot be a feature")
    estimator = params["estimator"]
    return {
        "estimator": estimator,
        "params": {key: params[key] for key in HYPER},
        "target": target,
        "features": features or None,
        "task": "classification" if estimator.endswith("classifier") else "regression",
    }
