"""The shared names have one home (`cleanroom.sandbox.vocabulary`), importable by every zone.

It and `cleanroom.sandbox.hashing` import only the standard library (they ship in the sandbox image
and the owner-side contract lets `prepare` import them); the modules that used to declare copies now
use these definitions, and the patterns match whole names only.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from cleanroom import identifiers, jobspec, modelio, policy
from cleanroom.runner.context import JobContext, PluginRef
from cleanroom.sandbox import bundles, hashing, vocabulary
from cleanroom.sandbox.release import models
from tests.test_architecture import _copy, _lint, _plant


@pytest.mark.parametrize("module", [vocabulary, hashing])
def test_the_shared_modules_import_only_the_standard_library(module: object) -> None:
    tree = ast.parse(Path(module.__file__).read_text())  # type: ignore[attr-defined]
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported


def test_the_modules_that_held_copies_use_the_vocabulary() -> None:
    assert identifiers.PATTERNS["org"][0] is vocabulary.ORG_NAME is policy.ORG_NAME
    assert identifiers.PATTERNS["dataset"][0] is vocabulary.DATASET_NAME is jobspec.DATASET_NAME
    assert identifiers.PATTERNS["plugin"][0] is vocabulary.PLUGIN_NAME
    assert identifiers.PATTERNS["job"][0] is vocabulary.JOB_NAME is jobspec.JOB_NAME
    assert jobspec.PLUGIN_ID is vocabulary.SHA256_HEX
    assert jobspec.STEP_KINDS is bundles.KINDS is vocabulary.STEP_KINDS
    assert policy.OUTPUT_KINDS is vocabulary.OUTPUT_KINDS
    assert policy.KNOWN_ESTIMATORS is vocabulary.KNOWN_ESTIMATORS
    assert modelio.TRUSTED_TYPES == vocabulary.TRUSTED_SKOPS_TYPES | vocabulary.ROW_STORING_SKOPS_TYPES


def test_the_release_phase_fits_exactly_the_known_estimators() -> None:
    assert set(models.ESTIMATORS) == set(vocabulary.KNOWN_ESTIMATORS)
    assert models.ROW_STORING == set(vocabulary.ROW_STORING_ESTIMATORS)
    assert models.LINEAR_FAMILY <= set(vocabulary.DEFAULT_ESTIMATORS)
    assert not set(vocabulary.DEFAULT_ESTIMATORS) & set(vocabulary.ROW_STORING_ESTIMATORS)
    assert set(vocabulary.TERMINAL_STATUSES) < set(vocabulary.JOB_STATUSES)
    assert set(vocabulary.SANDBOX_PHASES) < set(vocabulary.JOB_PHASES)


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        (vocabulary.SHA256_HEX, "ab" * 32, ["AB" * 32, "ab" * 32 + "\n", "ab" * 31, "g" * 64]),
        (vocabulary.ORG_NAME, "acme-co", ["a", "Acme", "acme\n", "-acme", "acme_co"]),
        (vocabulary.DATASET_NAME, "acme.customers_v2", ["", "Acme.x", ".acme", "acme.customers\n"]),
        (vocabulary.PLUGIN_NAME, "my-plugin", ["m", "my_plugin", "my-plugin\n"]),
        (vocabulary.TABLE_NAME, "by_region", ["", "By", "by region", "by_region\n", "x" * 65]),
    ],
)
def test_patterns_match_whole_names_only(pattern: object, good: str, bad: list[str]) -> None:
    assert pattern.fullmatch(good)  # type: ignore[attr-defined]
    for name in bad:
        assert not pattern.fullmatch(name), name  # type: ignore[attr-defined]


def test_the_api_enums_and_checks_are_the_vocabulary() -> None:
    from cleanroom.api import job_views, routes_jobs, routes_runner, schemas

    assert tuple(schemas.PluginKind) == vocabulary.STEP_KINDS
    assert tuple(schemas.JobPhase) == vocabulary.JOB_PHASES
    # input owners see the stored statuses; an analyst sees two more at the job's outcome time
    assert tuple(schemas.JobStatus) == (*vocabulary.JOB_STATUSES, "released", "nothing_released")
    assert set(schemas.AnalystStatus) <= set(schemas.JobStatus)
    assert routes_jobs.TERMINAL_STATUSES is routes_runner.TERMINAL_STATUSES is vocabulary.TERMINAL_STATUSES
    assert routes_runner.JOB_PHASES is vocabulary.JOB_PHASES
    assert not hasattr(job_views, "TERMINAL") and not hasattr(routes_runner, "PHASES")
    sha256 = schemas.Dataset.model_json_schema()["properties"]["sha256"]["pattern"]
    assert sha256 == f"^{vocabulary.SHA256_HEX.pattern}$"


def test_the_runner_names_a_table_only_by_a_whole_valid_name() -> None:
    """A step's `name` parameter names its table only when all of it is a table name (else `step<N>`)."""
    pid = "ab" * 32
    steps = [{"plugin": pid, "params": {"name": n}} for n in ("by_region", "by_region\n", "x" * 65, "by_region")]
    ctx = JobContext(
        job_id="j1",
        spec={"steps": steps},
        datasets=(),
        plugins={pid: PluginRef(id=pid, name="counts", kind="analysis", manifest={})},
    )
    assert ctx.table_names() == ["by_region", "step2", "step3", "step4"]


@pytest.mark.slow
def test_prepare_may_import_the_shared_names_and_nothing_else_of_the_sandbox(tmp_path: Path) -> None:
    allowed = _copy(tmp_path / "allowed")
    _plant(allowed, "cleanroom.prepare.mock", "from cleanroom.sandbox.vocabulary import PID as _PID")
    _plant(allowed, "cleanroom.prepare.schema", "from cleanroom.sandbox.hashing import digest as _digest")
    result = _lint(allowed)
    assert result.returncode == 0, result.stdout + result.stderr
    refused = _copy(tmp_path / "refused")
    _plant(refused, "cleanroom.prepare.mock", "from cleanroom.sandbox import wire as _wire")
    result = _lint(refused)
    assert result.returncode != 0 and "Owner-side plaintext code" in " ".join(result.stdout.split()), result.stdout
