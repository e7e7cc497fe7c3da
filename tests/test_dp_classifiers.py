"""DP classifiers (diffprivlib: logistic regression, Gaussian naive Bayes, random forest) through the
release phase: classes and bounds fixed before the data, the budget charged, the model released as a
plain scikit-learn estimator the recipient loads, noisy accuracy with the documented scale, utility.

Neither diffprivlib nor OpenDP can be seeded in production, so utility is checked with margins wide
enough for the noise at these sizes, and noise by its distribution (many draws).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from cleanroom import modelio
from cleanroom.sandbox import wire
from cleanroom.sandbox.release import dp, dp_classifiers, models
from cleanroom.sandbox.release import phase as release

FEATURES = ["a", "b", "c"]
BOUNDS = {"a": [-1, 1], "b": [-1, 1], "c": [-1, 1], "flag": [0, 1], "grade": [0, 2]}


def joined(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, 3))
    score = X @ [2.0, -1.0, 0.5]
    flag = (score + rng.normal(0, 0.3, n) > 0).astype(int)
    grade = np.digitize(score, [-0.8, 0.8])
    return pd.DataFrame({"_pid": np.arange(n), "a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "flag": flag, "grade": grade})


def run_release(
    spec: dict, *, frame: pd.DataFrame | None = None, require_dp: bool = True, epsilon: float = 1.0
) -> tuple[dict, dict]:
    frame = joined(20_000) if frame is None else frame
    policy = {
        "k": 10,
        "outputs": ["aggregate", "model"],
        "estimators": list(models.ESTIMATORS),
        "allow_row_storing": False,
        "max_model_bytes": 1_000_000,
        "never_output": [],
        "join_only": [],
        "bounds": BOUNDS,
        "require_dp": require_dp,
    }
    request = {
        "job_id": "job-dpc",
        "policy": policy,
        "outputs": {"model": True, "metrics": True, "aggregates": False},
        "model_spec": spec,
        "analysis_specs": [],
        "table_names": [],
        "dp": {"epsilon": epsilon, "delta": 1e-7} if require_dp else None,
        "names": {"schemas": {"w": {c: [] for c in frame.columns}}, "job_strings": []},
    }
    return release.run(request, {release.FRAME: wire.frame_to_bytes(frame)})


def spec_of(name: str, target: str = "flag", params: dict | None = None) -> dict:
    return {"estimator": name, "params": params or {}, "target": target, "features": FEATURES, "task": "classification"}


@pytest.mark.parametrize("name", dp_classifiers.DP_CLASSIFIERS)
def test_each_dp_classifier_is_released_useful_loadable_and_charged(name, tmp_path):
    meta, files = run_release(spec_of(name))
    assert meta["ok"], meta
    assert meta["epsilon_spent"] <= 1.0 + 1e-9
    report = json.loads(files["artifacts/metrics.json"])
    assert report["differential_privacy"] and report["classes"] == [0, 1] and report["delta"] == 0.0
    assert "diffprivlib" in report["mechanism"]
    # the recipient's loader (trusted types only) reads it as plain scikit-learn
    path = tmp_path / "model.skops"
    path.write_bytes(files["artifacts/model.skops"])
    model = modelio.load_model(path)
    assert type(model).__module__.startswith("sklearn.")
    truth = joined(4000, seed=9)
    accuracy = float((model.predict(truth[FEATURES]) == truth["flag"]).mean())
    assert accuracy > 0.75, (name, accuracy)  # chance is about 0.5; the exact fit reaches about 0.94
    assert 0.0 <= report["metrics"]["accuracy"] <= 1.0
    card = files["artifacts/model_card.md"].decode()
    assert "differentially private" in card and "declared bounds" in card


def test_logistic_coefficients_are_in_original_units_and_in_the_card(tmp_path):
    frame = joined(20_000)
    frame[FEATURES] = frame[FEATURES] * 50 + 100  # original units [50, 150]
    bounds = {c: [50, 150] for c in FEATURES}
    policy_bounds = BOUNDS | bounds
    meta, files = run_release_with_bounds(spec_of("logistic_regression"), frame, policy_bounds)
    assert meta["ok"], meta
    path = tmp_path / "model.skops"
    path.write_bytes(files["artifacts/model.skops"])
    model = modelio.load_model(path)
    x = frame[FEATURES].to_numpy()[:200]
    logit = x @ model.coef_[0] + model.intercept_[0]
    assert np.array_equal(model.predict(frame[FEATURES].iloc[:200]), (logit > 0).astype(int))
    assert model.coef_[0][0] > 0 > model.coef_[0][1]  # the signs of the truth (2, -1, 0.5) at epsilon 1
    card = files["artifacts/model_card.md"].decode()
    assert "## Coefficients (original units)" in card and "| `a` |" in card and "| intercept |" in card


def run_release_with_bounds(spec: dict, frame: pd.DataFrame, bounds: dict) -> tuple[dict, dict]:
    global BOUNDS
    saved, BOUNDS = BOUNDS, bounds
    try:
        return run_release(spec, frame=frame)
    finally:
        BOUNDS = saved


def test_three_classes_come_from_the_declared_bounds():
    meta, files = run_release(spec_of("gaussian_nb", target="grade"))
    assert meta["ok"], meta
    assert json.loads(files["artifacts/metrics.json"])["classes"] == [0, 1, 2]


def test_classes_must_be_declared_as_a_small_integer_range():
    assert dp_classifiers.classes_for((0, 1)).tolist() == [0, 1]  # control
    for bounds in [(0, 0.5), (0, 100), (-0.2, 0.4)]:
        with pytest.raises(models.ModelError, match="integer classes"):
            dp_classifiers.classes_for(bounds)


def test_values_outside_the_declared_bounds_are_clipped_never_used_as_bounds():
    """A hostile frame with one extreme row: the fit uses the declared bounds (diffprivlib would warn of a
    leak if it had to read bounds from the data, and that warning is an error here)."""
    frame = joined(5000)
    frame.loc[0, "a"] = 1e9
    frame.loc[1, "flag"] = 7  # outside the declared classes: clipped to class 1
    meta, files = run_release(spec_of("random_forest_classifier"), frame=frame)
    assert meta["ok"], meta
    assert json.loads(files["artifacts/metrics.json"])["bounds"]["a"] == [-1, 1]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"criterion": "entropy"}, "takes only"),
        ({"n_estimators": 1000}, "must be a number"),
        ({"max_depth": True}, "must be a number"),
    ],
)
def test_only_capped_parameters_are_accepted(params, message):
    meta, _ = run_release(spec_of("random_forest_classifier", params=params))
    assert not meta["ok"] and message in meta["error"]
    meta, _ = run_release(spec_of("random_forest_classifier", params={"n_estimators": 5, "max_depth": 3}))
    assert meta["ok"], meta  # control


def test_naive_bayes_is_fitted_only_with_dp():
    meta, _ = run_release(spec_of("gaussian_nb"), require_dp=False)
    assert not meta["ok"] and "only with differential privacy" in meta["error"]
    meta, _ = run_release(spec_of("gaussian_nb"))
    assert meta["ok"], meta  # control: the DP path fits it


def test_the_budget_is_charged_once_and_refused_when_spent():
    budget = dp.Budget(0.5, 0.0)
    frame = joined(2000)
    x_bounds = np.array([BOUNDS[c] for c in FEATURES], dtype="float64")
    dp_classifiers.fit_classifier(
        "gaussian_nb", frame[FEATURES].to_numpy(), frame["flag"].to_numpy(), x_bounds, (0, 1), 0.5, budget, {}
    )
    assert budget.epsilon_spent == pytest.approx(0.5)
    with pytest.raises(dp.BudgetError):
        dp_classifiers.fit_classifier(
            "gaussian_nb", frame[FEATURES].to_numpy(), frame["flag"].to_numpy(), x_bounds, (0, 1), 0.5, budget, {}
        )


@pytest.mark.slow  # a distribution test: many noisy releases
def test_the_holdout_counts_carry_laplace_noise_of_the_documented_scale():
    epsilon = 0.5
    y = np.array([0, 1] * 500)
    draws = np.array(
        [dp_classifiers.holdout_accuracy(y, y, np.array([0, 1]), epsilon)["noisy_units"] for _ in range(1500)],
        dtype="float64",
    ) - len(y)
    scale = dp_classifiers.ACCURACY_QUERIES / epsilon
    # released rounded to whole units (a discrete law, so no KS test): Laplace(b) has E|X| = b and
    # sd = b sqrt(2); rounding moves each by far less than the 10 % allowed (1500 draws: sampling error ~3 %)
    assert abs(np.mean(np.abs(draws)) - scale) < 0.1 * scale
    assert abs(np.std(draws) - math.sqrt(2) * scale) < 0.1 * math.sqrt(2) * scale
    assert abs(np.median(draws)) < 0.5  # centred on the truth


def test_the_dry_run_plan_names_the_classifier_mechanism_and_the_accuracy_noise():
    from cleanroom.sandbox.release import dp_plan

    plan = dp_plan.describe(
        1.0,
        1e-7,
        aggregates=False,
        model=True,
        metrics=True,
        features=3,
        y_bounds=(0, 1),
        estimator="logistic_regression",
    )
    assert "objective perturbation" in plan["parts"]["model"]["mechanism"]
    assert plan["parts"]["metrics"]["noise_scale"]["count"] == pytest.approx(2.0)  # 2 counts at epsilon 1
    control = dp_plan.describe(
        1.0, 1e-7, aggregates=False, model=True, metrics=True, features=3, y_bounds=(0, 1), estimator="ridge"
    )
    assert "sufficient-statistics" in control["parts"]["model"]["mechanism"]
