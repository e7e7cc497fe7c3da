"""The runner's job on its failure paths, fast: a real room (the API over HTTP), the real runner job
(`cleanroom.runner.execute.JobRun`), and the phases as plain subprocesses (tests/fakes/phase_runner.py)
that misbehave on demand. No Docker: the isolation itself is tested by the container tests.

Each failure asserts what the runner reported (status, error class, reason: the input owner sees them),
what the analyst sees (only that nothing was released, at the outcome time), that the failure's detail
is in the job log encrypted to the owners only, and that nothing is half-written (no release, every
phase closed and its process reaped). A control job succeeds through the same fake.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cleanroom import scenario
from cleanroom.errors import NotFound, PermissionDenied
from cleanroom.prepare.ingest import new_join_secret
from cleanroom.runner.api_client import RunnerAPI
from cleanroom.runner.execute import JobRun
from cleanroom.runner.phases import Phase
from cleanroom.runner.service import load_room_key
from cleanroom.settings import Settings
from tests.fakes.phase_runner import Fault, SubprocessPhases

REPO = Path(__file__).resolve().parent.parent
ANALYST = "acme-analytics"
DATASET = "retail.purchases"
AGGREGATE = {
    "name": "spend_by_region",
    "group_by": ["region"],
    "metrics": [{"agg": "count"}, {"agg": "mean", "column": "spend"}],
}
PER_ROW = """from cleanroom.hookspecs import hookimpl


@hookimpl
def analysis_spec(columns, params):
    return {"name": "rows", "group_by": ["_pid", "spend"], "metrics": [{"agg": "count"}]}
"""


@pytest.fixture
def world(room: Any, tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A room whose runner key is registered (the runner's job runs in the test), an owner's dataset, an
    analyst with the group-aggregate plugin the owner approved."""
    home = tmp_path / "runner-home"
    keys = load_room_key(home)
    api = RunnerAPI(room.url, room.runner_token)
    api.register(keys.enc_public, keys.sign_public)
    owner, analyst = room.org("retailer", "owner"), room.org(ANALYST, "analyst")
    files = scenario.write_data(tmp_path / "data", 200)
    owner.upload_dataset(
        files["retail"],
        name=DATASET,
        policy=scenario.RETAIL_POLICY,
        id_column="customer_id",
        join_secret=new_join_secret(),
    )
    plugin = analyst.submit_plugin(REPO / "plugins" / "group-aggregate")["id"]
    owner.decide_plugin(plugin, DATASET)
    settings = Settings(url=room.url, runner_home=home, job_timeout_seconds=60)
    with api:
        yield SimpleNamespace(
            room=room, api=api, keys=keys, owner=owner, analyst=analyst, plugin=plugin, settings=settings, tmp=tmp_path
        )


def spec(plugin: str, params: dict[str, Any], name: str = "paths") -> str:
    steps = json.dumps(params).replace('": ', '" = ').replace("{", "{ ").replace("}", " }")
    return (
        f'name = "{name}"\nrecipient = "{ANALYST}"\n\n[[inputs]]\ndataset = "{DATASET}"\n\n'
        f'[[steps]]\nplugin = "{plugin}"\nparams = {steps}\n\n[outputs]\naggregates = true\n'
    )


def run_job(
    w: SimpleNamespace, phases: SubprocessPhases, plugin: str | None = None, params: dict[str, Any] | None = None
) -> str:
    """Submit a job as the analyst, claim it as the runner and run it through `phases`; its id."""
    job = w.analyst.submit_job(spec(plugin or w.plugin, AGGREGATE if params is None else params))
    assert w.api.claim() == job["id"]
    JobRun(w.api, phases, w.keys, job["id"], w.settings).run()
    return str(job["id"])


def outcome(w: SimpleNamespace, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the owner's view, the analyst's view) once the job's outcome time has come."""
    full = w.room.end_time_budget(job_id, timeout=30)
    return w.owner.get_job(job_id), w.analyst.get_job(job_id) | {"_admin": full}


def assert_failed_closed(
    w: SimpleNamespace, phases: SubprocessPhases, job_id: str, status: str, error_class: str, reason: str
) -> str:
    """The owner sees the status, class and reason; the analyst only `nothing_released`; no release; every
    phase closed. Returns the job log (which only the owner can read)."""
    owned, seen = outcome(w, job_id)
    assert (owned["status"], owned["error_class"]) == (status, error_class), owned
    assert reason in owned["reason"], owned["reason"]
    assert owned["release_id"] is None and seen["_admin"]["release_id"] is None
    assert seen["status"] == "nothing_released" and seen["error_class"] is None and seen["phase"] is None
    assert "reason" not in seen and seen["release_id"] is None
    assert phases.all_closed(), [(b.phase, b.closed, b.proc.returncode) for b in phases.started]
    with pytest.raises((PermissionDenied, NotFound)):
        w.analyst.job_logs(job_id)
    log = w.owner.job_logs(job_id)
    assert f"job failed: {error_class}" in log
    return log


def test_control_a_job_succeeds_through_the_fake(world: SimpleNamespace, tmp_path: Path) -> None:
    phases = SubprocessPhases(world.settings)
    job_id = run_job(world, phases)
    assert sorted(phases.phases_of(job_id)) == sorted([Phase.MOCK, Phase.COMPUTE, Phase.RELEASE])
    assert phases.all_closed()
    owned = world.owner.get_job(job_id)
    assert owned["status"] == "succeeded" and owned["error_class"] is None and owned["release_id"]
    world.owner.approve_release(job_id)  # the retailer reviews every release
    world.room.end_time_budget(job_id, timeout=30)
    assert world.analyst.get_job(job_id)["status"] == "released"
    world.analyst.get_result(job_id, tmp_path / "out")
    receipt = json.loads((tmp_path / "out" / "receipt.json").read_text())
    assert receipt["body"]["isolation"]["compute"]["fake"] == "subprocess"  # the receipt says what ran it
    assert (tmp_path / "out" / "aggregates" / "spend_by_region.csv").exists()


@pytest.mark.parametrize(
    ("fault", "status", "error_class", "reason"),
    [
        (Fault.HANG, "timed_out", "timeout", "the compute phase ran past the time limit"),
        (Fault.OOM, "failed", "out_of_memory", "the compute phase ran out of memory"),
        (Fault.GARBAGE, "failed", "protocol_error", "the compute phase answered an invalid message"),
        (Fault.CRASH, "failed", "sandbox_crash", "the compute phase exited with an error"),
        (Fault.FLOOD, "failed", "output_too_large", "the compute phase wrote more than the output limit"),
        (Fault.NO_START, "failed", "sandbox_error", "the fake refused to start the compute phase"),
    ],
)
def test_a_compute_phase_that_misbehaves_fails_the_job_closed(
    world: SimpleNamespace, fault: Fault, status: str, error_class: str, reason: str
) -> None:
    phases = SubprocessPhases(world.settings, {Phase.COMPUTE: fault}, timeout_seconds=3)
    if fault is Fault.FLOOD:
        world.settings.job_max_output_bytes = 2**20
    job_id = run_job(world, phases)
    log = assert_failed_closed(world, phases, job_id, status, error_class, reason)
    if fault is not Fault.NO_START:  # (a phase that cannot start fails the job before the mock run is read)
        assert "--- mock run (exit 0" in log  # the mock run was fine: only the real run failed
        assert phases.fed[Phase.COMPUTE].is_set()
    if fault is Fault.CRASH:
        assert "boom in the phase" in log  # the phase's stderr, for the owners
    assert Phase.RELEASE in phases.phases_of(job_id)  # started early, closed unfed
    assert not phases.fed[Phase.RELEASE].is_set()


def test_a_mock_run_that_crashes_fails_the_job_before_the_real_run(world: SimpleNamespace) -> None:
    phases = SubprocessPhases(world.settings, {Phase.MOCK: Fault.CRASH})
    job_id = run_job(world, phases)
    assert_failed_closed(
        world,
        phases,
        job_id,
        "failed",
        "sandbox_crash",
        "the pipeline exited with an error on the inputs' mock data (the mock run)",
    )
    assert not phases.fed[Phase.COMPUTE].is_set()  # the real data never reached a phase


def test_a_job_cancelled_mid_run_stops_and_reports_nothing(world: SimpleNamespace) -> None:
    phases = SubprocessPhases(world.settings, {Phase.COMPUTE: Fault.HANG}, timeout_seconds=60)
    job = world.analyst.submit_job(spec(world.plugin, AGGREGATE))
    assert world.api.claim() == job["id"]
    runner = threading.Thread(target=JobRun(world.api, phases, world.keys, job["id"], world.settings).run)
    runner.start()
    assert phases.fed[Phase.COMPUTE].wait(30), "the compute phase never got its request"
    world.analyst.cancel_job(job["id"])
    runner.join(30)
    assert not runner.is_alive(), "the job did not stop at its cancellation"
    assert phases.all_closed()
    owned = world.owner.get_job(job["id"])
    assert owned["status"] == "cancelled" and owned["release_id"] is None
    assert owned["error_class"] is None  # the runner reported nothing after the cancellation
    with pytest.raises(NotFound):  # and uploaded no log
        world.owner.job_logs(job["id"])


def test_a_release_phase_that_refuses_the_outputs_fails_the_job(world: SimpleNamespace, tmp_path: Path) -> None:
    folder = tmp_path / "per-row"
    folder.mkdir()
    (folder / "plugin.py").write_text(PER_ROW)
    manifest = (REPO / "plugins" / "group-aggregate" / "cleanroom-plugin.toml").read_text()
    (folder / "cleanroom-plugin.toml").write_text(manifest.replace('name = "group-aggregate"', 'name = "per-row"'))
    per_row = world.analyst.submit_plugin(folder)["id"]
    world.owner.decide_plugin(per_row, DATASET)
    phases = SubprocessPhases(world.settings)
    job_id = run_job(world, phases, per_row)
    assert phases.fed[Phase.RELEASE].is_set()  # the real release phase ran its checks and refused
    log = assert_failed_closed(world, phases, job_id, "failed", "release_check_failed", "release checks failed")
    assert "--- release phase (exit 0" in log


def test_nothing_selects_the_fake_in_production() -> None:
    """The fake lives under tests/ only: no module of the package names it, and the runner service builds
    the Docker phase runner unless a caller hands it another one."""
    package = REPO / "cleanroom"
    assert not [
        p for p in package.rglob("*.py") if "SubprocessPhases" in p.read_text() or "tests.fakes" in p.read_text()
    ]
    assert "fake" not in (package / "settings.py").read_text().lower()
