"""Differential-privacy noise for released aggregates, built on OpenDP (trusted, release phase).

What is protected: the presence or absence of one privacy unit (one `_pid`, with all of its rows)
in the joined frame. Two frames are neighbours when one has every row of one extra `_pid`.

Unit and contribution bounding (done by `aggregates.py` before anything here is called): rows with
a missing value in the columns a query uses are dropped, then ONE row per `_pid` is kept, chosen at
random (`MAX_GROUPS_PER_UNIT = 1`). So a unit touches at most one group, with one row:

- the vector of per-group counts changes by at most 1 in at most one group (l0 = l1 = linf = 1);
- the vector of per-group sums of a column clamped to the policy `bounds` [lo, hi] changes by at
  most max(|lo|, |hi|) in one group (l1 sensitivity). No bounds for a column: no DP sum or mean.

Mechanisms: the group keys come from the data, so groups are selected with OpenDP's Laplace
threshold mechanism (`make_laplace_threshold`, propose-test-release over a map of counts; it costs
(epsilon, delta)): a group is released only when its noisy count reaches max(k, t_delta), where
t_delta is the smallest threshold that keeps delta within budget. Sums of released groups get
Laplace noise (`make_laplace` on a vector). Means are noisy sum / noisy count, clamped to the bounds
(post-processing, free). Counts and sums of one aggregate are released together, so nothing
about a suppressed group can be subtracted back.

Accounting: basic sequential composition. The job's epsilon is split evenly over every query:
one count query per aggregate spec plus one sum query per distinct summed column of the spec.
Delta is split evenly over the aggregate specs (only the threshold step spends delta). The spent
values are what OpenDP's privacy maps report, summed; they never exceed the budget asked.

Limits: per-group sums are computed with floating point in pandas, outside OpenDP, so the known
floating-point sum attacks on tiny budgets are not addressed; counts are exact integers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from typing import Any


@cache
def _opendp() -> Any:
    """OpenDP, imported on first use: it takes about a second, and most jobs use no DP."""
    import opendp.prelude as prelude

    prelude.enable_features("contrib")
    return prelude


DEFAULT_DELTA = 1e-6
MAX_GROUPS_PER_UNIT = 1


class BudgetError(Exception):
    """A query would spend more than the budget left."""


@dataclass
class Budget:
    """What a job may spend (epsilon, delta) and what it has spent so far."""

    epsilon: float
    delta: float
    epsilon_spent: float = 0.0
    delta_spent: float = 0.0

    def charge(self, epsilon: float, delta: float = 0.0) -> None:
        # a tiny slack absorbs the rounding of the even split; OpenDP never overshoots a query
        if self.epsilon_spent + epsilon > self.epsilon * (1 + 1e-9) or self.delta_spent + delta > self.delta * (
            1 + 1e-9
        ):
            raise BudgetError("the DP budget is exhausted")
        self.epsilon_spent += epsilon
        self.delta_spent += delta


def key_of(values: tuple[Any, ...]) -> str:
    """A canonical label for a group: a function of the group's values only (needed for privacy)."""
    return json.dumps([_plain(v) for v in values], sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _count_space() -> tuple[Any, Any]:
    dp = _opendp()
    return (
        dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T=int)),
        dp.l01inf_distance(dp.absolute_distance(T=int)),
    )


def count_mechanism(epsilon: float, delta: float, min_threshold: int) -> Any:
    """The Laplace threshold measurement for per-group unit counts within (epsilon, delta)."""
    dp = _opendp()
    if epsilon <= 0 or not 0 < delta < 1:
        raise ValueError("epsilon must be > 0 and delta in (0, 1)")
    domain, metric = _count_space()
    d_in = (MAX_GROUPS_PER_UNIT, MAX_GROUPS_PER_UNIT, 1)

    def with_scale(scale: float) -> Any:
        return dp.m.make_laplace(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale)

    scale = dp.binary_search_param(with_scale, d_in=MAX_GROUPS_PER_UNIT, d_out=epsilon)

    def with_threshold(threshold: float) -> Any:
        return dp.m.make_laplace_threshold(domain, metric, scale=scale, threshold=int(threshold))

    if with_threshold(min_threshold).check(d_in, (epsilon, delta)):
        return with_threshold(min_threshold)
    upper = min_threshold + 2 * math.ceil(scale * math.log(1 / delta)) + 16
    threshold = dp.binary_search_param(
        with_threshold, d_in=d_in, d_out=(epsilon, delta), bounds=(min_threshold, upper), T=int
    )
    return with_threshold(threshold)


def noisy_counts(
    counts: dict[str, int], epsilon: float, delta: float, min_threshold: int, budget: Budget
) -> dict[str, int]:
    """Release the groups whose noisy unit count reaches the threshold, with their noisy counts."""
    measurement = count_mechanism(epsilon, delta, min_threshold)
    spent_eps, spent_delta = measurement.map((MAX_GROUPS_PER_UNIT, MAX_GROUPS_PER_UNIT, 1))
    budget.charge(spent_eps, spent_delta)
    released = measurement({str(k): int(v) for k, v in counts.items()})
    return {k: int(v) for k, v in released.items() if v >= min_threshold}


def sum_mechanism(sensitivity: float, epsilon: float) -> Any:
    """The Laplace measurement for a vector of per-group sums with the given l1 sensitivity."""
    dp = _opendp()
    if epsilon <= 0 or not math.isfinite(sensitivity):
        raise ValueError("epsilon must be > 0 and the sensitivity finite")
    sensitivity = max(float(sensitivity), 1e-12)

    def with_scale(scale: float) -> Any:
        return dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float), scale)

    return with_scale(dp.binary_search_param(with_scale, d_in=sensitivity, d_out=epsilon))


def noisy_sums(sums: list[float], sensitivity: float, epsilon: float, budget: Budget) -> list[float]:
    """Add Laplace noise to per-group sums whose l1 sensitivity is `sensitivity`."""
    measurement = sum_mechanism(sensitivity, epsilon)
    budget.charge(measurement.map(max(float(sensitivity), 1e-12)))
    if not sums:
        return []
    return [float(v) for v in measurement([float(v) for v in sums])]
