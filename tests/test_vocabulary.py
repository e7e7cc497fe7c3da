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
from cleanroom.sandbox import bundles, hashing, names, vocabulary
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


def test_the_anchored_table_name_kept_for_old_callers_refuses_what_the_vocabulary_refuses() -> None:
    for name in ("by_region", "x" * 64, "by region", "x" * 65, "By", ""):
        assert bool(names.TABLE_NAME_RE.match(name)) == bool(vocabulary.TABLE_NAME.fullmatch(name)), name


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
