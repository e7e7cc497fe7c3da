"""The examples under examples/ run, as a user runs them (a subprocess), against a real room and runner."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.docker
@pytest.mark.slow
def test_spend_model_example(room, runner, tmp_path):
    try:
        done = subprocess.run(
            [
                sys.executable,
                str(REPO / "examples" / "spend_model.py"),
                "--url",
                room.url,
                "--admin-token",
                room.admin_token,
                "--customers",
                "20000",
                "--workdir",
                str(tmp_path / "work"),
            ],
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=450,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the example did not finish in {exc.timeout} s; its output so far:\n{exc.stdout}\n{exc.stderr}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    r2 = re.search(r"^\s*r2 = (-?[0-9.e-]+)$", out, re.MULTILINE)
    assert r2 and float(r2.group(1)) > 0.3, out[-3000:]  # noisy (DP is the default)
    assert "release check" in out and "FAILED" not in out
    assert re.search(r"^region,count,", out, re.MULTILINE), out[-3000:]
    assert "chain intact = True" in out
    assert (tmp_path / "work" / "out" / "model.skops").exists()
    assert (tmp_path / "work" / "out" / "receipt.json").exists()
    # the owners' identifiers were dropped on their machines, before anything was uploaded
    assert "dropped before upload: ['email']" in out


def test_examples_use_only_the_sdk():
    """Examples import `cleanroom` through its public names only (`from cleanroom import Client`)."""
    for path in sorted((REPO / "examples").glob("*.py")):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) cleanroom\.", text, re.MULTILINE), path.name
        assert "from cleanroom import Client" in text, path.name
