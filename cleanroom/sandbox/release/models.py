"""Models fitted, evaluated and checked by the trusted release phase.

A model spec (from a model plugin, so untrusted) names an allow-listed estimator and its
hyper-parameters: `{"estimator": "ridge", "params": {"alpha": 1.0}, "target": "spend",
"features": ["age", ...] | null, "task": "regression" | "classification"}`.

Rules: the estimator must be in `ESTIMATORS` and in the policy's `estimators`; params must be
known params of that class with JSON scalar values (no objects, callables, lists or dicts;
`n_jobs` 1 or None, no `warm_start`, `verbose`, `oob_score`); tree families get
`min_samples_leaf >= k` (set to k when absent); row-storing families (k-neighbours, SVMs, Gaussian
processes) need `allow_row_storing`. Features are the spec's list or every numeric column except
`_pid`, reserved `_` columns, the target and forbidden columns. Columns the policy marks
never_output or join_only are never features nor the target (an explicit request is refused).
Training and holdout are split by `_pid`, so no unit is in both. After fitting: every tree leaf
holds at least k distinct units, no array of the model holds a training row verbatim or one value
per training row, the skops dump holds only trusted types and fits `max_model_bytes`.

Linear families (no leaves to count) get the same guarantee through leverage: with n training
units and p features, n >= k * p, and no training unit's own rows carry more than 1/k of the weight
of their own fitted values (the diagonal of the hat matrix of the features plus an intercept,
summed over the unit's rows; for a tree leaf holding m units that is 1/m, so this is the leaf rule
again). A feature that singles out fewer than k people (a per-person indicator, even a noisy one)
gives those people a leverage near 1 and is refused. The least-squares hat matrix is used for every
linear family: ridge and lasso shrink leverage below it, so the check is conservative for them; for
logistic regression it is an approximation. Feature names and the target must pass the released-name
rule (`cleanroom.sandbox.names`).
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio
from sklearn import ensemble, gaussian_process, linear_model, metrics, naive_bayes, neighbors, svm, tree
from sklearn.model_selection import GroupShuffleSplit

from cleanroom.sandbox.names import NameRule
from cleanroom.sandbox.vocabulary import (
    DP_ONLY_ESTIMATORS,
    LINEAR_ESTIMATORS,
    PID,
    ROW_STORING_ESTIMATORS,
    ROW_STORING_SKOPS_TYPES,
    TRUSTED_SKOPS_TYPES,
)

ESTIMATORS: dict[str, type] = {
    "linear_regression": linear_model.LinearRegression,
    "ridge": linear_model.Ridge,
    "lasso": linear_model.Lasso,
    "logistic_regression": linear_model.LogisticRegression,
    "gradient_boosting_regressor": ensemble.GradientBoostingRegressor,
    "gradient_boosting_classifier": ensemble.GradientBoostingClassifier,
    "random_forest_regressor": ensemble.RandomForestRegressor,
    "random_forest_classifier": ensemble.RandomForestClassifier,
    "decision_tree_regressor": tree.DecisionTreeRegressor,
    "decision_tree_classifier": tree.DecisionTreeClassifier,
    "gaussian_nb": naive_bayes.GaussianNB,
    "k_neighbors_regressor": neighbors.KNeighborsRegressor,
    "k_neighbors_classifier": neighbors.KNeighborsClassifier,
    "svr": svm.SVR,
    "svc": svm.SVC,
    "gaussian_process_regressor": gaussian_process.GaussianProcessRegressor,
    "gaussian_process_classifier": gaussian_process.GaussianProcessClassifier,
}
ROW_STORING = frozenset(ROW_STORING_ESTIMATORS)
# fitted only with differential privacy (dp_classifiers): exact, its fitted class counts, means and
# variances would be group statistics released with no minimum group size
DP_ONLY = frozenset(DP_ONLY_ESTIMATORS)
LINEAR_FAMILY = frozenset(LINEAR_ESTIMATORS)
TREE_FAMILY = frozenset(name for name in ESTIMATORS if "tree" in name or "forest" in name or "boosting" in name)
FIXED_PARAMS = {"n_jobs": (None, 1), "warm_start": (False,), "verbose": (0, False), "oob_score": (False,)}
CAPS = {"n_estimators": 1000, "max_iter": 100_000}
MAX_FEATURES = 1000
MAX_CLASSES = 100
SPEC_KEYS = {"estimator", "params", "target", "features", "task"}


class ModelError(Exception):
    """A model check failed; `check` names it, the message never holds data values."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


def _passed(checks: list[dict[str, Any]], name: str, detail: str) -> None:
    checks.append({"name": name, "passed": True, "detail": detail})


def unwrap(spec: Any) -> Any:
    if isinstance(spec, dict) and set(spec) == {"plugin_id", "spec"}:
        return spec["spec"]
    return spec


def build_estimator(spec: Any, *, k: int, allowed: list[str], allow_row_storing: bool) -> tuple[str, Any, str]:
    """Validate the spec's estimator and params; return (name, unfitted estimator, task)."""
    spec = unwrap(spec)
    if not isinstance(spec, dict) or set(spec) - SPEC_KEYS:
        raise ModelError("model:spec", f"a model spec is an object with keys {sorted(SPEC_KEYS)}")
    name = spec.get("estimator")
    if not isinstance(name, str) or name not in ESTIMATORS:
        raise ModelError("model:estimator", f"unknown estimator (allowed: {', '.join(sorted(ESTIMATORS))})")
    if name not in allowed:
        raise ModelError("model:estimator", f"estimator {name!r} is not allowed by the policy")
    if name in ROW_STORING and not allow_row_storing:
        raise ModelError("model:estimator", f"{name!r} stores training rows; the policy does not allow it")
    cls = ESTIMATORS[name]
    classifiers = ("logistic_regression", "svc", "gaussian_nb")
    task = "classification" if name.endswith("classifier") or name in classifiers else "regression"
    if spec.get("task", task) != task:
        raise ModelError("model:spec", f"{name!r} is a {task} estimator")
    params = spec.get("params") or {}
    if not isinstance(params, dict):
        raise ModelError("model:params", "params must be an object")
    known = cls().get_params(deep=False)
    for key, value in params.items():
        if key not in known:
            raise ModelError("model:params", f"{name!r} has no parameter {key!r}")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise ModelError("model:params", f"parameter {key!r} must be a JSON scalar")
        if isinstance(value, float) and not math.isfinite(value):
            raise ModelError("model:params", f"parameter {key!r} must be finite")
        if key in FIXED_PARAMS and not any(
            value is v or (type(value) is type(v) and value == v) for v in FIXED_PARAMS[key]
        ):
            raise ModelError("model:params", f"parameter {key!r} must be one of {FIXED_PARAMS[key]}")
        if key in CAPS and isinstance(value, int) and value > CAPS[key]:
            raise ModelError("model:params", f"parameter {key!r} is capped at {CAPS[key]}")
    params = dict(params)
    if name in TREE_FAMILY:
        leaf = params.setdefault("min_samples_leaf", k)
        if isinstance(leaf, bool) or not isinstance(leaf, int):
            raise ModelError("model:min_samples_leaf", "min_samples_leaf must be an integer")
        if leaf < k:
            raise ModelError("model:min_samples_leaf", f"min_samples_leaf must be at least k={k}")
    estimator = cls(**params)
    try:
        estimator._validate_params()
    except AttributeError:
        pass
    except (ValueError, TypeError) as exc:
        raise ModelError("model:params", f"invalid parameters: {exc}") from None
    return name, estimator, task


def select_features(frame: pd.DataFrame, spec: dict[str, Any], forbidden: set[str]) -> tuple[list[str], str]:
    """The feature columns and the target, refusing reserved, forbidden and non-numeric columns."""
    target = spec.get("target")
    if not isinstance(target, str) or target not in frame.columns:
        raise ModelError("model:features", "the target column is missing from the frame")
    if target.startswith("_") or target in forbidden:
        raise ModelError("model:features", f"column {target!r} cannot be the target (reserved or forbidden)")
    features = spec.get("features")
    if features is None:
        features = [
            c
            for c in frame.columns
            if isinstance(c, str)
            and not c.startswith("_")
            and c != target
            and c not in forbidden
            and _numeric(frame[c])
        ]
    if not isinstance(features, list) or not 1 <= len(features) <= MAX_FEATURES:
        raise ModelError("model:features", f"features must be a list of 1 to {MAX_FEATURES} columns")
    if len(set(map(str, features))) != len(features):
        raise ModelError("model:features", "features repeat a column")
    for column in features:
        if not isinstance(column, str) or column not in frame.columns:
            raise ModelError("model:features", f"feature {column!r} is not in the frame")
        if column.startswith("_") or column in forbidden or column == target:
            raise ModelError(
                "model:features",
                f"column {column!r} cannot be a feature (reserved, forbidden by the policy, or the target)",
            )
        if not _numeric(frame[column]):
            raise ModelError(
                "model:features", f"feature {column!r} is not numeric; one-hot encode it in a features step first"
            )
    return features, target


def _numeric(series: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series))


def iter_arrays(obj: Any, path: str = "model", seen: dict[int, Any] | None = None, depth: int = 0) -> Any:
    """Yield (path, array) for every numeric numpy array reachable from a fitted estimator."""
    seen = {} if seen is None else seen
    if depth > 16 or id(obj) in seen or obj is None or isinstance(obj, str | bytes | int | float | bool):
        return
    seen[id(obj)] = obj  # holding a reference keeps temporary states from recycling their id
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            for i, item in enumerate(obj.ravel()):
                yield from iter_arrays(item, f"{path}[{i}]", seen, depth + 1)
        elif obj.dtype.names:
            for field in obj.dtype.names:
                yield f"{path}.{field}", np.asarray(obj[field])
        elif obj.dtype.kind in "biuf":
            yield path, obj
    elif isinstance(obj, list | tuple):
        for i, item in enumerate(obj):
            yield from iter_arrays(item, f"{path}[{i}]", seen, depth + 1)
    elif isinstance(obj, dict):
        for key, item in obj.items():
            yield from iter_arrays(item, f"{path}.{key}", seen, depth + 1)
    elif type(obj).__module__.startswith("sklearn."):
        try:
            state = obj.__getstate__()
        except Exception:  # noqa: BLE001 - an object we cannot inspect is reported by the caller
            yield f"{path}(uninspectable)", np.empty(0)
            return
        yield from iter_arrays(state, path, seen, depth + 1)


def find_stored_rows(model: Any, X: np.ndarray) -> list[str]:
    """Paths of model arrays where a 1-D slice of length n_features equals a training row.

    Constant slices are ignored (a zero coefficient vector is not a stored row), so the check is
    moot for one feature.
    """
    X = np.asarray(X, dtype="float64") + 0.0
    n_features = X.shape[1]
    if n_features < 2:
        return []
    X = np.ascontiguousarray(X)
    rows: set[bytes] | None = None  # built only when a model has many candidate slices
    hits = []
    for path, array in iter_arrays(model):
        for axis, size in enumerate(array.shape):
            if size != n_features:
                continue
            slices = np.ascontiguousarray(np.moveaxis(array, axis, -1).reshape(-1, n_features), dtype="float64") + 0.0
            slices = slices[np.ptp(slices, axis=1) > 0]
            if len(slices) <= 8:  # linear models: compare each slice with every row, vectorised
                found = any(bool((X == s).all(axis=1).any()) for s in slices)
            else:
                if rows is None:
                    rows = {row.tobytes() for row in X[np.ptp(X, axis=1) > 0]}
                found = any(s.tobytes() in rows for s in slices)
            if found:
                hits.append(path)
                break
    return hits


def find_per_sample_arrays(model: Any, n_train: int) -> list[str]:
    """Paths of model arrays with a dimension of size n_train (one value per training row)."""
    return [path for path, array in iter_arrays(model) if n_train in array.shape]


def _trees(model: Any, n: int) -> list[tuple[Any, np.ndarray, bool]]:
    """(tree, rows it may have seen, whether it saw only a subsample of them) for every tree."""
    if isinstance(model, tree.DecisionTreeRegressor | tree.DecisionTreeClassifier):
        return [(model, np.arange(n), False)]
    if isinstance(model, ensemble.RandomForestRegressor | ensemble.RandomForestClassifier):
        if getattr(model, "bootstrap", False):  # bootstrap and max_samples: sklearn keeps the in-bag rows
            samples = model.estimators_samples_
            return [(t, np.unique(s), False) for t, s in zip(model.estimators_, samples, strict=True)]
        return [(t, np.arange(n), False) for t in model.estimators_]
    if isinstance(model, ensemble.GradientBoostingRegressor | ensemble.GradientBoostingClassifier):
        # with subsample < 1 the in-bag rows are not kept, only how many reached each leaf
        partial = float(model.subsample) < 1.0
        return [(t, np.arange(n), partial) for t in model.estimators_.ravel()]
    return []


def min_leaf_units(model: Any, X: np.ndarray, pids: np.ndarray) -> int | None:
    """The smallest number of distinct units any leaf was fitted on, None for non-tree models.

    Units are counted among the rows the tree saw: its bootstrap or `max_samples` draw for a forest.
    A gradient-boosting tree with `subsample` < 1 keeps only how many in-bag rows reached each leaf
    (`n_node_samples`); the count is then the fewest units whose rows in that leaf add up to that
    many (a lower bound: the subsample may have been drawn from the units with the most rows).
    """
    trees = _trees(model, len(X))
    if not trees:
        return None
    codes = pd.factorize(pids)[0]
    X = np.asarray(X, dtype="float32")
    smallest = None
    for estimator, rows, partial in trees:
        leaves = estimator.tree_.apply(X[rows])
        if partial:
            low = _fewest_units(leaves, codes[rows], estimator.tree_.n_node_samples)
        else:
            pairs = pd.DataFrame({"leaf": leaves, "unit": codes[rows]}).drop_duplicates()
            low = int(pairs["leaf"].value_counts().min())
        smallest = low if smallest is None else min(smallest, low)
    return smallest


def _fewest_units(leaves: np.ndarray, units: np.ndarray, inbag: np.ndarray) -> int:
    per_unit = pd.DataFrame({"leaf": leaves, "unit": units}).value_counts()  # rows of each unit per leaf
    low = None
    for leaf, counts in per_unit.groupby(level="leaf"):
        needed = int(inbag[int(leaf)])
        ordered = np.cumsum(np.sort(counts.to_numpy())[::-1])
        fewest = int(np.searchsorted(ordered, needed)) + 1 if needed else 0
        low = fewest if low is None else min(low, fewest)
    return 0 if low is None else low


def free_parameters(model: Any) -> tuple[int, str] | None:
    """How many values a fitted model was free to set (leaves, coefficients, support vectors), and
    what they are; None for a model this cannot count."""
    trees = _trees(model, 0)
    if trees:
        leaves = sum(int((t.tree_.children_left == -1).sum()) for t, _, _ in trees)
        return leaves, f"{leaves} leaves in {len(trees)} tree(s)"
    if hasattr(model, "support_vectors_"):
        count = int(np.size(model.support_vectors_) + np.size(model.dual_coef_))
        return count, "support vectors and their weights"
    if hasattr(model, "coef_"):
        count = int(np.size(model.coef_) + np.size(getattr(model, "intercept_", 0.0)))
        return count, "coefficients and intercepts"
    return None


def round_model(model: Any, digits: int, depth: int = 0) -> None:
    """Round, in place, the fitted values of a model to `digits` significant digits: coefficients,
    intercepts, tree thresholds and leaf values, constants, per-stage scores. Their low decimals
    would otherwise carry values of single rows (a threshold is the midpoint of two rows' values)."""
    from cleanroom.sandbox.release.structure import round_sig

    if depth > 4 or model is None:
        return
    if isinstance(model, np.ndarray) and model.dtype == object:
        for item in model.ravel():
            round_model(item, digits, depth + 1)
        return
    if isinstance(model, list | tuple):
        for item in model:
            round_model(item, digits, depth + 1)
        return
    if not type(model).__module__.startswith("sklearn."):
        return
    for name, value in list(vars(model).items()):
        if not name.endswith("_") or name.startswith("_") or name == "classes_":
            continue
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            value[...] = round_sig(value, digits)
        elif isinstance(value, float | np.floating) and not isinstance(value, bool):
            setattr(model, name, round_sig(float(value), digits))
        elif name in ("estimators_", "init_"):
            round_model(value, digits, depth + 1)
    structure = getattr(model, "tree_", None)
    if structure is not None and hasattr(structure, "threshold"):
        inner = structure.children_left != -1
        structure.threshold[inner] = round_sig(structure.threshold[inner], digits)
        structure.value[...] = round_sig(structure.value, digits)


def _sig(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def evaluate(model: Any, task: str, X: pd.DataFrame, y: pd.Series, digits: int = 4) -> dict[str, float | None]:
    """Holdout metrics, rounded to `digits` significant digits."""
    if task == "regression":
        pred = model.predict(X)
        return {
            "r2": _sig(metrics.r2_score(y, pred), digits),
            "mae": _sig(metrics.mean_absolute_error(y, pred), digits),
            "rmse": _sig(metrics.root_mean_squared_error(y, pred), digits),
        }
    out: dict[str, float | None] = {
        "accuracy": _sig(metrics.accuracy_score(y, model.predict(X)), digits),
        "roc_auc": None,
        "log_loss": None,
    }
    if hasattr(model, "predict_proba"):
        proba = model.predict_proba(X)
        out["log_loss"] = _sig(metrics.log_loss(y, proba, labels=model.classes_), digits)
        if len(model.classes_) == 2 and y.nunique() == 2:
            out["roc_auc"] = _sig(metrics.roc_auc_score(y == model.classes_[1], proba[:, 1]), digits)
    return out


def max_unit_leverage(X: np.ndarray, units: np.ndarray, chunk: int = 65_536) -> float:
    """The largest hat-matrix weight of one unit's rows on their own fits, with an intercept.

    Leverage is invariant to scaling and, with an intercept, equals 1/n plus the leverage of the
    centred features; a pseudo-inverse handles collinear features (one-hot sets). Memory: a few
    chunks of rows, never a second copy of X.
    """
    n, p = X.shape
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    keep = scale > 0
    gram = np.zeros((int(keep.sum()),) * 2)
    for start in range(0, n, chunk):
        block = (X[start : start + chunk, keep] - mean[keep]) / scale[keep]
        gram += block.T @ block
    values, vectors = np.linalg.eigh(gram) if len(gram) else (np.zeros(0), np.zeros((0, 0)))
    big = values > max(float(values.max(initial=0.0)), 1.0) * 1e-10 * max(p, 1)
    inverse = (vectors[:, big] / values[big]) @ vectors[:, big].T
    leverage = np.full(n, 1.0 / n)
    for start in range(0, n, chunk):
        block = (X[start : start + chunk, keep] - mean[keep]) / scale[keep]
        leverage[start : start + chunk] += np.einsum("ij,ij->i", block @ inverse, block)
    codes, _ = pd.factorize(units)
    return float(np.bincount(codes, weights=leverage).max()) if n else 0.0


def _count_units(codes: np.ndarray) -> int:
    """How many distinct units `codes` (from `pd.factorize`, so 0..m-1) hold."""
    return int(np.count_nonzero(np.bincount(codes))) if len(codes) else 0


def split(
    frame: pd.DataFrame, holdout_fraction: float, seed: int, units: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Train and holdout row positions, split by `_pid` so that no unit is in both.

    `units`: `pd.factorize(frame[PID])[0]` when the caller has it already (the same split).
    """
    splitter = GroupShuffleSplit(n_splits=1, test_size=holdout_fraction, random_state=seed)
    groups = pd.factorize(frame[PID])[0] if units is None else units  # integers: sorting 1M strings is slow
    train, holdout = next(splitter.split(frame, groups=groups))
    return train, holdout


def fit_and_check(
    frame: pd.DataFrame,
    spec: Any,
    *,
    k: int,
    allowed: list[str],
    allow_row_storing: bool,
    max_model_bytes: int,
    forbidden: set[str],
    holdout_fraction: float,
    seed: int,
    job_id: str,
    checks: list[dict[str, Any]],
    names: NameRule,
    with_metrics: bool = True,
    precision: int = 3,
) -> dict[str, bytes]:
    """Fit, evaluate and check the model; return model.skops, metrics.json and model_card.md.

    Without `with_metrics` the card leaves out the holdout metrics (metrics.json is still built;
    the caller decides what to release).
    """
    spec = unwrap(spec)
    name, estimator, task = build_estimator(spec, k=k, allowed=allowed, allow_row_storing=allow_row_storing)
    if name in DP_ONLY:
        raise ModelError(
            "model:estimator",
            f"{name!r} is fitted only with differential privacy; the inputs of this job are in exact mode",
        )
    _passed(checks, "model:estimator", f"{name} is allow-listed and allowed by the policy")
    _passed(checks, "model:params", "known scalar parameters within floors")
    features, target = select_features(frame, spec, forbidden)
    data = frame[[PID, *features, target]]
    if data.isna().to_numpy().any():
        raise ModelError("model:features", "features or target have missing values; impute them first")
    X = data[features].astype("float64")
    if not np.isfinite(X.to_numpy()).all():
        raise ModelError("model:features", "features hold infinite values")
    y = data[target]
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
            raise ModelError("model:features", "a regression target must be numeric")
        y = y.astype("float64")
        if not np.isfinite(y.to_numpy()).all():
            raise ModelError("model:features", "the target holds infinite values")
    names.check(features, "feature", forbidden)
    names.check([target], "target", forbidden)
    _passed(checks, "model:features", f"{len(features)} numeric features, target {target!r}")

    pids, _ = pd.factorize(data[PID])  # one integer per unit: Python sets of 1M values are slow
    if _count_units(pids) < 2 * k:
        raise ModelError("model:holdout", f"training and holdout sets need at least k={k} units each")
    train, holdout = split(data, holdout_fraction, seed, units=pids)
    train_units, holdout_units = _count_units(pids[train]), _count_units(pids[holdout])
    if holdout_units < k or train_units < k:
        raise ModelError("model:holdout", f"training and holdout sets need at least k={k} units each")
    _passed(checks, "model:holdout", "split by unit; both sets hold at least k units")
    if task == "classification":
        per_class = data.iloc[train].groupby(target, observed=True)[PID].nunique()
        if not 2 <= len(per_class) <= MAX_CLASSES or int(per_class.min()) < k:
            raise ModelError(
                "model:classes",
                f"classification needs 2 to {MAX_CLASSES} classes, each with at least k={k} units in the training set",
            )
        if set(y.iloc[holdout]) - set(per_class.index):
            raise ModelError("model:classes", "the holdout holds a class the training set lacks")
        _passed(checks, "model:classes", f"{len(per_class)} classes, each with at least k units")

    X_train, y_train = X.iloc[train], y.iloc[train]
    if name in LINEAR_FAMILY:
        if train_units < k * len(features):
            raise ModelError(
                "model:leverage",
                f"a linear model needs at least k={k} training units per "
                f"feature ({len(features)} features, fewer than {k * len(features)} units)",
            )
        worst = max_unit_leverage(X_train.to_numpy(), pids[train])
        if worst > 1.0 / k + 1e-9:
            raise ModelError(
                "model:leverage",
                f"a training unit carries more than 1/k (k={k}) of the weight "
                "of its own fitted value: some feature singles out fewer than k units (a rare "
                "category, an outlier, a per-person column); merge rare values or drop it",
            )
        _passed(checks, "model:leverage", "every training unit's leverage is at most 1/k")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator.fit(X_train, y_train)
        round_model(estimator, precision)
        scores = evaluate(estimator, task, X.iloc[holdout], y.iloc[holdout], digits=precision)
    warned = sorted({w.category.__name__ for w in caught})
    _passed(checks, "model:precision", f"fitted values rounded to {precision} significant digits")
    leaf = min_leaf_units(estimator, X_train.to_numpy(), pids[train])
    if leaf is not None:
        if leaf < k:
            raise ModelError(
                "model:leaf_units",
                f"a tree leaf holds fewer than k={k} distinct units; raise "
                "min_samples_leaf or aggregate to one row per unit first",
            )
        _passed(checks, "model:leaf_units", "every tree leaf holds at least k units")
    counted = free_parameters(estimator)
    if counted is not None and not (name in ROW_STORING and allow_row_storing):
        count, what = counted
        if count * k > train_units:
            raise ModelError(
                "model:parameters",
                f"the model has {count} free parameters ({what}); its "
                f"{train_units} training units allow at most {train_units} / k={k} = "
                f"{train_units // k}: use fewer trees, leaves or features, or more data",
            )
        _passed(
            checks,
            "model:parameters",
            f"{count} free parameters, at most {train_units // k} ({train_units} training units / k={k})",
        )

    if name in ROW_STORING:
        _passed(checks, "model:no_training_rows", "skipped: row-storing estimator allowed by the policy")
    else:
        stored = find_stored_rows(estimator, X_train.to_numpy())
        if stored:
            raise ModelError("model:no_training_rows", "a training row is stored verbatim in " + ", ".join(stored[:5]))
        per_sample = find_per_sample_arrays(estimator, len(train))
        if per_sample:
            raise ModelError("model:no_training_rows", "per-sample arrays stored in " + ", ".join(per_sample[:5]))
        _passed(checks, "model:no_training_rows", "no training row nor per-sample array in the model")

    blob = sio.dumps(estimator)
    trusted = TRUSTED_SKOPS_TYPES | (ROW_STORING_SKOPS_TYPES if name in ROW_STORING else frozenset())
    untrusted = sio.get_untrusted_types(data=blob)
    if set(untrusted) - trusted:
        raise ModelError(
            "model:skops_types",
            "the skops dump holds types outside the allow-list: " + ", ".join(sorted(set(untrusted) - trusted)),
        )
    sio.loads(blob, trusted=sorted(untrusted))
    _passed(checks, "model:skops_types", "skops dump loads with the explicit allow-list")
    if len(blob) > max_model_bytes:
        raise ModelError("model:size", f"model is {len(blob)} bytes, over the policy cap {max_model_bytes}")
    _passed(checks, "model:size", f"{len(blob)} bytes")

    report = {
        "job_id": job_id,
        "estimator": name,
        "task": task,
        "target": target,
        "features": features,
        "metrics": scores,
        "n_train": len(train) // 10 * 10,
        "n_holdout": len(holdout) // 10 * 10,
        "holdout_fraction": holdout_fraction,
        "seed": seed,
        "fit_warnings": warned,
    }
    params = {
        key: value
        for key, value in estimator.get_params(deep=False).items()
        if value is None or isinstance(value, str | int | float | bool)
    }
    card = model_card(
        report if with_metrics else {**report, "metrics": {}}, params, {c: str(frame[c].dtype) for c in features}
    )
    if name in LINEAR_FAMILY:  # the coefficients are in model.skops already (rounded); the card lists them too
        card += "\n## Coefficients\n\n" + "\n".join(coefficient_table(linear_coefficients(estimator, features)))
        card += "\n"
    return {
        "model.skops": blob,
        "metrics.json": json.dumps(report, indent=2, sort_keys=True).encode(),
        "model_card.md": card.encode(),
    }


def model_card(report: dict[str, Any], params: dict[str, Any], dtypes: dict[str, str]) -> str:
    """A short markdown card: what was fitted and how well; never rows or values."""
    lines = [
        f"# Model card: {report['estimator']}",
        "",
        f"- job: `{report['job_id']}`",
        f"- task: {report['task']}",
        f"- target: `{report['target']}`",
        f"- training rows (rounded down to 10): {report['n_train']}",
        f"- holdout rows (rounded down to 10): {report['n_holdout']}, split by privacy unit "
        f"(fraction {report['holdout_fraction']}, seed {report['seed']})",
        "- format: skops (load with `cleanroom.modelio.load_model`)",
        "",
        "## Parameters",
        "",
    ]
    lines += [f"- `{key}`: `{json.dumps(value)}`" for key, value in sorted(params.items())]
    lines += ["", "## Features (in order)", "", "| feature | dtype |", "| --- | --- |"]
    lines += [f"| `{name}` | {dtype} |" for name, dtype in dtypes.items()]
    if report["metrics"]:
        lines += ["", "## Holdout metrics", ""]
        lines += [f"- {key}: {value}" for key, value in report["metrics"].items()]
    return "\n".join(lines) + "\n"


def linear_coefficients(estimator: Any, features: list[str]) -> dict[str, Any]:
    """Coefficients per feature (per class when there are more than two) and the intercept, rounded."""
    coef = np.atleast_2d(estimator.coef_)
    intercept = np.atleast_1d(estimator.intercept_)
    if len(coef) == 1:
        return {
            "intercept": _round4(float(intercept[0])),
            "features": {f: _round4(float(v)) for f, v in zip(features, coef[0], strict=True)},
        }
    return {
        str(cls): {
            "intercept": _round4(float(b)),
            "features": {f: _round4(float(v)) for f, v in zip(features, row, strict=True)},
        }
        for cls, row, b in zip(estimator.classes_, coef, intercept, strict=True)
    }


def coefficient_table(coefficients: dict[str, Any]) -> list[str]:
    """Markdown rows: one per feature (and the intercept), one column per class when there are several."""
    per_class = {k: v for k, v in coefficients.items() if isinstance(v, dict) and "features" in v}
    if not per_class:
        per_class = {"": coefficients}
    heads = list(per_class)
    features = list(next(iter(per_class.values()))["features"])
    title = " | ".join(f"class {h}" if h else "coefficient" for h in heads)
    rows = [
        f"| term | {title} |",
        "| --- |" + " --- |" * len(heads),
        "| intercept | " + " | ".join(f"{per_class[h]['intercept']}" for h in heads) + " |",
    ]
    rows += [f"| `{f}` | " + " | ".join(f"{per_class[h]['features'][f]}" for h in heads) + " |" for f in features]
    return rows


def _round4(value: float) -> float | None:
    return float(f"{value:.4g}") if math.isfinite(value) else None
