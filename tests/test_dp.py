"""The OpenDP mechanisms behind DP aggregates: thresholds, noise and exact accounting."""

from __future__ import annotations

import math

import pytest

from cleanroom.sandbox.release import dp


def test_count_mechanism_threshold_is_at_least_k_and_within_budget() -> None:
    measurement = dp.count_mechanism(epsilon=0.5, delta=1e-6, min_threshold=10)
    eps, delta = measurement.map((1, 1, 1))
    assert eps <= 0.5 and delta <= 1e-6
    # a group of one unit is (almost) never released; a big group always is
    released = [measurement({'["a"]': 1, '["b"]': 10_000}) for _ in range(200)]
    assert all('["a"]' not in r for r in released)
    assert all('["b"]' in r for r in released)


def test_threshold_grows_when_k_alone_does_not_bound_delta() -> None:
    small = dp.count_mechanism(epsilon=0.1, delta=1e-6, min_threshold=2)
    # the threshold step must be far above k=2 for delta=1e-6 at scale 10
    assert small({'["x"]': 60}) == {}
    _, delta = small.map((1, 1, 1))
    assert delta <= 1e-6


def test_noisy_counts_spend_exactly_what_they_ask() -> None:
    budget = dp.Budget(epsilon=1.0, delta=1e-6)
    out = dp.noisy_counts({'["a"]': 5000, '["b"]': 3}, 0.25, 5e-7, 10, budget)
    assert set(out) == {'["a"]'}
    assert abs(out['["a"]'] - 5000) < 200  # scale 4: noisy, yet close
    assert budget.epsilon_spent == pytest.approx(0.25, rel=1e-9)
    assert 0 < budget.delta_spent <= 5e-7


def test_noisy_sums_add_noise_and_spend_epsilon() -> None:
    budget = dp.Budget(epsilon=1.0, delta=1e-6)
    exact = [1000.0, 2000.0, 3000.0]
    noisy = dp.noisy_sums(exact, sensitivity=100.0, epsilon=0.5, budget=budget)
    assert len(noisy) == 3 and noisy != exact
    assert all(math.isfinite(v) for v in noisy)
    assert budget.epsilon_spent == pytest.approx(0.5, rel=1e-9)
    # the scale is sensitivity / epsilon = 200: errors of thousands would mean a wrong scale
    assert all(abs(a - b) < 200 * 20 for a, b in zip(noisy, exact, strict=True))


def test_empty_sum_query_still_counts_against_the_budget() -> None:
    budget = dp.Budget(epsilon=1.0, delta=1e-6)
    assert dp.noisy_sums([], sensitivity=5.0, epsilon=0.4, budget=budget) == []
    assert budget.epsilon_spent == pytest.approx(0.4, rel=1e-9)


def test_budget_refuses_overspending() -> None:
    budget = dp.Budget(epsilon=0.5, delta=1e-6)
    budget.charge(0.5)
    with pytest.raises(dp.BudgetError):
        budget.charge(0.01)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        dp.count_mechanism(epsilon=0.0, delta=1e-6, min_threshold=10)
    with pytest.raises(ValueError):
        dp.count_mechanism(epsilon=1.0, delta=0.0, min_threshold=10)
    with pytest.raises(ValueError):
        dp.sum_mechanism(sensitivity=math.inf, epsilon=1.0)


def test_group_keys_depend_on_values_only() -> None:
    import numpy as np

    assert dp.key_of(("north", np.int64(3))) == dp.key_of(("north", 3)) == '["north", 3]'
    assert dp.key_of((True,)) != dp.key_of((1.5,))
