"""Model fitting and checks: allow-list, params, floors, splits, stored rows, skops output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression
from sklearn.neighbors import KNeighborsRegressor, NearestNeighbors
from sklearn.tree import DecisionTreeRegressor

from cleanroom import modelio
from cleanroom.sandbox.names import NameRule
from cleanroom.sandbox.release import models
from cleanroom.sandbox.release.models import ModelError

ALL = list(models.ESTIMATORS)


def frame(units: int = 400, rows_per_unit: int = 1, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = units * rows_per_unit
    pid = np.repeat(np.arange(units), rows_per_unit)
    age = rng.integers(18, 90, n)
    income = rng.normal(50, 10, n)
    spend = 2 * age + 0.5 * income + rng.normal(0, 5, n)
    return pd.DataFrame(
        {
            "_pid": [f"{p:08x}" for p in pid],
            "age": age,
            "income": income,
            "region": rng.choice(["north", "south"], n),
            "email": "x@example.org",
            "spend": spend,
            "big": spend > np.median(spend),
        }
    )


def fit(
    spec: dict[str, Any],
    df: pd.DataFrame | None = None,
    k: int = 10,
    allowed: list[str] | None = None,
    allow_row_storing: bool = False,
    max_model_bytes: int = 5_000_000,
    checks: list | None = None,
    names: list[str] | None = None,
) -> dict[str, bytes]:
    df = frame() if df is None else df
    return models.fit_and_check(
        frame() if df is None else df,
        spec,
        k=k,
        allowed=ALL if allowed is None else allowed,
        allow_row_storing=allow_row_storing,
        max_model_bytes=max_model_bytes,
        forbidden={"email"},
        holdout_fraction=0.2,
        seed=0,
        job_id="job-1",
        checks=[] if checks is None else checks,
        names=NameRule({str(c): [] for c in (df.columns if names is None else names)}),
    )


RIDGE = {"estimator": "ridge", "params": {"alpha": 1.0}, "target": "spend", "features": None, "task": "regression"}


def test_regression_fits_with_sane_metrics_and_safe_artifacts(tmp_path: Path) -> None:
    checks: list = []
    out = fit(RIDGE, df=frame().drop(columns="big"), checks=checks)
    assert set(out) == {"model.skops", "metrics.json", "model_card.md"}
    report = json.loads(out["metrics.json"])
    assert report["features"] == ["age", "income"]  # email forbidden, region not numeric, _pid reserved
    assert report["metrics"]["r2"] > 0.9
    assert report["n_train"] % 10 == 0 and report["n_holdout"] % 10 == 0
    assert all(c["passed"] for c in checks)
    card = out["model_card.md"].decode()
    assert "ridge" in card and "`age`" in card and "x@example.org" not in card
    path = tmp_path / "model.skops"
    path.write_bytes(out["model.skops"])
    model = modelio.load_model(path)
    assert list(model.feature_names_in_) == ["age", "income"]


def test_classification_metrics() -> None:
    spec = {
        "estimator": "logistic_regression",
        "params": {"max_iter": 500},
        "target": "big",
        "features": ["age", "income"],
        "task": "classification",
    }
    report = json.loads(fit(spec)["metrics.json"])
    assert report["metrics"]["accuracy"] > 0.8 and report["metrics"]["roc_auc"] > 0.9
    assert report["metrics"]["log_loss"] is not None


def test_tree_gets_min_samples_leaf_k_by_default() -> None:
    spec = {"estimator": "decision_tree_regressor", "params": {}, "target": "spend", "features": None}
    checks: list = []
    out = fit(spec, checks=checks)
    assert "`min_samples_leaf`: `10`" in out["model_card.md"].decode()
    assert any(c["name"] == "model:leaf_units" and c["passed"] for c in checks)


def test_min_samples_leaf_below_k_is_refused() -> None:
    spec = {"estimator": "random_forest_regressor", "params": {"min_samples_leaf": 2}, "target": "spend"}
    with pytest.raises(ModelError, match="at least k=10"):
        fit(spec)
    with pytest.raises(ModelError, match="integer"):
        fit({**spec, "params": {"min_samples_leaf": 0.5}})


def test_leaves_need_k_units_not_rows() -> None:
    # 5 identical-feature rows per unit: a leaf of 10 rows may hold only 2 units
    df = frame(units=300, rows_per_unit=5)
    spec = {"estimator": "decision_tree_regressor", "params": {}, "target": "spend"}
    with pytest.raises(ModelError, match="fewer than k=10 distinct units") as info:
        fit(spec, df=df)
    assert info.value.check == "model:leaf_units"
    fit({**spec, "params": {"min_samples_leaf": 50}}, df=df)


def test_knn_is_refused_unless_row_storing_is_allowed() -> None:
    spec = {"estimator": "k_neighbors_regressor", "params": {}, "target": "spend"}
    with pytest.raises(ModelError, match="stores training rows"):
        fit(spec)
    checks: list = []
    fit(spec, allow_row_storing=True, checks=checks)
    assert any("skipped" in c["detail"] for c in checks)


def test_unknown_estimator_and_policy_allow_list() -> None:
    with pytest.raises(ModelError, match="unknown estimator"):
        fit({**RIDGE, "estimator": "xgboost"})
    with pytest.raises(ModelError, match="not allowed by the policy"):
        fit(RIDGE, allowed=["lasso"])


@pytest.mark.parametrize(
    "params, message",
    [
        ({"alfa": 1.0}, "no parameter"),
        ({"alpha": [1.0]}, "JSON scalar"),
        ({"alpha": {"x": 1}}, "JSON scalar"),
        ({"alpha": float("nan")}, "finite"),
        ({"alpha": -1.0}, "invalid parameters"),
        ({"solver": "no-such-solver"}, "invalid parameters"),
    ],
)
def test_bad_params_are_refused(params: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        fit({**RIDGE, "params": params})


@pytest.mark.parametrize(
    "params",
    [
        {"n_jobs": 4},
        {"n_jobs": True},
        {"warm_start": True},
        {"verbose": 2},
        {"oob_score": True},
        {"n_estimators": 100_000},
    ],
)
def test_forest_params_with_side_effects_are_refused(params: dict) -> None:
    with pytest.raises(ModelError, match="must be one of|capped"):
        fit({"estimator": "random_forest_regressor", "params": params, "target": "spend"})


def test_task_must_match_the_estimator() -> None:
    with pytest.raises(ModelError, match="regression estimator"):
        fit({**RIDGE, "task": "classification"})


@pytest.mark.parametrize(
    "features, message",
    [
        (["age", "region"], "one-hot"),
        (["age", "email"], "cannot be a feature"),
        (["_pid"], "cannot be a feature"),
        (["age", "spend"], "cannot be a feature"),
        (["age", "nope"], "not in the frame"),
        (["age", "age"], "repeat"),
    ],
)
def test_bad_features_are_refused(features: list[str], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        fit({**RIDGE, "features": features})


def test_bad_targets_are_refused() -> None:
    with pytest.raises(ModelError, match="missing"):
        fit({**RIDGE, "target": "nope"})
    with pytest.raises(ModelError, match="cannot be the target"):
        fit({**RIDGE, "target": "email"})
    with pytest.raises(ModelError, match="numeric"):
        fit({**RIDGE, "target": "region", "features": ["age"]})


def test_missing_values_must_be_imputed_first() -> None:
    df = frame()
    df.loc[3, "age"] = np.nan
    with pytest.raises(ModelError, match="impute"):
        fit(RIDGE, df=df)


def test_holdout_with_fewer_than_k_units_is_refused() -> None:
    with pytest.raises(ModelError, match="at least k=10 units") as info:
        fit(RIDGE, df=frame(units=30, rows_per_unit=3))
    assert info.value.check == "model:holdout"


def test_rare_classes_are_refused() -> None:
    df = frame()
    df["label"] = "common"
    df.loc[:2, "label"] = "rare"
    spec = {"estimator": "logistic_regression", "params": {}, "target": "label", "features": ["age"]}
    with pytest.raises(ModelError, match="each with at least k=10 units"):
        fit(spec, df=df)


def test_split_never_puts_a_unit_in_both_sets() -> None:
    df = frame(units=200, rows_per_unit=4)
    train, holdout = models.split(df, 0.25, seed=3)
    assert not set(df["_pid"].iloc[train]) & set(df["_pid"].iloc[holdout])


def test_model_over_the_size_cap_is_refused() -> None:
    with pytest.raises(ModelError, match="over the policy cap"):
        fit(RIDGE, max_model_bytes=100)


def test_detector_finds_rows_stored_by_neighbours() -> None:
    df = frame()
    X = df[["age", "income"]].to_numpy(dtype=float)
    assert "model._fit_X" in models.find_stored_rows(NearestNeighbors().fit(X), X)
    knn = KNeighborsRegressor().fit(X, df["spend"])
    assert "model._fit_X" in models.find_stored_rows(knn, X)
    assert "model._y" in models.find_per_sample_arrays(knn, len(X))


def test_detector_finds_a_coefficient_vector_equal_to_a_training_row() -> None:
    df = frame()
    X = df[["age", "income"]].to_numpy(dtype=float)
    model = LinearRegression().fit(X, df["spend"])
    assert models.find_stored_rows(model, X) == []
    model.coef_ = X[7].copy()  # a crafted fitted attribute that equals a training row
    assert models.find_stored_rows(model, X) == ["model.coef_"]


def test_detector_walks_nested_estimators_and_trees() -> None:
    df = frame()
    X = df[["age", "income"]].to_numpy(dtype=float)
    forest = RandomForestRegressor(n_estimators=30, min_samples_leaf=10, oob_score=True, random_state=0)
    forest.fit(X, df["spend"])
    assert models.find_stored_rows(forest, X) == []
    assert "model.oob_prediction_" in models.find_per_sample_arrays(forest, len(X))
    paths = [path for path, _ in models.iter_arrays(forest)]
    assert any(p.startswith("model.estimators_[29].tree_.nodes.threshold") for p in paths)
    tree = DecisionTreeRegressor(min_samples_leaf=1).fit(X, df["spend"])
    assert models.min_leaf_units(tree, X, df["_pid"].to_numpy()) == 1


def test_every_default_family_passes_its_checks() -> None:
    for name in models.ESTIMATORS:
        if name in models.ROW_STORING or name in models.DP_ONLY:
            continue
        classify = name.endswith("classifier") or name == "logistic_regression"
        params = {"n_estimators": 3, "max_depth": 2} if "forest" in name or "boosting" in name else {}
        spec = {
            "estimator": name,
            "params": params,
            "target": "big" if classify else "spend",
            "features": ["age", "income"],
        }
        out = fit(spec)
        assert json.loads(out["metrics.json"])["estimator"] == name


# -- W1: rows leaving through linear models' parameters ---------------------------------------------
def _with_indicators(n_people: int, noise: float = 0.0, seed: int = 1) -> pd.DataFrame:
    """One 0/1 column per person for the first `n_people` units (optionally blurred with noise)."""
    df = frame(units=400)
    rng = np.random.default_rng(seed)
    for i in range(n_people):
        df[f"age_{i}"] = (df["_pid"] == df["_pid"].iloc[i]).astype(float) + noise * rng.standard_normal(len(df))
    return df


@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_per_person_features_are_refused_by_leverage(noise: float) -> None:
    df = _with_indicators(5, noise)
    spec = {**RIDGE, "params": {"alpha": 1e-6}, "features": ["age", "income", *[f"age_{i}" for i in range(5)]]}
    with pytest.raises(ModelError) as refused:
        fit(spec, df)
    assert refused.value.check == "model:leverage"
    checks: list = []  # control: the same data without the per-person columns passes
    fit({**spec, "features": ["age", "income"]}, df, checks=checks)
    assert any(c["name"] == "model:leverage" and c["passed"] for c in checks)


def test_a_feature_held_by_fewer_than_k_units_is_refused_and_one_held_by_many_passes() -> None:
    df = frame(units=400)
    pids = df["_pid"].unique()
    df["region_north"] = df["_pid"].isin(pids[:4]).astype(float)  # a "category" of 4 people, k = 10
    with pytest.raises(ModelError, match="singles out"):
        fit({**RIDGE, "features": ["age", "region_north"]}, df)
    df["region_north"] = df["_pid"].isin(pids[:120]).astype(float)
    fit({**RIDGE, "features": ["age", "region_north"]}, df)


def test_linear_models_need_k_units_per_feature() -> None:
    df = frame(units=60)
    for i in range(8):
        df[f"income_{['log', 'sqrt', 'sq', 'z', 'std', 'norm', 'rank', 'code'][i]}"] = np.random.default_rng(i).random(
            len(df)
        )
    with pytest.raises(ModelError, match="units per feature"):
        fit({**RIDGE, "features": None}, df)


def test_leverage_matches_the_hat_matrix() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    X[:, 3] = X[:, 0] + X[:, 1]  # collinear: the pseudo-inverse handles it
    design = np.column_stack([np.ones(200), X])
    hat = np.diag(design @ np.linalg.pinv(design.T @ design) @ design.T)
    units = np.arange(200) // 2  # two rows per unit: a unit's leverage is the sum over its rows
    expected = np.bincount(units, weights=hat).max()
    assert models.max_unit_leverage(X, units, chunk=33) == pytest.approx(expected, rel=1e-6)


def test_feature_and_target_names_must_be_public() -> None:
    df = frame()
    df["leak_ab12_1234"] = df["age"] * 1.0
    with pytest.raises(Exception, match="feature #3 has a name"):
        fit({**RIDGE, "features": ["age", "income", "leak_ab12_1234"]}, df, names=["age", "income", "spend"])
    fit({**RIDGE, "features": ["age", "income"]}, df, names=["age", "income", "spend"])  # control


def test_linear_model_cards_list_the_released_coefficients() -> None:
    out = fit({"estimator": "ridge", "params": {}, "target": "spend", "features": ["age", "income"]})
    card = out["model_card.md"].decode()
    model = sio.loads(out["model.skops"], trusted=sio.get_untrusted_types(data=out["model.skops"]))
    assert "## Coefficients" in card and "| `age` |" in card and "| intercept |" in card
    assert f"| `age` | {float(f'{model.coef_[0]:.4g}')} |" in card  # the released (rounded) value
    tree_card = fit(
        {"estimator": "decision_tree_regressor", "params": {}, "target": "spend", "features": ["age", "income"]}
    )["model_card.md"].decode()
    assert "## Coefficients" not in tree_card  # control: no coefficients to list
