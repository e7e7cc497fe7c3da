"""`cleanroom demo` against a real room and runner, twice (it is idempotent)."""

from __future__ import annotations

import pytest

from cleanroom.demo import run_demo
from cleanroom.profile import Profile

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_demo_runs_twice(room, runner, tmp_path):
    admin = Profile(name="admin", url=room.url, token=room.admin_token)
    admin.save()
    # DP is the default: the released metrics are noisy; 20 000 customers keep the model useful
    first = run_demo(admin_profile="admin", customers=20_000, workdir=str(tmp_path / "one"))
    assert first["metrics"]["r2"] > 0.3
    second = run_demo(admin_profile="admin", customers=20_000, workdir=str(tmp_path / "two"))
    assert second["job"] != first["job"] and second["metrics"]["r2"] > 0.3
