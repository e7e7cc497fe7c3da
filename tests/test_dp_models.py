"""DP linear regression (SSP) and DP holdout metrics: calibration, sensitivity, noise and utility.

OpenDP cannot be seeded (its noise comes from the OS), so noise is tested by its distribution (many
draws, a KS test at a rejection level of 1e-6) and calibration deterministically (privacy maps and
closed forms). Sensitivity tests build adversarial neighbours: D and D minus one `_pid` whose values
sit at the extremes, and check the room's own pre-noise code moves by at most the stated bound.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
import skops.io as sio

from cleanroom.sandbox import wire
from cleanroom.sandbox.release import dp, dp_models, dp_plan
from cleanroom.sandbox.release import phase as release

REJECT = 1e-6


# -- calibration (deterministic) ----------------------------------------------------------------------


@pytest.mark.parametrize(("epsilon", "delta", "features"), [(0.5, 1e-7, 1), (0.4, 5e-8, 3), (2.0, 1e-6, 12)])
def test_gaussian_scale_is_the_closed_form_and_the_map_stays_within_budget(epsilon, delta, features):
    d = dp_plan.ssp_dimension(features)
    measurement, sigma = dp_models.gaussian_mechanism(float(d), epsilon, delta)
    log_term = math.log(1 / delta)
    rho = (math.sqrt(log_term + epsilon) - math.sqrt(log_term)) ** 2
    assert sigma == pytest.approx(d / math.sqrt(2 * rho), rel=1e-12)
    assert measurement.map(float(d)) == pytest.approx(rho, rel=1e-9)  # zCDP rho = d^2 / (2 sigma^2)
    spent_eps, spent_delta = dp_models.approx_dp(measurement, delta).map(float(d))
    assert spent_eps <= epsilon and spent_delta <= delta


@pytest.mark.parametrize(("sensitivity", "epsilon"), [(1.0, 0.1), (3.0, 0.5), (3.0, 1.0)])
def test_laplace_scale_is_sensitivity_over_epsilon(sensitivity, epsilon):
    measurement, scale = dp_models.laplace_mechanism(sensitivity, epsilon)
    assert scale == sensitivity / epsilon
    assert measurement.map(sensitivity) <= epsilon * (1 + 1e-9)


def test_the_plan_splits_the_job_budget_and_never_exceeds_it():
    for flags in (
        {"aggregates": True, "model": True, "metrics": True},
        {"aggregates": True, "model": False, "metrics": False},
        {"aggregates": False, "model": True, "metrics": True},
    ):
        parts = dp_plan.split(1.0, 1e-7, **flags)
        assert sum(e for e, _ in parts.values()) == pytest.approx(1.0)
        assert sum(d for _, d in parts.values()) == pytest.approx(1e-7)
    assert dp_plan.split(1.0, 1e-7, aggregates=True, model=True, metrics=True)["aggregates"] == (0.5, 5e-8)


def test_a_release_spends_at_most_the_job_budget():
    meta, _ = run_release(dp={"epsilon": 1.0, "delta": 1e-7})
    assert meta["ok"], meta
    assert meta["epsilon_spent"] <= 1.0 + 1e-9 and meta["delta_spent"] <= 1e-7 * (1 + 1e-9)


# -- sensitivity with adversarial neighbours ------------------------------------------------------------


def neighbours(seed: int, n: int = 300, p: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(-50, 50, (n, p))
    y = rng.uniform(-50, 50, n)
    bounds = np.array([[-10.0, 10.0]] * p)
    return X, y, bounds


@pytest.mark.parametrize("extreme", [1e9, -1e9, 10.0, np.nan, 0.0])
def test_one_unit_moves_the_moments_by_at_most_d_in_l2(extreme):
    X, y, bounds = neighbours(1)
    X[0], y[0] = extreme, -extreme if np.isfinite(extreme) else extreme
    X, y = np.nan_to_num(X, nan=0.0), np.nan_to_num(y, nan=0.0)  # the release imputes before this point
    full = dp_models.moments(X, y, bounds, (-10.0, 10.0))
    without = dp_models.moments(X[1:], y[1:], bounds, (-10.0, 10.0))
    d = dp_plan.ssp_dimension(X.shape[1])
    assert np.linalg.norm(full - without) <= d + 1e-9
    if abs(extreme) >= 10:  # the bound is reached at the corners: it is tight, not loose
        assert np.linalg.norm(full - without) > 0.5 * d


def test_one_unit_with_many_rows_still_counts_once():
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(
        {"_pid": np.r_[np.zeros(50, dtype=int), np.arange(1, 201)], "x": np.r_[np.full(50, 1e6), rng.normal(size=200)]}
    )
    kept = dp_models.one_row_per_unit(frame, np.random.default_rng(0))
    assert kept["_pid"].is_unique and (kept["_pid"] == 0).sum() == 1 and len(kept) == 201


@pytest.mark.parametrize("extreme", [1e12, -1e12, 0.0])
def test_one_holdout_unit_moves_each_metric_sum_by_at_most_its_sensitivity(extreme):
    rng = np.random.default_rng(3)
    y, pred = rng.uniform(0, 100, 200), rng.uniform(0, 100, 200)
    y[0], pred[0] = extreme, -extreme
    bounds = (0.0, 100.0)
    diff = np.abs(dp_models.holdout_sums(y, pred, bounds) - dp_models.holdout_sums(y[1:], pred[1:], bounds))
    assert (diff <= np.array(dp_plan.metric_sensitivities(bounds)) + 1e-9).all()


def test_bounds_must_be_declared_never_read_from_the_data():
    frame = joined(500)
    meta, _ = run_release(frame=frame, bounds={"y": [-20, 40]})  # no bounds for the features
    assert not meta["ok"] and "declared bounds for every feature: none for 'a', 'b', 'c'" in meta["error"]
    meta, _ = run_release(frame=frame)  # control
    assert meta["ok"]


# -- the released noise has the documented scale (statistical, rejection level 1e-6) -------------------


@pytest.mark.slow  # a distribution test: many noisy fits
def test_released_moment_noise_is_gaussian_with_the_documented_sigma():
    measurement, sigma = dp_models.gaussian_mechanism(5.0, 0.4, 5e-8)
    draws = np.array([measurement([0.0] * 50) for _ in range(400)]).ravel()  # 20 000 draws
    assert st.kstest(draws / sigma, "norm").pvalue > REJECT


def test_released_metric_noise_is_laplace_with_the_documented_scale():
    measurement, scale = dp_models.laplace_mechanism(3.0, 0.5)
    draws = np.array([measurement([0.0] * 50) for _ in range(400)]).ravel()
    assert st.kstest(draws / scale, "laplace").pvalue > REJECT
    # control: the same draws are (far) off a Laplace of half the scale
    assert st.kstest(draws / (scale / 2), "laplace").pvalue < REJECT


def test_coefficients_vary_between_runs_as_the_noise_says():
    """The released model itself is random: two runs on the same data differ (no exact channel)."""
    frame = joined(2000)
    coefs = [model_of(run_release(frame=frame, dp={"epsilon": 0.2, "delta": 1e-7})[1]).coef_ for _ in range(2)]
    assert not np.allclose(coefs[0], coefs[1])


# -- utility ------------------------------------------------------------------------------------------------


def test_the_dp_model_is_close_to_the_truth_on_enough_units():
    meta, files = run_release(frame=joined(20_000), dp={"epsilon": 1.0, "delta": 1e-7})
    assert meta["ok"], meta
    model = model_of(files)
    assert np.allclose(model.coef_, [2.0, -1.0, 0.5], atol=0.3)
    report = json.loads(files["artifacts/metrics.json"])
    assert report["differential_privacy"] and report["bounds"]["a"] == [0.0, 10.0]
    assert "how many values were clipped is not released" in report["clipping"]
    assert 10_000 < report["n_train_noisy"] < 22_000
    assert report["metrics"]["r2"] > 0.5
    card = files["artifacts/model_card.md"].decode()
    assert "Bounds used (declared, never read from the data)" in card


def test_dp_refuses_models_it_cannot_fit_privately():
    meta, _ = run_release(
        spec={
            "estimator": "decision_tree_regressor",
            "params": {},
            "target": "y",
            "features": ["a", "b", "c"],
            "task": "regression",
        }
    )
    assert not meta["ok"] and "sample_and_aggregate" in meta["error"]


# -- helpers ------------------------------------------------------------------------------------------------


def joined(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 10, (n, 3))
    y = 5 + X @ [2.0, -1.0, 0.5] + rng.normal(0, 1, n)
    return pd.DataFrame({"_pid": np.arange(n), "a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "y": y})


BOUNDS = {"a": [0, 10], "b": [0, 10], "c": [0, 10], "y": [-20, 40]}
SPEC = {"estimator": "ridge", "params": {}, "target": "y", "features": ["a", "b", "c"], "task": "regression"}


def run_release(
    *, frame: pd.DataFrame | None = None, bounds: dict | None = None, spec: dict | None = None, dp: dict | None = None
) -> tuple[dict, dict]:
    frame = joined(3000) if frame is None else frame
    policy = {
        "k": 10,
        "outputs": ["aggregate", "model"],
        "estimators": ["ridge", "linear_regression", "decision_tree_regressor"],
        "allow_row_storing": False,
        "max_model_bytes": 1_000_000,
        "never_output": [],
        "join_only": [],
        "bounds": BOUNDS if bounds is None else bounds,
        "require_dp": True,
    }
    request = {
        "job_id": "job-dp",
        "policy": policy,
        "outputs": {"model": True, "metrics": True, "aggregates": False},
        "model_spec": spec or SPEC,
        "analysis_specs": [],
        "table_names": [],
        "dp": dp or {"epsilon": 1.0, "delta": 1e-7},
        "names": {"schemas": {"w": {c: [] for c in frame.columns}}, "job_strings": []},
    }
    return release.run(request, {release.FRAME: wire.frame_to_bytes(frame)})


def model_of(files: dict) -> object:
    blob = files["artifacts/model.skops"]
    return sio.loads(blob, trusted=sio.get_untrusted_types(data=blob))


def test_budget_object_refuses_overspending():
    budget = dp.Budget(1.0, 1e-7)
    budget.charge(0.6, 5e-8)
    with pytest.raises(dp.BudgetError):
        budget.charge(0.5)


@pytest.mark.slow  # a distribution test: many noisy fits
def test_the_released_unit_count_carries_gaussian_noise_of_the_documented_sigma():
    """End to end through `fit_ssp` (the code the release runs): the first moment is the unit count, so
    its released value minus the true count is the noise itself."""
    rng = np.random.default_rng(5)
    X, y = rng.uniform(0, 10, (200, 2)), rng.uniform(-20, 40, 200)
    bounds = np.array([[0.0, 10.0], [0.0, 10.0]])
    sigma = dp_plan.gaussian_scale(dp_plan.ssp_dimension(2), 0.5, 1e-7)
    noise = []
    for _ in range(1000):
        fit = dp_models.fit_ssp(X, y, bounds, (-20.0, 40.0), 0.5, 1e-7, dp.Budget(1.0, 1e-6))
        assert fit["sigma"] == sigma
        noise.append(fit["noisy_units"] - 200)
    assert st.kstest(np.array(noise) / sigma, "norm").pvalue > REJECT
    assert st.kstest(np.array(noise) / (2 * sigma), "norm").pvalue < REJECT  # control: another scale is rejected


@pytest.mark.parametrize("extreme", [1e12, -1e12])
def test_one_unit_with_extreme_rows_moves_a_dp_aggregate_by_at_most_its_sensitivity(extreme):
    """D against D minus one `_pid` with 50 rows of extreme values, at an epsilon so large that the
    noise is negligible: each group's count moves by at most 1 and its sum by at most max(|lo|, |hi|)."""
    from cleanroom.sandbox.release import aggregates

    rng = np.random.default_rng(4)
    n = 3000
    base = pd.DataFrame({"_pid": np.arange(n), "g": rng.choice(["a", "b"], n), "v": rng.uniform(0, 100, n)})
    target = pd.DataFrame({"_pid": np.zeros(50, dtype=int) + n, "g": ["a"] * 50, "v": [extreme] * 50})
    spec = aggregates.parse_spec(
        {"name": "t", "group_by": ["g"], "metrics": [{"agg": "count"}, {"agg": "sum", "column": "v"}]}, base, set()
    )
    bounds = {"v": (0.0, 100.0)}

    def release(frame: pd.DataFrame) -> pd.DataFrame:
        table = aggregates.compute_dp(frame, spec, 10, bounds, 1e6, 1e-7, dp.Budget(1e7, 1e-6))
        return table.set_index("g")

    with_unit, without = release(pd.concat([base, target], ignore_index=True)), release(base)
    assert abs(with_unit.loc["a", "count"] - without.loc["a", "count"]) <= 1 + 0.01
    assert abs(with_unit.loc["a", "sum_v"] - without.loc["a", "sum_v"]) <= 100 + 0.01
    assert abs(with_unit.loc["b", "sum_v"] - without.loc["b", "sum_v"]) <= 0.01  # other groups do not move
