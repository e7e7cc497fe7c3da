"""The runner's warm pool: containers started between jobs, taken whole by the next job, never reused."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from cleanroom.runner import launcher as sb
from cleanroom.runner.isolation import CONTROLS
from cleanroom.sandbox import wire
from cleanroom.settings import Settings
from tests.dockerutil import job_containers, require_docker, require_image

pytestmark = pytest.mark.docker


@pytest.fixture
def pool() -> Iterator[sb.Sandbox]:
    client = require_docker()
    image = require_image(client, "CLEANROOM_SANDBOX_IMAGE")
    box = sb.Sandbox(Settings(sandbox_image=image, job_timeout_seconds=60), runner_id=f"pool-{uuid.uuid4().hex[:8]}")
    yield box
    box.drain()
    box.remove_orphans()


def _warm(box: sb.Sandbox) -> list[Any]:
    return box.docker.containers.list(
        all=True,
        ignore_removed=True,
        filters={"label": [f"{sb.LABEL}={sb.WARM_JOB}", f"{sb.RUNNER_LABEL}={box.runner_id}"]},
    )


def _request() -> bytes:
    buf = io.BytesIO()
    wire.write_message(buf, "job.json", {"job_id": "t", "inputs": [], "steps": [], "max_output_bytes": 10**6}, {})
    return buf.getvalue()


def test_a_job_takes_the_warm_containers_whole_and_the_next_starts_its_own(pool: sb.Sandbox) -> None:
    assert pool.warm() == 2 and pool.warm() == 0  # one per phase, not more
    warm = _warm(pool)
    assert sorted(c.labels["cleanroom.phase"] for c in warm) == ["compute", "release"]
    assert all(c.status == "running" for c in warm)

    taken = pool.start("compute", "job-warm-1")
    assert taken.isolation["warm"] is True
    assert {c: taken.isolation[c] for c in CONTROLS} == dict.fromkeys(CONTROLS, True)  # read back at creation
    taken.container.reload()
    assert taken.container.name == sb.container_name("job-warm-1", "compute")
    assert [c.id for c in job_containers(pool.docker, "job-warm-1")] == [taken.container.id]
    result = taken.run(_request())
    assert result.exit_code == 0 and result.isolation["warm"] is True
    assert job_containers(pool.docker, "job-warm-1") == []  # used once, then removed

    # the pool gave its one compute container away: the next job's compute starts fresh
    fresh = pool.start("compute", "job-warm-2")
    try:
        assert fresh.isolation["warm"] is False
        assert fresh.container.labels[sb.LABEL] == "job-warm-2"
    finally:
        fresh.close()
    assert [c.labels["cleanroom.phase"] for c in _warm(pool)] == ["release"]


def test_tighter_policy_limits_never_get_a_warm_container(pool: sb.Sandbox) -> None:
    pool.warm()
    tight = pool.start("compute", "job-tight", limits={"memory_mb": 256})
    try:
        assert tight.isolation["warm"] is False and tight.isolation["limits"]["memory"] == "256m"
    finally:
        tight.close()
    assert len(_warm(pool)) == 2  # still there for a job with the room's limits


def test_a_dead_warm_container_is_replaced_by_a_fresh_one(pool: sb.Sandbox) -> None:
    pool.warm()
    for c in _warm(pool):
        if c.labels["cleanroom.phase"] == "release":
            c.kill()
    box = pool.start("release", "job-dead")
    try:
        assert box.isolation["warm"] is False
        box.container.reload()
        assert box.container.status == "running"
    finally:
        box.close()


def test_drain_removes_the_pool_and_stops_refills(pool: sb.Sandbox) -> None:
    pool.warm()
    pool.drain()
    assert _warm(pool) == []
    assert pool.warm() == 0 and _warm(pool) == []


def test_the_pool_is_off_when_the_operator_turns_it_off() -> None:
    client = require_docker()
    image = require_image(client, "CLEANROOM_SANDBOX_IMAGE")
    box = sb.Sandbox(Settings(sandbox_image=image, warm_pool=False), runner_id=f"pool-{uuid.uuid4().hex[:8]}")
    assert box.warm() == 0 and _warm(box) == []
    assert Settings.from_env({"CLEANROOM_WARM_POOL": "false"}).warm_pool is False


def test_a_job_runs_in_warm_containers_and_its_receipt_says_so(room: Any, runner: Any, tmp_path: Any) -> None:
    """The runner warms its pool when it starts: the scenario job takes both containers from it, every
    control is still read back and recorded, and the pool is refilled after the job."""
    import json
    import time

    from cleanroom import scenario
    from cleanroom.client import verify_receipt
    from tests.scenario_setup import setup_scenario

    client = runner.service.sandbox.docker
    mine = [f"{sb.LABEL}={sb.WARM_JOB}", f"{sb.RUNNER_LABEL}={runner.service.runner_id}"]
    deadline = time.monotonic() + 90
    while len(client.containers.list(ignore_removed=True, filters={"label": mine, "status": "running"})) < 2:
        assert time.monotonic() < deadline, "the runner did not warm its pool"
        time.sleep(0.2)

    retailer, _, analyst, _, ids = setup_scenario(room.org, tmp_path, approve=True)
    job = analyst.submit_job(scenario.job_spec(ids))
    assert room.end_time_budget(job["id"])["status"] == "succeeded"
    retailer.approve_release(job["id"])
    analyst.get_result(job["id"], tmp_path / "out")
    receipt = json.loads((tmp_path / "out" / "receipt.json").read_text())
    assert verify_receipt(receipt)["job"] == job["id"]
    for phase in ("compute", "release"):
        isolation = receipt["body"]["isolation"][phase]
        assert isolation["warm"] is True, phase
        assert {c: isolation[c] for c in CONTROLS} == dict.fromkeys(CONTROLS, True), phase
    assert job_containers(client, job["id"]) == []
    deadline = time.monotonic() + 90
    while len(client.containers.list(ignore_removed=True, filters={"label": mine, "status": "running"})) < 2:
        assert time.monotonic() < deadline, "the runner did not refill its pool after the job"
        time.sleep(0.2)
