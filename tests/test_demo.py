"""`cleanroom demo` against a real room and runner, twice: the second time by a second user of the same
room (another machine: no profiles, so new orgs), whose analyst submits the built-in plugins the first
analyst submitted already and uses them (plugins are their bytes, for everyone)."""

from __future__ import annotations

import pytest

from cleanroom.demo import run_demo
from cleanroom.profile import Profile

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_demo_runs_twice_the_second_time_for_a_second_user(room, runner, tmp_path, monkeypatch):
    admin = Profile(name="admin", url=room.url, token=room.admin_token)
    admin.save()
    # DP is the default: the released metrics are noisy; 20 000 customers keep the model useful
    first = run_demo(admin_profile="admin", customers=20_000, workdir=str(tmp_path / "one"))
    assert first["metrics"]["r2"] > 0.3
    monkeypatch.setenv("CLEANROOM_HOME", str(tmp_path / "second-user"))  # a second user's machine
    admin.save()
    second = run_demo(admin_profile="admin", customers=20_000, workdir=str(tmp_path / "two"))
    assert second["job"] != first["job"] and second["metrics"]["r2"] > 0.3
    analysts = {org["name"] for org in room.admin.list_orgs() if "analyst" in org["roles"]}
    assert len(analysts) == 2  # two analyst orgs ran the same plugins
