"""The privacy plan of a job: how its (epsilon, delta) is split over what it releases, and the noise
each released number gets. Pure arithmetic on public values (the spec and the policy), so the API
shows it before a job runs (`cleanroom job cost`) and the release phase spends exactly this.

Split (PRIVACY-DESIGN.md section 10): aggregates 0.5, the model and its holdout metrics 0.5 of the
job's epsilon and delta; a part the job does not ask for gives its share to the other. The holdout
is a per-unit coin flip with fresh randomness, so a unit is in the training set or in the holdout,
never both: the model (fitted on training units) and the metrics (computed on holdout units) each
spend the model part's epsilon, and together they spend it once (parallel composition: for
neighbouring data the differing unit changes one of the two, and the other is post-processing).
Between parts composition is basic (their epsilons and deltas add up).

Closed forms (used by the tests and the dry run; OpenDP's privacy maps are checked against them):
- Laplace on a vector with l1 sensitivity s at epsilon e: scale b = s / e; 95 % of draws within
  b * ln(1 / 0.05) of the true value.
- Gaussian with l2 sensitivity s at (e, d): rho from e = rho + 2 sqrt(rho ln(1/d)) (Bun & Steinke
  2016, Prop. 1.3), i.e. sqrt(rho) = sqrt(ln(1/d) + e) - sqrt(ln(1/d)); sigma = s / sqrt(2 rho);
  95 % of draws within 1.96 sigma. OpenDP's zCDP-to-approxDP conversion is tighter, so the
  measurement built with this sigma spends at most (e, d).
"""

from __future__ import annotations

import math
from typing import Any

SHARES = {"aggregates": 0.5, "model": 0.5}
DP_REGRESSORS = ("linear_regression", "ridge")  # sufficient-statistics perturbation (dp_models)
DP_CLASSIFIERS = ("logistic_regression", "gaussian_nb", "random_forest_classifier")  # diffprivlib (dp_classifiers)
DP_ESTIMATORS = DP_REGRESSORS + DP_CLASSIFIERS
CLASSIFIER_MECHANISMS = {
    "logistic_regression": "objective perturbation on the features scaled into their bounds",
    "gaussian_nb": "noisy per-class means, variances and counts",
    "random_forest_classifier": "random trees with noisy leaf labels",
}
METRIC_QUERIES = 3  # holdout count, sum |r|, sum r^2 (r clipped to +-RESIDUAL_FRACTION of the target range)
RESIDUAL_FRACTION = 0.1
Z95 = 1.959963984540054


def split(
    epsilon: float, delta: float, *, aggregates: bool, model: bool, metrics: bool
) -> dict[str, tuple[float, float]]:
    """(epsilon, delta) of each part the job releases; the parts add up to the job's budget."""
    wanted = {"aggregates": aggregates, "model": model or metrics}
    shares = {part: share for part, share in SHARES.items() if wanted[part]}
    total = sum(shares.values())
    return {part: (epsilon * share / total, delta * share / total) for part, share in shares.items()}


def laplace_scale(sensitivity: float, epsilon: float) -> float:
    return float(sensitivity) / float(epsilon)


def laplace_interval(scale: float, alpha: float = 0.05) -> float:
    """Half-width of the (1 - alpha) interval of Laplace noise with this scale."""
    return float(scale) * math.log(1 / alpha)


def rho_for(epsilon: float, delta: float) -> float:
    """The zCDP rho that converts to at most (epsilon, delta)."""
    log_term = math.log(1 / delta)
    return (math.sqrt(log_term + epsilon) - math.sqrt(log_term)) ** 2


def gaussian_scale(sensitivity: float, epsilon: float, delta: float) -> float:
    return float(sensitivity) / math.sqrt(2 * rho_for(epsilon, delta))


def ssp_dimension(features: int) -> int:
    """Length of z = [1, x_1..x_p, y]: one unit (one row) moves the moments Z'Z by at most this in
    Frobenius norm once every coordinate is scaled into [-1, 1]."""
    return features + 2


def ssp_entries(features: int) -> int:
    d = ssp_dimension(features)
    return d * (d + 1) // 2


def residual_clip(y_bounds: tuple[float, float]) -> float:
    """Residuals are clipped to +- this (a fixed fraction of the declared target range, never data)."""
    return RESIDUAL_FRACTION * (float(y_bounds[1]) - float(y_bounds[0]))


def metric_sensitivities(y_bounds: tuple[float, float]) -> list[float]:
    """l1 sensitivity of each holdout sum (one row per unit): count, sum |r|, sum r^2."""
    clip = residual_clip(y_bounds)
    return [1.0, clip, clip**2]


def sample_aggregate_scale(lo: float, hi: float, outputs: int, blocks: int, epsilon: float) -> float:
    """Laplace scale of one coordinate of a sample-and-aggregate mean (cleanroom.runner.blocks): each of the
    k outputs gets epsilon / k, and one unit moves one of the m clipped block values, so the mean by at most
    (hi - lo) / m; scale k (hi - lo) / (m epsilon). Per-coordinate shares keep every output's error relative
    to its own range (one Laplace vector over the raw l1 sensitivity sum(hi - lo) / m would give a narrow
    output the noise of the widest)."""
    return laplace_scale(outputs * (float(hi) - float(lo)) / blocks, epsilon)


def describe_sample_aggregate(epsilon: float, sa: dict[str, Any]) -> dict[str, Any]:
    """The sample-and-aggregate part: the job's whole epsilon, the noise of each declared output."""
    k, m, how = len(sa["outputs"]), int(sa["blocks"]), sa.get("aggregate", "mean")
    entry: dict[str, Any] = {
        "epsilon": epsilon,
        "delta": 0.0,
        "blocks": m,
        "aggregate": how,
        "block_seconds": sa.get("block_seconds"),
        "mechanism": (
            "Laplace on the mean of the clipped block outputs"
            if how == "mean"
            else "DP median (exponential mechanism) of the clipped block outputs"
        ),
        "per_output_epsilon": epsilon / k,
        "outputs": {},
    }
    for o in sa["outputs"]:
        if how == "mean":
            scale = sample_aggregate_scale(o["lo"], o["hi"], k, m, epsilon)
            entry["outputs"][o["name"]] = {
                "range": [o["lo"], o["hi"]],
                "noise_scale": scale,
                "interval_95": laplace_interval(scale),
            }
        else:
            entry["outputs"][o["name"]] = {"range": [o["lo"], o["hi"]]}
    return entry


def describe(
    epsilon: float,
    delta: float,
    *,
    aggregates: bool,
    model: bool,
    metrics: bool,
    features: int | None = None,
    y_bounds: tuple[float, float] | None = None,
    tables: int = 0,
    sample_aggregate: dict[str, Any] | None = None,
    estimator: str | None = None,
) -> dict[str, Any]:
    """The plan in words and numbers: per part its budget, mechanism, noise scale and 95 % interval."""
    parts = split(epsilon, delta, aggregates=aggregates, model=model, metrics=metrics)
    out: dict[str, Any] = {"epsilon": epsilon, "delta": delta, "parts": {}}
    if sample_aggregate is not None:  # the job's only output (cleanroom.jobspec)
        out["parts"]["sample_and_aggregate"] = describe_sample_aggregate(epsilon, sample_aggregate)
    if "aggregates" in parts:
        e, d = parts["aggregates"]
        per_table = e / max(tables, 1)
        out["parts"]["aggregates"] = {
            "epsilon": e,
            "delta": d,
            "mechanism": "Laplace (counts with a noisy threshold, sums of clipped values)",
            "tables": tables,
            "per_table_epsilon": per_table,
            "note": "the aggregates' epsilon is split evenly over every query of every table (one count per "
            "table and one sum per summed column): with q queries in all, a count gets Laplace scale "
            "q / epsilon and a sum of a column with bounds [lo, hi] that times max(|lo|, |hi|); "
            "per_table_epsilon is exact when the tables have the same number of queries",
        }
    classifier = estimator in DP_CLASSIFIERS
    if "model" in parts and (model or metrics) and classifier:
        e, _ = parts["model"]
        out["parts"]["model"] = {
            "epsilon": e,
            "delta": 0.0,
            "estimator": estimator,
            "mechanism": CLASSIFIER_MECHANISMS[str(estimator)] + " (diffprivlib), pure epsilon",
            "note": "classes are the integers inside the target's declared bounds; features are clipped to "
            "their declared bounds; the noise is internal to the fit, so its effect shows in the "
            "noisy holdout accuracy",
        }
    if "model" in parts and (model or metrics) and not classifier:
        e, d = parts["model"]
        entry: dict[str, Any] = {
            "epsilon": e,
            "delta": d,
            "mechanism": "sufficient-statistics perturbation "
            "(Gaussian noise on the moments of [1, x, y] scaled to [-1, 1])",
            "estimators": list(DP_ESTIMATORS),
        }
        if features:
            dim = ssp_dimension(features)
            sigma = gaussian_scale(dim, e, d)
            entry.update(
                features=features,
                released_moments=ssp_entries(features),
                sensitivity_l2=dim,
                noise_scale=sigma,
                interval_95=Z95 * sigma,
                unit="per moment of the scaled data (each coordinate in [-1, 1])",
            )
        out["parts"]["model"] = entry
    if metrics and "model" in parts and classifier:
        e, _ = parts["model"]
        scale = laplace_scale(2.0, e)
        out["parts"]["metrics"] = {
            "epsilon": e,
            "delta": 0.0,
            "composition": "parallel with the model (disjoint holdout units)",
            "mechanism": "Laplace on 2 holdout counts (units, correctly classified); accuracy is their ratio",
            "noise_scale": {"count": scale, "correct": scale},
            "interval_95": {"count": laplace_interval(scale), "correct": laplace_interval(scale)},
        }
    if metrics and "model" in parts and not classifier:
        e, d = parts["model"]
        entry = {
            "epsilon": e,
            "delta": 0.0,
            "composition": "parallel with the model (disjoint holdout units)",
            "mechanism": f"Laplace on {METRIC_QUERIES} holdout sums (count, |residual|, residual^2)",
        }
        if y_bounds:
            sens = metric_sensitivities(y_bounds)
            scales = [laplace_scale(s * METRIC_QUERIES, e) for s in sens]
            entry["residual_clip"] = residual_clip(y_bounds)
            entry["noise_scale"] = dict(zip(("count", "sum_abs_residual", "sum_sq_residual"), scales, strict=True))
            entry["interval_95"] = {k: laplace_interval(v) for k, v in entry["noise_scale"].items()}
        out["parts"]["metrics"] = entry
    return out
