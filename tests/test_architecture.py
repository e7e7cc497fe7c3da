"""The trust zones are packages, and `lint-imports` enforces them (docs/design.md, "Trust zones").

Each test copies the package to a temporary folder, plants one import a zone must never make, and runs
the project's own contracts against the copy: the planted import fails them. The unmodified copy is the
control that shows the contracts pass on the real tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "cleanroom", tmp_path / "cleanroom", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )


def _plant(tree: Path, module: str, line: str) -> None:
    path = tree / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\n{line}  # planted by tests/test_architecture.py\n")


def test_the_real_tree_keeps_every_contract(tmp_path: Path) -> None:
    result = _lint(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("cleanroom.api.routes_jobs", "import cleanroom.runner.launcher", "The API host"),
        ("cleanroom.store.db", "from cleanroom.prepare import ingest", "The API host"),
        ("cleanroom.api.web", "import docker", "The API host"),
        ("cleanroom.prepare.schema", "from cleanroom.store import blobs", "Owner-side plaintext code"),
        ("cleanroom.sandbox.release.aggregates", "from cleanroom.sandbox.compute import phase", "The release phase"),
        ("cleanroom.sandbox.release.models", "import pluggy", "The release phase"),
        ("cleanroom.sandbox.compute.helpers", "from cleanroom import crypto", "The sandbox imports nothing"),
        ("cleanroom.sandbox.wire", "import httpx", "The sandbox imports nothing"),
        ("cleanroom.runner.execute", "from cleanroom.api import deps", "The runner never imports"),
        # A chain counts: a shared module that reaches a zone breaks the zones that import it.
        ("cleanroom.policy", "from cleanroom.runner import recode", "Shared contract modules"),
    ],
)
def test_a_planted_import_breaks_its_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    tree = _copy(tmp_path)
    _plant(tree, module, line)
    result = _lint(tree)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in " ".join(broken.split()), result.stdout
