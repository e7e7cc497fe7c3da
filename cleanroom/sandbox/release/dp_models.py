"""DP linear and ridge regression by sufficient-statistics perturbation, and DP holdout metrics
(trusted, release phase). PRIVACY-DESIGN.md sections 4.1 and 7.

Privacy unit: one `_pid`. Contribution bounding before anything is computed: one row per unit,
chosen at random; every feature and the target clipped to bounds declared by the owners' policy or
the job spec (never read from the data); each then scaled to [-1, 1]. With z = [1, x, y], one unit
moves the moment matrix Z'Z by z z', whose Frobenius norm is |z|^2 <= d = p + 2, so the vector of
its upper triangle has l2 sensitivity d. Gaussian noise (OpenDP `make_gaussian`, zCDP converted
to (epsilon, delta)) on that vector is the only access to the training data; the coefficients are
a ridge solve on the noisy moments (post-processing).

The holdout is a per-unit coin flip with fresh randomness (not the spec's seed: a seeded split is a
function of the whole set of units). Metrics are noisy sums over holdout units (one row each) of
bounded quantities (residuals clipped to a fixed fraction of the target's declared range), released
with Laplace noise; MAE and RMSE are computed from them, R^2 with the target's variance from the
model's noisy moments. Model and metrics see disjoint units, so they compose in parallel.
Released: coefficients, noisy unit counts (rounded), metrics, the bounds used and the noise scales.
Never released: how many values were clipped (that count would be exact).
"""

from __future__ import annotations

import json
import math
import secrets
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio
from sklearn import linear_model

from cleanroom.sandbox.names import NameRule
from cleanroom.sandbox.release import dp, dp_classifiers, dp_plan
from cleanroom.sandbox.release.models import (
    ModelError,
    build_estimator,
    coefficient_table,
    linear_coefficients,
    select_features,
    unwrap,
)
from cleanroom.sandbox.vocabulary import PID


def one_row_per_unit(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Each unit keeps one of its rows, chosen at random independently of the other units."""
    order = rng.permutation(len(frame))
    return frame.iloc[order].drop_duplicates(PID, keep="first")


def scale_to_unit(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Clip to [lo, hi] and map affinely onto [-1, 1]."""
    scaled: np.ndarray = 2.0 * (np.clip(values, lo, hi) - lo) / (hi - lo) - 1.0
    return scaled


def moments(X: np.ndarray, y: np.ndarray, x_bounds: np.ndarray, y_bounds: tuple[float, float]) -> np.ndarray:
    """The upper triangle (row-major, diagonal included) of Z'Z with Z = [1, scaled x, scaled y]."""
    xs = scale_to_unit(np.asarray(X, dtype="float64"), x_bounds[:, 0], x_bounds[:, 1])
    ys = scale_to_unit(np.asarray(y, dtype="float64"), np.array(y_bounds[0]), np.array(y_bounds[1]))
    Z = np.column_stack([np.ones(len(ys)), xs, ys])
    upper: np.ndarray = (Z.T @ Z)[np.triu_indices(Z.shape[1])]
    return upper


def gaussian_mechanism(sensitivity: float, epsilon: float, delta: float) -> tuple[Any, float]:
    """The OpenDP Gaussian measurement on float vectors (l2), with its sigma from `dp_plan`."""
    prelude = dp._opendp()
    sigma = dp_plan.gaussian_scale(sensitivity, epsilon, delta)
    space = prelude.vector_domain(prelude.atom_domain(T=float, nan=False)), prelude.l2_distance(T=float)
    return space >> prelude.m.then_gaussian(scale=sigma), sigma


def approx_dp(measurement: Any, delta: float) -> Any:
    """The same measurement with its zCDP loss read as (epsilon, delta)."""
    prelude = dp._opendp()
    return prelude.c.make_fix_delta(prelude.c.make_zCDP_to_approxDP(measurement), delta=delta)


def laplace_mechanism(sensitivity: float, epsilon: float) -> tuple[Any, float]:
    prelude = dp._opendp()
    scale = dp_plan.laplace_scale(sensitivity, epsilon)
    space = prelude.vector_domain(prelude.atom_domain(T=float, nan=False)), prelude.l1_distance(T=float)
    return space >> prelude.m.then_laplace(scale=scale), scale


def solve(noisy: np.ndarray, d: int, sigma: float) -> np.ndarray:
    """Ridge on the noisy moments: theta on the scaled [1, x] basis.

    Post-processing only: the noisy X'X is projected onto the positive semi-definite matrices (its
    negative eigenvalues, which noise makes likely along collinear directions such as one-hot sets
    against the intercept, set to 0), then lambda = sigma * sqrt(d) is added (Wang 2018's choice for
    SSP), so the solve never blows up along a direction the data does not determine."""
    G = np.zeros((d, d))
    G[np.triu_indices(d)] = noisy
    G = G + G.T - np.diag(np.diag(G))
    values, vectors = np.linalg.eigh(G[:-1, :-1])
    xx = (vectors * np.clip(values, 0.0, None)) @ vectors.T
    lam = max(sigma * math.sqrt(d), 1e-6)
    return np.linalg.solve(xx + lam * np.eye(d - 1), G[:-1, -1])


def to_original(theta: np.ndarray, x_bounds: np.ndarray, y_bounds: tuple[float, float]) -> tuple[np.ndarray, float]:
    """Coefficients and intercept in the original units of x and y."""
    a = 2.0 / (x_bounds[:, 1] - x_bounds[:, 0])
    b = -2.0 * x_bounds[:, 0] / (x_bounds[:, 1] - x_bounds[:, 0]) - 1.0
    c = 2.0 / (y_bounds[1] - y_bounds[0])
    e = -2.0 * y_bounds[0] / (y_bounds[1] - y_bounds[0]) - 1.0
    coef = theta[1:] * a / c
    intercept = (theta[0] + float(theta[1:] @ b) - e) / c
    return coef, float(intercept)


def fit_ssp(
    X: np.ndarray,
    y: np.ndarray,
    x_bounds: np.ndarray,
    y_bounds: tuple[float, float],
    epsilon: float,
    delta: float,
    budget: dp.Budget,
) -> dict[str, Any]:
    """Release the noisy moments (charged to `budget`) and solve; coefficients in original units."""
    d = dp_plan.ssp_dimension(X.shape[1])
    measurement, sigma = gaussian_mechanism(float(d), epsilon, delta)
    spent_eps, spent_delta = approx_dp(measurement, delta).map(float(d))
    budget.charge(spent_eps, spent_delta)
    noisy = np.asarray(measurement(moments(X, y, x_bounds, y_bounds).tolist()), dtype="float64")
    theta = solve(noisy, d, sigma)
    coef, intercept = to_original(theta, x_bounds, y_bounds)
    # the target's variance from the same noisy moments (post-processing): [0, d-1] is sum y, last is sum y^2
    n = max(float(noisy[0]), 1.0)
    var_scaled = float(noisy[-1]) / n - (float(noisy[d - 1]) / n) ** 2
    y_variance = max(var_scaled, 0.0) * ((y_bounds[1] - y_bounds[0]) / 2) ** 2
    return {
        "coef": coef,
        "intercept": intercept,
        "sigma": sigma,
        "noisy_units": float(noisy[0]),
        "epsilon": spent_eps,
        "delta": spent_delta,
        "y_variance": y_variance,
    }


def holdout_sums(y: np.ndarray, pred: np.ndarray, y_bounds: tuple[float, float]) -> np.ndarray:
    """[count, sum |r|, sum r^2] over holdout rows (one per unit), y and the prediction clipped to the
    target's bounds and each residual r to +- `dp_plan.residual_clip`."""
    lo, hi = y_bounds
    clip = dp_plan.residual_clip(y_bounds)
    r = np.clip(np.clip(y, lo, hi) - np.clip(pred, lo, hi), -clip, clip)
    return np.array([len(r), np.abs(r).sum(), (r**2).sum()], dtype="float64")


def dp_metrics(
    y: np.ndarray, pred: np.ndarray, y_bounds: tuple[float, float], epsilon: float, y_variance: float
) -> dict[str, Any]:
    """Noisy holdout sums (each normalised by its sensitivity, so the vector has l1 sensitivity 3).

    Spends `epsilon` on holdout units only (see `dp_plan`: parallel with the model's training units);
    `y_variance` comes from the model's noisy moments (post-processing)."""
    sens = np.array(dp_plan.metric_sensitivities(y_bounds))
    measurement, scale = laplace_mechanism(float(dp_plan.METRIC_QUERIES), epsilon)
    if measurement.map(float(dp_plan.METRIC_QUERIES)) > epsilon * (1 + 1e-9):
        raise dp.BudgetError("the metrics measurement would spend more than its part")
    noisy = np.asarray(measurement((holdout_sums(y, pred, y_bounds) / sens).tolist())) * sens
    n = max(noisy[0], 1.0)
    mse = max(noisy[2], 0.0) / n
    clip = dp_plan.residual_clip(y_bounds)
    # R^2 is clamped to [-1, 1] (post-processing); None when the noisy variance of the target is not positive
    r2 = max(min(1 - mse / y_variance, 1.0), -1.0) if y_variance > 0 else math.nan
    return {
        "metrics": {
            "r2": _sig(r2),
            "mae": _sig(min(max(noisy[1], 0.0) / n, clip)),
            "rmse": _sig(min(math.sqrt(mse), clip)),
        },
        "noisy_units": int(round(max(noisy[0], 0.0))),
        "residual_clip": clip,
        "noise_scale": {
            k: float(scale * s) for k, s in zip(("count", "sum_abs_residual", "sum_sq_residual"), sens, strict=True)
        },
    }


def _sig(value: float) -> float | None:
    return float(f"{value:.4g}") if math.isfinite(value) else None


def bounds_for(columns: list[str], bounds: dict[str, tuple[float, float]], what: str) -> np.ndarray:
    missing = [c for c in columns if c not in bounds]
    if missing:
        raise ModelError(
            "model:bounds",
            f"DP needs declared bounds for every {what}: none for "
            f"{', '.join(repr(c) for c in missing[:10])}; declare them in the policy "
            "([columns.<name>] bounds) or the job spec ([outputs.bounds])",
        )
    return np.array([bounds[c] for c in columns], dtype="float64")


def fit_dp(
    frame: pd.DataFrame,
    spec: Any,
    *,
    allowed: list[str],
    forbidden: set[str],
    bounds: dict[str, tuple[float, float]],
    parts: dict[str, tuple[float, float]],
    budget: dp.Budget,
    holdout_fraction: float,
    job_id: str,
    checks: list[dict[str, Any]],
    names: NameRule,
    with_metrics: bool,
    rng: np.random.Generator | None = None,
) -> dict[str, bytes]:
    """The DP model release: model.skops, metrics.json and model_card.md."""
    spec = unwrap(spec)
    name = spec.get("estimator") if isinstance(spec, dict) else None
    if name not in dp_plan.DP_ESTIMATORS:
        raise ModelError(
            "model:estimator",
            f"with differential privacy the room fits only "
            f"{', '.join(dp_plan.DP_ESTIMATORS)}; for any other model, ask for "
            "[outputs.sample_and_aggregate] with a statistic plugin",
        )
    name, _, task = build_estimator(spec, k=2, allowed=allowed, allow_row_storing=False)
    classifier = name in dp_plan.DP_CLASSIFIERS
    how = "diffprivlib" if classifier else "SSP"
    checks.append({"name": "model:estimator", "passed": True, "detail": f"{name} fitted with DP ({how})"})
    features, target = select_features(frame, spec, forbidden)
    names.check(features, "feature", forbidden)
    names.check([target], "target", forbidden)
    x_bounds = bounds_for(features, bounds, "feature")
    y_bounds = tuple(bounds_for([target], bounds, "target")[0])
    checks.append(
        {
            "name": "model:bounds",
            "passed": True,
            "detail": f"{len(features)} features and the target clipped to declared bounds",
        }
    )
    rng = rng or np.random.default_rng(secrets.randbits(128))
    data = frame[[PID, *features, target]].apply(
        lambda col: col if col.name == PID else pd.to_numeric(col, errors="coerce").astype("float64")
    )
    # missing or non-finite values are imputed with the middle of the declared bounds (a constant)
    for column, (lo, hi) in zip([*features, target], [*x_bounds.tolist(), y_bounds], strict=True):
        values = data[column].to_numpy()
        data[column] = np.where(np.isfinite(values), values, (lo + hi) / 2)
    data = one_row_per_unit(data, rng)
    holdout = rng.random(len(data)) < holdout_fraction if with_metrics else np.zeros(len(data), dtype=bool)
    train, test = data[~holdout], data[holdout]
    e_model, d_model = parts["model"]
    if classifier:
        return _classifier_release(
            name,
            task,
            features,
            target,
            train,
            test,
            x_bounds,
            y_bounds,
            e_model,
            budget,
            spec,
            holdout_fraction,
            job_id,
            checks,
            with_metrics,
        )
    fit = fit_ssp(train[features].to_numpy(), train[target].to_numpy(), x_bounds, y_bounds, e_model, d_model, budget)
    estimator = (linear_model.Ridge if name == "ridge" else linear_model.LinearRegression)()
    estimator.fit(np.zeros((2, len(features))), np.zeros(2))  # only to set sklearn's fitted attributes
    estimator.coef_ = fit["coef"]
    estimator.intercept_ = fit["intercept"]
    estimator.feature_names_in_ = np.array(features, dtype=object)
    checks.append(
        {
            "name": "model:dp",
            "passed": True,
            "detail": f"moments released with Gaussian noise sigma {fit['sigma']:.4g} "
            f"(epsilon {fit['epsilon']:.4g}, delta {fit['delta']:.3g})",
        }
    )
    report: dict[str, Any] = {
        "job_id": job_id,
        "estimator": name,
        "task": task,
        "target": target,
        "features": features,
        "differential_privacy": True,
        "mechanism": "sufficient-statistics perturbation (Gaussian)",
        "epsilon": fit["epsilon"],
        "delta": fit["delta"],
        "noise_scale_moments": fit["sigma"],
        "bounds": {c: list(b) for c, b in zip(features, x_bounds.tolist(), strict=True)} | {target: list(y_bounds)},
        "clipping": "every feature and the target were clipped to these bounds; how many values were clipped "
        "is not released (that count would be exact)",
        "n_train_noisy": int(round(max(fit["noisy_units"], 0.0))),
        "holdout_fraction": holdout_fraction,
        "metrics": {},
        "coefficients": linear_coefficients(estimator, features),
    }
    if with_metrics:
        e_metrics = e_model  # on holdout units only: parallel with the training units (dp_plan)
        pred = estimator.predict(test[features]) if len(test) else np.zeros(0)
        released = dp_metrics(test[target].to_numpy(), pred, y_bounds, e_metrics, fit["y_variance"])
        report.update(
            metrics=released["metrics"],
            n_holdout_noisy=released["noisy_units"],
            metrics_epsilon=e_metrics,
            metrics_noise_scale=released["noise_scale"],
            residual_clip=released["residual_clip"],
        )
        checks.append(
            {
                "name": "metrics:dp",
                "passed": True,
                "detail": f"holdout sums released with Laplace noise (epsilon {e_metrics:.4g})",
            }
        )
    blob = sio.dumps(estimator)
    sio.loads(blob, trusted=sio.get_untrusted_types(data=blob))
    card = model_card(report)
    return {
        "model.skops": blob,
        "metrics.json": json.dumps(report, indent=2, sort_keys=True).encode(),
        "model_card.md": card.encode(),
    }


def _classifier_release(
    name: str,
    task: str,
    features: list[str],
    target: str,
    train: pd.DataFrame,
    test: pd.DataFrame,
    x_bounds: np.ndarray,
    y_bounds: tuple[float, float],
    epsilon: float,
    budget: dp.Budget,
    spec: dict[str, Any],
    holdout_fraction: float,
    job_id: str,
    checks: list[dict[str, Any]],
    with_metrics: bool,
) -> dict[str, bytes]:
    """A DP classifier (dp_classifiers) and its noisy holdout accuracy, released like the linear models."""
    given = spec.get("params") or {}
    estimator, facts = dp_classifiers.fit_classifier(
        name, train[features].to_numpy(), train[target].to_numpy(), x_bounds, y_bounds, epsilon, budget, dict(given)
    )
    estimator.feature_names_in_ = np.array(features, dtype=object)
    estimator.n_features_in_ = len(features)
    checks.append(
        {
            "name": "model:dp",
            "passed": True,
            "detail": f"{facts['mechanism']}, epsilon {epsilon:.4g}, classes fixed by the declared bounds",
        }
    )
    report: dict[str, Any] = {
        "job_id": job_id,
        "estimator": name,
        "task": task,
        "target": target,
        "features": features,
        "differential_privacy": True,
        "mechanism": facts["mechanism"],
        "epsilon": epsilon,
        "delta": 0.0,
        "classes": facts["classes"],
        "params": facts["params"],
        "bounds": {c: list(b) for c, b in zip(features, x_bounds.tolist(), strict=True)} | {target: list(y_bounds)},
        "clipping": "every feature was clipped to these bounds and the target to the nearest declared class; how "
        "many values were clipped is not released (that count would be exact)",
        "holdout_fraction": holdout_fraction,
        "metrics": {},
    }
    if name == "logistic_regression":
        report["coefficients"] = linear_coefficients(estimator, features)
    if with_metrics:
        pred = estimator.predict(test[features]) if len(test) else np.zeros(0)
        released = dp_classifiers.holdout_accuracy(test[target].to_numpy(), pred, np.array(facts["classes"]), epsilon)
        report.update(
            metrics=released["metrics"],
            n_holdout_noisy=released["noisy_units"],
            metrics_epsilon=epsilon,
            metrics_noise_scale=released["noise_scale"],
        )
        checks.append(
            {
                "name": "metrics:dp",
                "passed": True,
                "detail": f"holdout accuracy from two Laplace counts (epsilon {epsilon:.4g})",
            }
        )
    blob = sio.dumps(estimator)
    sio.loads(blob, trusted=sio.get_untrusted_types(data=blob))
    return {
        "model.skops": blob,
        "metrics.json": json.dumps(report, indent=2, sort_keys=True).encode(),
        "model_card.md": model_card(report).encode(),
    }


def model_card(report: dict[str, Any]) -> str:
    lines = [
        f"# Model card: {report['estimator']} (differentially private)",
        "",
        f"- job: `{report['job_id']}`",
        f"- task: {report['task']}",
        f"- target: `{report['target']}`",
        f"- mechanism: {report['mechanism']}, epsilon {report['epsilon']:.4g}, delta {report['delta']:.3g}",
    ]
    if "noise_scale_moments" in report:
        lines.append(f"- noise scale on the scaled moments: {report['noise_scale_moments']:.4g}")
    if "n_train_noisy" in report:
        lines.append(f"- training units (noisy): {report['n_train_noisy']}")
    if "classes" in report:
        lines.append(f"- classes (fixed by the target's declared bounds): {report['classes']}")
    if report.get("params"):
        lines.append("- parameters: " + ", ".join(f"{k} = {v}" for k, v in sorted(report["params"].items())))
    lines += ["- format: skops (load with `cleanroom.modelio.load_model`)"]
    if report.get("coefficients"):
        lines += ["", "## Coefficients (original units)", "", *coefficient_table(report["coefficients"])]
    lines += [
        "",
        "## Bounds used (declared, never read from the data)",
        "",
        "| column | lo | hi |",
        "| --- | --- | --- |",
    ]
    lines += [f"| `{c}` | {lo:g} | {hi:g} |" for c, (lo, hi) in report["bounds"].items()]
    lines += ["", report["clipping"] + "."]
    if report["metrics"]:
        clip = f"; residuals clipped to +-{report['residual_clip']:g}" if "residual_clip" in report else ""
        lines += ["", f"## Holdout metrics (noisy, epsilon {report['metrics_epsilon']:.4g} on holdout units{clip})", ""]
        lines += [f"- {key}: {value}" for key, value in report["metrics"].items()]
    return "\n".join(lines) + "\n"
