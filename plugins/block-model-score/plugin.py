"""Fit gradient boosting or a random forest on one block of units; return its holdout R^2 and predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor

from cleanroom.hookspecs import hookimpl

MIN_ROWS = 20  # fewer rows in a block: no answer (the room uses the declared default)


def _model(params: dict[str, Any]) -> Any:
    if params["estimator"] == "random_forest":
        return RandomForestRegressor(
            n_estimators=params["n_estimators"], max_depth=params["max_depth"], random_state=0, n_jobs=1
        )
    return HistGradientBoostingRegressor(max_iter=params["n_estimators"], max_depth=params["max_depth"], random_state=0)


@hookimpl
def block_statistic(df: pd.DataFrame, params: dict[str, Any]) -> list[float]:
    target, features, points = params["target"], list(params["features"]), list(params["points"])
    for column in [target, *features]:
        if column not in df.columns or column.startswith("_"):
            raise ValueError(f"block-model-score: no column {column!r}")
    for point in points:
        if sorted(point) != sorted(features):
            raise ValueError("block-model-score: every point gives a value for each feature, and nothing else")
    frame = df[[target, *features]].apply(pd.to_numeric, errors="coerce").dropna()
    nothing = [float("nan")] * (1 + len(points))
    if len(frame) < MIN_ROWS:
        return nothing
    holdout = np.random.default_rng(0).random(len(frame)) < float(params["holdout_fraction"])
    train, test = frame[~holdout], frame[holdout]
    if len(test) < 2 or test[target].nunique() < 2:
        return nothing
    model = _model(params).fit(train[features], train[target])
    out = [float(model.score(test[features], test[target]))]
    if points:
        out += [float(v) for v in model.predict(pd.DataFrame(points, columns=features))]
    return out
