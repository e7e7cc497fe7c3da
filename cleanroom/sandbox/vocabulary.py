"""The names every trust zone shares, each declared once.

Standard library only and shipped in the sandbox image, so the owner's machine, the API, the runner
and both sandbox phases import the same definitions (`lint-imports` lets every zone import this one
module of `cleanroom.sandbox`). It holds names and nothing else: no behaviour, no messages.

Patterns are matched with `fullmatch` (a `$` would also match before a final newline), so a name is
exactly what it shows. The rules people read for them live with the checks (`cleanroom.identifiers`).
"""

from __future__ import annotations

import re

__all__ = [
    "DATASET_NAME",
    "DEFAULT_ESTIMATORS",
    "DP_ONLY_ESTIMATORS",
    "JOB_NAME",
    "JOB_PHASES",
    "JOB_STATUSES",
    "KNOWN_ESTIMATORS",
    "LINEAR_ESTIMATORS",
    "ORG_NAME",
    "OUTPUT_KINDS",
    "PID",
    "PLUGIN_NAME",
    "ROW_STORING_ESTIMATORS",
    "ROW_STORING_SKOPS_TYPES",
    "SANDBOX_PHASES",
    "SHA256_HEX",
    "STEP_KINDS",
    "TABLE_NAME",
    "TERMINAL_STATUSES",
    "TRANSFORM_KINDS",
    "TRUSTED_SKOPS_TYPES",
]

# The pseudonymised privacy unit and join key of every dataset (docs/design.md, "Data conventions").
PID = "_pid"

# Ids and names
SHA256_HEX = re.compile(r"[0-9a-f]{64}")  # dataset blobs, plugin ids (the bundle's sha256), digests
ORG_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,39}")
DATASET_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
PLUGIN_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,63}")
JOB_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
TABLE_NAME = re.compile(r"[a-z0-9_-]{1,64}")  # an aggregate table, named by the job spec

# What a plugin is, what a job may release, how a job runs
TRANSFORM_KINDS = ("preprocess", "features")  # the steps that map a table to a table (may name one input)
STEP_KINDS = (*TRANSFORM_KINDS, "model", "analysis", "statistic")
OUTPUT_KINDS = ("aggregate", "model")
SANDBOX_PHASES = ("compute", "release")  # each runs in its own fresh container
JOB_PHASES = ("verifying", "decrypting", "compute", "release", "uploading")  # progress the runner reports
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled", "timed_out")

# Estimators the release phase can fit. The default ones keep no training row in the fitted model;
# the row-storing ones do, so a policy must opt in to them (allow_row_storing).
DEFAULT_ESTIMATORS = (
    "linear_regression",
    "ridge",
    "lasso",
    "logistic_regression",
    "gradient_boosting_regressor",
    "gradient_boosting_classifier",
    "random_forest_regressor",
    "random_forest_classifier",
    "decision_tree_regressor",
    "decision_tree_classifier",
)
ROW_STORING_ESTIMATORS = (
    "k_neighbors_regressor",
    "k_neighbors_classifier",
    "svr",
    "svc",
    "gaussian_process_regressor",
    "gaussian_process_classifier",
)
# fitted only with differential privacy; not in the default list (a policy that names no estimators
# keeps its hash), so an owner lists them to allow them
DP_ONLY_ESTIMATORS = ("gaussian_nb",)
KNOWN_ESTIMATORS = DEFAULT_ESTIMATORS + ROW_STORING_ESTIMATORS + DP_ONLY_ESTIMATORS
LINEAR_ESTIMATORS = ("linear_regression", "ridge", "lasso", "logistic_regression")

# Types skops does not trust by default that the released estimators need: the release phase checks
# what it writes against them, and the recipient's machine (`cleanroom.modelio`) loads nothing else.
TRUSTED_SKOPS_TYPES = frozenset({"sklearn.tree._tree.Tree"})
ROW_STORING_SKOPS_TYPES = frozenset(
    {
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.neighbors._ball_tree.BallTree",
        "sklearn.metrics._dist_metrics.EuclideanDistance64",
        "sklearn.metrics._dist_metrics.ManhattanDistance64",
        "sklearn.metrics._dist_metrics.MinkowskiDistance64",
        "sklearn.metrics._dist_metrics.ChebyshevDistance64",
        "sklearn.gaussian_process.kernels.ConstantKernel",
        "sklearn.gaussian_process.kernels.Product",
        "sklearn.gaussian_process.kernels.RBF",
        "sklearn.gaussian_process._gpc._BinaryGaussianProcessClassifierLaplace",
    }
)
