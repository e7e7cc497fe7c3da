"""DP classifiers through diffprivlib (trusted, release phase): logistic regression, Gaussian naive
Bayes and random forests, each with pure epsilon. PRIVACY-DESIGN.md section 4.

Privacy unit: one `_pid`. As for the DP linear models (`dp_models`), each unit keeps one row chosen
at random, every feature is clipped to bounds declared by the owners' policy or the job spec (never
read from the data), and the classes are fixed before any data is read: the integers inside the
target's declared bounds (a 0/1 flag declared as bounds [0, 1] has classes 0 and 1). A target value
outside them is clipped to the nearest class.

Mechanisms (IBM's diffprivlib 0.6, a maintained implementation, with scikit-learn < 1.8):
- `logistic_regression`: objective perturbation (Chaudhuri, Monteleoni and Sarwate, JMLR 2011) on the
  features scaled to [-1, 1], so every row's norm is at most sqrt(features) (`data_norm`); the
  coefficients are mapped back to the original units (post-processing).
- `gaussian_nb`: noisy per-class means, variances and class counts (Vaidya et al. 2013), features
  clipped to their declared bounds.
- `random_forest_classifier`: trees with random splits drawn from the declared bounds, and leaf
  labels released with noisy counts (Fletcher and Islam 2017); `n_estimators` and `max_depth` are
  capped (`CAPS`), so the released shape is fixed by the spec.

diffprivlib draws its noise from the operating system's randomness (never a seed in production).
The fitted model is released as the plain scikit-learn estimator with the same fitted attributes,
so the recipient loads it with skops like any other model (`cleanroom.modelio`).

Holdout metrics: accuracy from two noisy counts over holdout units (one row each: the number of
units and the number classified correctly), Laplace on a vector with l1 sensitivity 2 through
OpenDP; holdout and training units are disjoint, so metrics and model compose in parallel.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from sklearn import ensemble, linear_model, naive_bayes, tree

from cleanroom.sandbox.release import dp
from cleanroom.sandbox.release.dp_plan import DP_CLASSIFIERS
from cleanroom.sandbox.release.models import ModelError

__all__ = ["CAPS", "DP_CLASSIFIERS", "classes_for", "fit_classifier", "holdout_accuracy"]

MAX_DP_CLASSES = 20
# the parameters an analyst may set, with their default and their cap
PARAMS: dict[str, dict[str, tuple[float, float]]] = {
    "logistic_regression": {"C": (1.0, 1e4), "max_iter": (100, 10_000)},
    "gaussian_nb": {},
    "random_forest_classifier": {"n_estimators": (10, 100), "max_depth": (5, 10)},
}
CAPS = {name: {key: cap for key, (_, cap) in params.items()} for name, params in PARAMS.items()}
ACCURACY_QUERIES = 2  # holdout units, correctly classified units


def classes_for(y_bounds: tuple[float, float]) -> np.ndarray:
    """The classes a DP classifier may predict: the integers inside the target's declared bounds."""
    lo, hi = math.ceil(y_bounds[0]), math.floor(y_bounds[1])
    if hi - lo + 1 < 2 or hi - lo + 1 > MAX_DP_CLASSES:
        raise ModelError(
            "model:classes",
            f"a DP classifier needs a target whose declared bounds hold 2 to "
            f"{MAX_DP_CLASSES} integer classes (e.g. bounds [0, 1] for a flag); these hold "
            f"{max(hi - lo + 1, 0)}",
        )
    return np.arange(lo, hi + 1, dtype="int64")


def params_for(name: str, given: dict[str, Any]) -> dict[str, Any]:
    allowed = PARAMS[name]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ModelError(
            "model:params",
            f"with differential privacy {name!r} takes only {sorted(allowed) or 'no parameters'}; not {unknown}",
        )
    out: dict[str, Any] = {}
    for key, (default, cap) in allowed.items():
        value = given.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= cap:
            raise ModelError("model:params", f"parameter {key!r} must be a number in (0, {cap:g}]")
        out[key] = type(default)(value)
    return out


def _scale(X: np.ndarray, x_bounds: np.ndarray) -> np.ndarray:
    lo, hi = x_bounds[:, 0], x_bounds[:, 1]
    scaled: np.ndarray = 2.0 * (np.clip(X, lo, hi) - lo) / (hi - lo) - 1.0
    return scaled


def _plain(fitted: Any, cls: type, params: dict[str, Any]) -> Any:
    """The scikit-learn estimator `cls(**params)` carrying `fitted`'s fitted attributes (`*_`)."""
    out = cls(**params)
    for key, value in vars(fitted).items():
        if key.endswith("_") and not key.startswith("_"):
            setattr(out, key, value)
    return out


def fit_classifier(
    name: str,
    X: np.ndarray,
    y: np.ndarray,
    x_bounds: np.ndarray,
    y_bounds: tuple[float, float],
    epsilon: float,
    budget: dp.Budget,
    given: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """Fit `name` with `epsilon` (charged to `budget`); the plain scikit-learn model and what was used."""
    from diffprivlib import models as dpl
    from diffprivlib.utils import PrivacyLeakWarning

    params = params_for(name, given)
    classes = classes_for(y_bounds)
    y = np.clip(np.rint(np.asarray(y, dtype="float64")), classes[0], classes[-1]).astype("int64")
    X = np.clip(np.asarray(X, dtype="float64"), x_bounds[:, 0], x_bounds[:, 1])
    budget.charge(epsilon, 0.0)
    bounds = (x_bounds[:, 0].tolist(), x_bounds[:, 1].tolist())
    facts: dict[str, Any] = {"epsilon": epsilon, "delta": 0.0, "classes": classes.tolist(), "params": params}
    with warnings.catch_warnings():
        # a warning that bounds or a norm came from the data would mean a leak: never let it pass
        warnings.simplefilter("error", PrivacyLeakWarning)
        # diffprivlib 0.6 passes L-BFGS-B options SciPy deprecates; harmless until SciPy 1.18
        warnings.filterwarnings(
            "ignore", message="scipy.optimize: The `disp` and `iprint` options", category=DeprecationWarning
        )
        if name == "logistic_regression":
            p = X.shape[1]
            model = dpl.LogisticRegression(
                epsilon=epsilon, data_norm=math.sqrt(p), C=params["C"], max_iter=params["max_iter"]
            )
            model.fit(_scale(X, x_bounds), y)
            # logit = w . xs + b with xs = a x + c: back to the original units
            a = 2.0 / (x_bounds[:, 1] - x_bounds[:, 0])
            c = -2.0 * x_bounds[:, 0] / (x_bounds[:, 1] - x_bounds[:, 0]) - 1.0
            plain = _plain(model, linear_model.LogisticRegression, {"C": params["C"], "max_iter": params["max_iter"]})
            plain.intercept_ = model.intercept_ + model.coef_ @ c
            plain.coef_ = model.coef_ * a
            facts.update(
                mechanism="objective perturbation (diffprivlib LogisticRegression)",
                data_norm=math.sqrt(p),
                scaling="features scaled to [-1, 1] within their bounds",
            )
        elif name == "gaussian_nb":
            model = dpl.GaussianNB(epsilon=epsilon, bounds=bounds, priors=None)
            model.fit(X, y)
            plain = _plain(model, naive_bayes.GaussianNB, {})
            facts.update(mechanism="noisy class means, variances and counts (diffprivlib GaussianNB)")
        else:
            model = dpl.RandomForestClassifier(
                n_estimators=params["n_estimators"],
                max_depth=params["max_depth"],
                epsilon=epsilon,
                bounds=bounds,
                classes=classes.tolist(),
            )
            model.fit(X, y)
            trees = [
                _plain(t, tree.DecisionTreeClassifier, {"max_depth": params["max_depth"]}) for t in model.estimators_
            ]
            plain = _plain(
                model,
                ensemble.RandomForestClassifier,
                {"n_estimators": params["n_estimators"], "max_depth": params["max_depth"]},
            )
            plain.estimators_ = trees
            plain.estimator_ = tree.DecisionTreeClassifier(max_depth=params["max_depth"])
            facts.update(mechanism="random trees with noisy leaf labels (diffprivlib RandomForestClassifier)")
    plain.classes_ = classes
    return plain, facts


def holdout_accuracy(y: np.ndarray, pred: np.ndarray, classes: np.ndarray, epsilon: float) -> dict[str, Any]:
    """Noisy [holdout units, correct] (one row per unit, l1 sensitivity 2) and the accuracy from them."""
    prelude = dp._opendp()
    y = np.clip(np.rint(np.asarray(y, dtype="float64")), classes[0], classes[-1])
    correct = float(np.sum(np.asarray(pred, dtype="float64") == y))
    space = prelude.vector_domain(prelude.atom_domain(T=float, nan=False)), prelude.l1_distance(T=float)
    scale = ACCURACY_QUERIES / epsilon
    measurement = space >> prelude.m.then_laplace(scale=scale)
    if measurement.map(float(ACCURACY_QUERIES)) > epsilon * (1 + 1e-9):
        raise dp.BudgetError("the metrics measurement would spend more than its part")
    noisy_n, noisy_correct = measurement([float(len(y)), correct])
    n = max(noisy_n, 1.0)
    accuracy = min(max(noisy_correct / n, 0.0), 1.0)
    return {
        "metrics": {"accuracy": float(f"{accuracy:.4g}")},
        "noisy_units": int(round(max(noisy_n, 0.0))),
        "noise_scale": {"count": scale, "correct": scale},
    }
