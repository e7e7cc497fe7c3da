"""Several runners of one room (sharing the room key and runner home) never touch each other's jobs or
containers; a runner that restarts under its own name takes over only what its earlier process left.

The API test drives the runner routes over HTTP as runner instances would (heartbeat, claim, recover).
The Docker test runs real `cleanroom runner` processes: two with jobs in flight, a third that starts,
and one killed -9 mid-job and restarted (the control: the clean-up after a crash still works).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cleanroom import scenario
from cleanroom.errors import ValidationError
from cleanroom.runner.identity import NameLock
from tests.scenario_setup import setup_scenario
from tests.test_faults import Proc, RunnerProc, procs, register_room_key, sleepy_job_spec

__all__ = ["procs"]  # the fixture


def test_a_runner_name_is_taken_once_per_runner_home(tmp_path: Path) -> None:
    first = NameLock(tmp_path, "a")
    with pytest.raises(ValidationError, match="another runner named 'a'") as refused:
        NameLock(tmp_path, "a")  # a second runner under the same name would take the first for its restart
    assert "CLEANROOM_RUNNER_NAME" in str(refused.value.hint)
    other = NameLock(tmp_path, "b")  # control: another name
    first.release()
    NameLock(tmp_path, "a").release()  # the first one ended (as at kill -9): the name is free again
    other.release()


def test_recover_requeues_only_jobs_of_instances_that_are_gone(room: Any, tmp_path: Path) -> None:
    register_room_key(room.url, room.runner_token)
    _, _, analyst, _, ids = setup_scenario(room.org, tmp_path, 200, approve=True)
    jobs = [analyst.submit_job(scenario.job_spec(ids))["id"] for _ in range(2)]
    headers = {"authorization": f"Bearer {room.runner_token}"}

    def call(path: str, **body: Any) -> httpx.Response:
        return httpx.post(room.url + path, headers=headers, json=body or None, timeout=30)

    def beat(instance: str, name: str) -> httpx.Response:
        return call("/runner/heartbeat", instance=instance, name=name, ttl=30)

    assert beat("a.1", "a").json()["live"] == ["a.1"]
    assert beat("b.1", "b").json()["live"] == ["a.1", "b.1"]
    assert call("/runner/claim", instance="a.1").json()["job"] == jobs[0]
    assert call("/runner/claim", instance="b.1").json()["job"] == jobs[1]
    with room.store.read() as conn:
        claimed = dict(conn.execute("SELECT id, runner_id FROM jobs").fetchall())
    assert claimed == {jobs[0]: "a.1", jobs[1]: "b.1"}

    # a third runner starts: both runners are alive, nothing is re-queued (before: every running job was)
    assert beat("c.1", "c").status_code == 200
    assert call("/runner/recover", instance="c.1").json() == {"requeued": [], "failed": []}
    # runner a restarts (same name, new process): its earlier instance is over, only its job goes back
    assert beat("a.2", "a").json()["live"] == ["a.2", "b.1", "c.1"]
    assert call("/runner/recover", instance="a.2").json() == {"requeued": [jobs[0]], "failed": []}
    assert room.admin.get_job(jobs[1])["status"] == "running"
    for path, body in (("/runner/heartbeat", {"name": "a", "ttl": 30}), ("/runner/claim", {})):
        gone = call(path, instance="a.1", **body)  # the old process, if it were still around, is refused
        assert gone.status_code == 409 and "CLEANROOM_RUNNER_NAME" in gone.text, gone.text

    # runner b falls silent for longer than its ttl: the next recover re-queues its job and ends it (the API
    # counts silence from its own start at the earliest, so it is as if the API had been up for a minute)
    with room.store.tx() as conn:
        conn.execute("UPDATE runner_instances SET last_seen = last_seen - 31 WHERE id = 'b.1'")
    since = room.app.state.runner_routes_since
    assert call("/runner/recover").json() == {"requeued": [], "failed": []}  # control: the API just started
    room.app.state.runner_routes_since = since - 60
    assert call("/runner/recover").json() == {"requeued": [jobs[1]], "failed": []}
    assert beat("b.1", "b").status_code == 409  # it cannot come back and finish a job another runner reruns
    # the re-queue limit stays: a job whose runner is gone on its second attempt too fails
    assert call("/runner/claim", instance="c.1").json()["job"] == jobs[0]
    assert beat("c.2", "c").status_code == 200
    assert call("/runner/recover", instance="c.2").json() == {"requeued": [], "failed": [jobs[0]]}
    assert room.admin.get_job(jobs[0])["error_class"] == "runner_restart"


# Docker: real runner processes ----------------------------------------------------------------------


class NamedRunner(RunnerProc):
    """`cleanroom runner` under its own CLEANROOM_RUNNER_NAME, in a runner home other runners share."""

    def __init__(self, procs: list[Proc], room: Any, home: Path, name: str, **env: str) -> None:
        super().__init__(procs, room, home, home.parent / f"runner-{name}.log")
        self.name = name
        self.env.update({"CLEANROOM_RUNNER_NAME": name, "CLEANROOM_MAX_CONCURRENT_JOBS": "1", **env})

    def start(self) -> Proc:
        """Start; return once it announced itself, removed orphans and recovered jobs (its own heartbeat)."""
        beat = self.home / "runners" / f"{self.name}.heartbeat"
        beat.unlink(missing_ok=True)
        self.proc = Proc(["runner"], self.env, self.log)
        self.procs.append(self.proc)
        deadline = time.monotonic() + 90
        while not beat.exists():
            assert self.proc.proc.poll() is None, f"runner {self.name} exited:\n{self.proc.tail()}"
            assert time.monotonic() < deadline, f"runner {self.name} did not start:\n{self.proc.tail()}"
            time.sleep(0.1)
        return self.proc


def _starts(room: Any, job_id: str) -> list[str]:
    actions = []
    for e in room.admin.audit_events():
        if e["object_id"] == job_id:
            actions += [h["action"] for h in e["details"]["events"]] if e["action"] == "job.ended" else [e["action"]]
    return actions


@pytest.mark.docker
@pytest.mark.slow
def test_runners_sharing_the_room_key_leave_each_other_alone(room: Any, tmp_path: Path, procs: list[Proc]) -> None:
    from cleanroom.runner.launcher import NAME_LABEL, RUNNER_LABEL
    from tests.dockerutil import job_containers, require_docker, require_image

    docker_client = require_docker()
    require_image(docker_client, "CLEANROOM_SANDBOX_IMAGE")
    home = tmp_path / "runner-home"  # one home for all: the room key, as a shared volume
    a, b = NamedRunner(procs, room, home, "a"), NamedRunner(procs, room, home, "b")
    a.start()
    b.start()
    room_label = room.admin.room()["keys"]["fingerprint"].removeprefix("SHA256:")[:16]

    def ours() -> dict[str, str]:  # container id -> runner name, of every sandbox container of this room
        return {
            c.id: c.labels.get(NAME_LABEL, "")
            for c in docker_client.containers.list(
                all=True, filters={"label": f"{RUNNER_LABEL}={room_label}"}, ignore_removed=True
            )
        }

    _, analyst, spec = sleepy_job_spec(room.org, tmp_path, 300, 15)
    jobs = [analyst.submit_job(spec)["id"] for _ in range(2)]

    by_runner: dict[str, str] = {}  # runner name -> its job, once both jobs' compute containers run
    deadline = time.monotonic() + 120
    while len(by_runner) < 2:
        assert time.monotonic() < deadline, f"the jobs did not both reach compute:\n{a.proc.tail()}\n{b.proc.tail()}"
        for job_id in jobs:
            running = [
                c
                for c in job_containers(docker_client, job_id)
                if c.labels.get("cleanroom.phase") == "compute" and c.status == "running"
            ]
            if running and room.admin.get_job(job_id)["phase"] == "compute":
                by_runner[running[0].labels[NAME_LABEL]] = job_id
        time.sleep(0.1)
    assert sorted(by_runner) == ["a", "b"]  # one job on each runner

    # a third runner starts while both run jobs: it removes nothing of theirs (jobs' or warm containers)
    before = ours()
    assert {"a", "b"} <= set(before.values())
    c = NamedRunner(procs, room, home, "c", CLEANROOM_WARM_POOL="false")
    c.start()
    after = ours()
    assert set(before) <= set(after), f"runner c removed {set(before) - set(after)}\n{c.proc.tail()}"
    assert {room.admin.get_job(j)["status"] for j in jobs} == {"running"}

    # runner a is killed -9 mid-job and restarts under its name: its job is re-queued, its old containers go
    assert a.proc is not None
    a.proc.kill9()
    a_old = [cid for cid, name in ours().items() if name == "a"]
    assert a_old, "the killed runner's containers should still be there"
    a.start()
    assert not set(a_old) & set(ours()), "the restarted runner left its earlier process's containers"

    for job_id in jobs:
        assert room.end_time_budget(job_id, timeout=240)["status"] == "succeeded", (
            f"{room.admin.get_job(job_id)}\n{a.proc.tail()}\n{b.proc.tail()}"
        )
    # b's job ran once, untouched by c's start and a's restart; a's job ran again after a's restart
    assert _starts(room, by_runner["b"]).count("job.started") == 1
    assert "job.requeued" not in _starts(room, by_runner["b"])
    assert _starts(room, by_runner["a"]).count("job.started") == 2 and "job.requeued" in _starts(room, by_runner["a"])
    assert all(job_containers(docker_client, j) == [] for j in jobs)
