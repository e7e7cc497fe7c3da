"""The compose stack as users start it (scripts/up.sh = `make up`): real containers, real HTTP.

The runner container launches the sandbox containers through the Docker socket, so a job here goes
through exactly the deployment `make up` gives. Then down and up again: the state persists.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from cleanroom import scenario
from cleanroom.client import Client
from cleanroom.profile import Profile
from tests.conftest import free_port
from tests.dockerutil import require_docker, unavailable
from tests.scenario_setup import setup_scenario

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.docker, pytest.mark.slow]


def compose(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "scripts" / "compose.sh"), *args],
        cwd=REPO,
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


@pytest.fixture
def stack(tmp_path: Path):
    require_docker()
    if not (REPO / ".env").exists():
        unavailable("no .env with the image tags: run `make images`")
    env = {
        **os.environ,
        "CLEANROOM_PROJECT": f"crtest{uuid.uuid4().hex[:8]}",
        "CLEANROOM_PORT": str(free_port()),
        "CLEANROOM_HOME": str(tmp_path / "home"),
    }
    try:
        up = subprocess.run(
            [str(REPO / "scripts" / "up.sh")], cwd=REPO, env=env, text=True, capture_output=True, timeout=600
        )
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield env
    finally:
        compose(env, "down", "--volumes", "--remove-orphans")


def test_compose_stack_runs_a_job_and_keeps_state(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("CLEANROOM_HOME", stack["CLEANROOM_HOME"])
    url = f"http://127.0.0.1:{stack['CLEANROOM_PORT']}"
    assert httpx.get(url + "/health").status_code == 200
    admin = Client.from_profile("admin")
    assert admin.whoami()["name"] == "admin"
    assert admin.room()["ready"]  # the runner container generated and published the room key

    def org(name, role):
        created = admin.create_org(name, [role])
        client = Client(url, created["token"], profile=Profile(name=name))
        client.keys()
        return client

    retailer, bank, analyst, files, ids = setup_scenario(org, tmp_path, 1000, approve=True)
    job = analyst.submit_job("time_budget = 90\n" + scenario.job_spec(ids))  # its analyst learns the outcome
    final = admin.wait_job(job["id"], timeout=300)  # 90 s after the start
    assert final["status"] == "succeeded", final
    retailer.approve_release(job["id"])
    assert analyst.wait_job(job["id"], timeout=300)["status"] == "released"
    analyst.get_result(job["id"], tmp_path / "out")
    assert (tmp_path / "out" / "model.skops").exists()

    # down and up again: volumes persist, the same room key, the same datasets and audit chain
    before = admin.room()["keys"]["fingerprint"]
    assert compose(stack, "down").returncode == 0
    up = subprocess.run(
        [str(REPO / "scripts" / "up.sh")], cwd=REPO, env=stack, text=True, capture_output=True, timeout=600
    )
    assert up.returncode == 0, up.stderr[-2000:]
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(1)
    assert admin.room()["keys"]["fingerprint"] == before
    assert [d["name"] for d in admin.list_datasets()] == ["bank.customers", "retail.purchases"]
    assert admin.audit_verify()["ok"]
