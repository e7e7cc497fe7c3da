"""Fault injection: kill -9 the API mid-upload, kill -9 the runner mid-phase, run out of disk.

(a) `cleanroom serve` runs as a subprocess; it is killed while a large PUT streams in, then started
    again on the same data directory: nothing is half-visible, the upload can be retried, and the
    audit chain verifies.
(b) `cleanroom runner` runs as a subprocess against an in-test API; it is killed while a job's
    compute (and, in another job, release) container runs; a new runner cleans up the orphan
    container, re-queues the job and runs it to success; killed during both attempts, the job fails
    with a reason instead of looping. No sandbox container is left; the audit chain verifies.
(c) A full disk (a 20 MiB tmpfs as the API's data directory) and a small CLEANROOM_MAX_UPLOAD_BYTES:
    an upload that does not fit fails with a JSON error, leaves nothing behind, and the API serves on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cleanroom import scenario
from cleanroom.client import Client
from cleanroom.crypto import encrypt_bytes, generate_keypair
from cleanroom.profile import Profile
from tests.conftest import free_port
from tests.scenario_setup import setup_scenario

REPO = Path(__file__).resolve().parent.parent
AGE_MAGIC = b"age-encryption.org/v1\n"
CLI = [sys.executable, "-c", "from cleanroom.cli import main; main()"]
pytestmark = pytest.mark.slow


# Processes --------------------------------------------------------------------------------------


class Proc:
    """A `cleanroom` subprocess with its output in a file (for the failure message)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.proc = subprocess.Popen(
            [*CLI, *args], env=full_env, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._out.close()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def audit_verifies(url: str, token: str) -> None:
    """`cleanroom audit verify` (the client-side check of the hash chain) exits 0."""
    done = cli(["audit", "verify"], {"CLEANROOM_URL": url, "CLEANROOM_TOKEN": token})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "intact" in done.stdout + done.stderr, done.stdout + done.stderr


class Server:
    """`cleanroom serve` on a data directory, restartable on the same port."""

    def __init__(self, procs: list[Proc], data_dir: Path, log: Path, **env: str) -> None:
        self.procs = procs
        self.data_dir = data_dir
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = f"crt_{secrets.token_hex(8)}.{secrets.token_urlsafe(32)}"
        self.env = {
            "CLEANROOM_DATA_DIR": str(data_dir),
            "CLEANROOM_HOST": "127.0.0.1",
            "CLEANROOM_PORT": str(self.port),
            "CLEANROOM_BOOTSTRAP_TOKEN": self.admin_token,
            "CLEANROOM_RUNNER_TOKEN_FILE": str(data_dir.parent / "runner-token"),
            **env,
        }
        self.proc: Proc | None = None

    def start(self) -> None:
        self.proc = Proc(["serve"], self.env, self.log)
        self.procs.append(self.proc)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.proc.poll() is None, f"the API exited:\n{self.proc.tail()}"
            assert time.monotonic() < deadline, f"the API did not start:\n{self.proc.tail()}"
            time.sleep(0.1)

    @property
    def runner_token(self) -> str:
        return (self.data_dir.parent / "runner-token").read_text().strip()

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {token or self.admin_token}"}


def register_room_key(url: str, runner_token: str) -> Any:
    """What a runner does on its first start: publish the room's public keys."""
    keys = generate_keypair()
    httpx.post(
        url + "/runner/register",
        headers={"authorization": f"Bearer {runner_token}"},
        json={"enc_public": keys.enc_public, "sign_public": keys.sign_public},
    ).raise_for_status()
    return keys


def owner_token(url: str, admin_headers: dict[str, str], name: str = "retailer") -> str:
    resp = httpx.post(url + "/orgs", headers=admin_headers, json={"name": name, "roles": ["owner"]})
    resp.raise_for_status()
    return str(resp.json()["token"])


def declare(url: str, token: str, name: str, data_sha: str, size: int) -> str:
    resp = httpx.post(
        url + "/datasets/uploads",
        headers={"authorization": f"Bearer {token}"},
        json={
            # no [columns.X] rules or recipients: the room refuses rules for missing columns and unknown orgs
            "name": name,
            "policy": "[privacy]\nk = 10\n",
            "row_count": 1,
            "mock": [],
            "schema": {"columns": [{"name": "_pid", "type": "string"}]},
            "sha256": data_sha,
            "size": size,
        },
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["put"])


def blob_files(data_dir: Path) -> dict[str, list[Path]]:
    blobs = data_dir / "blobs"
    return {
        "tmp": sorted((blobs / "tmp").iterdir()) if (blobs / "tmp").exists() else [],
        "final": sorted(p for p in blobs.glob("??/*") if p.is_file()),
    }


# (a) the API killed during an upload -------------------------------------------------------------


def test_api_killed_mid_upload_leaves_nothing_and_the_retry_succeeds(tmp_path: Path, procs: list[Proc]) -> None:
    server = Server(procs, tmp_path / "api" / "data", tmp_path / "api.log")
    server.data_dir.parent.mkdir(parents=True)
    server.start()
    keys = register_room_key(server.url, server.runner_token)
    owner = owner_token(server.url, server.headers())
    ciphertext = encrypt_bytes(os.urandom(24 * 2**20), [keys.enc_public])  # a real age file, 24 MiB
    sha = hashlib.sha256(ciphertext).hexdigest()
    put = declare(server.url, owner, "retail.big", sha, len(ciphertext))

    halfway, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def chunks() -> Iterator[bytes]:
        step = 1 << 20
        for offset in range(0, len(ciphertext), step):
            if offset == len(ciphertext) // 2 // step * step:
                halfway.set()
                release.wait(30)  # hold the stream open, half sent, until the server is dead
            yield ciphertext[offset : offset + step]

    def upload() -> None:
        try:
            outcome["response"] = httpx.put(
                server.url + put,
                content=chunks(),
                headers={"authorization": f"Bearer {owner}", "content-type": "application/octet-stream"},
                timeout=60,
            )
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    assert halfway.wait(30), "the upload did not start"
    deadline = time.monotonic() + 10
    while not any(p.stat().st_size > 0 for p in blob_files(server.data_dir)["tmp"]):
        assert time.monotonic() < deadline, "no staged upload file appeared"
        time.sleep(0.05)
    assert server.proc is not None
    server.proc.kill9()  # mid-stream: about half of the ciphertext is in a staged temp file
    release.set()
    sender.join(30)
    assert "error" in outcome, f"the upload should have broken, got {outcome}"
    staged = blob_files(server.data_dir)
    assert staged["tmp"] and not staged["final"], staged  # the kill left a partial temp file, nothing else

    server.start()  # same data directory, same port
    admin = server.headers()
    assert blob_files(server.data_dir) == {"tmp": [], "final": []}  # stale partial upload cleared on start
    assert httpx.get(server.url + "/datasets/retail.big", headers=admin).status_code == 404
    assert httpx.get(server.url + "/datasets", headers=admin).json()["items"] == []
    events = httpx.get(server.url + "/audit", headers=admin).json()["events"]
    assert not [e for e in events if e["action"] == "dataset.uploaded"]

    # the declaration survived: the same PUT is simply retried
    resp = httpx.put(
        server.url + put,
        content=ciphertext,
        timeout=60,
        headers={"authorization": f"Bearer {owner}", "content-type": "application/octet-stream"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["sha256"] == sha
    assert httpx.get(server.url + "/datasets/retail.big", headers=admin).json()["sha256"] == sha
    files = blob_files(server.data_dir)
    assert files["tmp"] == [] and [p.name for p in files["final"]] == [sha]
    audit_verifies(server.url, server.admin_token)


# (a2) shared blobs: a killed upload of bytes a record references, and a killed sweep ----------------


def server_client(server: Server, token: str, name: str) -> Client:
    return Client(server.url, token, profile=Profile(name=f"{name}-{server.port}"))


def org_maker(server: Server) -> Any:
    admin = server_client(server, server.admin_token, "admin")

    def make(name: str, role: str) -> Client:
        client = server_client(server, admin.create_org(name, [role])["token"], name)
        client.keys()
        return client

    return make


def age_blobs(data_dir: Path, seconds: float = 3 * 86400) -> None:
    t = time.time() - seconds
    for path in (data_dir / "blobs").glob("??/*"):
        os.utime(path, (t, t))


def admin_check(server: Server) -> subprocess.CompletedProcess[str]:
    return cli(["--json", "admin", "check"], {"CLEANROOM_URL": server.url, "CLEANROOM_TOKEN": server.admin_token})


def test_api_killed_mid_upload_of_a_release_artifacts_bytes_keeps_the_artifact(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """An input owner streams the bytes of a release artifact as a dataset; the API is killed halfway;
    after the restart the artifact is intact, `admin check` passes, the retry completes (two records,
    one blob), and a sweep over aged blobs keeps it."""
    from tests.redteam.test_storage import released_job

    server = Server(procs, tmp_path / "api" / "data", tmp_path / "api.log")
    server.data_dir.parent.mkdir(parents=True)
    server.start()
    register_room_key(server.url, server.runner_token)
    retailer, bank, analyst, _, ids = setup_scenario(org_maker(server), tmp_path, 200, approve=True)
    release = released_job(server.url, server.runner_token, analyst, retailer, bank, ids)
    # a big artifact would take long to make; the stream is held halfway instead
    artifact = release["artifact"]
    sha = hashlib.sha256(artifact).hexdigest()
    put = declare(server.url, retailer.token, "retail.artifact-copy", sha, len(artifact))
    halfway, release_stream = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def chunks() -> Iterator[bytes]:
        yield artifact[: len(artifact) // 2]
        halfway.set()
        release_stream.wait(30)
        yield artifact[len(artifact) // 2 :]

    def upload() -> None:
        try:
            outcome["response"] = httpx.put(
                server.url + put,
                content=chunks(),
                timeout=60,
                headers={"authorization": f"Bearer {retailer.token}", "content-type": "application/octet-stream"},
            )
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    assert halfway.wait(30)
    deadline = time.monotonic() + 10
    while not blob_files(server.data_dir)["tmp"]:  # the PUT is being staged (half of it is in flight)
        assert time.monotonic() < deadline, "no staged upload file appeared"
        time.sleep(0.05)
    time.sleep(0.2)
    assert server.proc is not None
    server.proc.kill9()
    release_stream.set()
    sender.join(30)
    assert "error" in outcome, outcome

    server.start()
    assert retailer.request("GET", f"/releases/{release['id']}/artifacts/metrics.json").content == artifact
    checked = admin_check(server)
    assert checked.returncode == 0 and json.loads(checked.stdout)["ok"], checked.stdout + checked.stderr
    # the retry of the same PUT completes: the dataset and the artifact now share one blob
    resp = httpx.put(
        server.url + put,
        content=artifact,
        timeout=60,
        headers={"authorization": f"Bearer {retailer.token}", "content-type": "application/octet-stream"},
    )
    assert resp.status_code == 200 and resp.json()["sha256"] == sha, resp.text
    age_blobs(server.data_dir)
    swept = httpx.post(server.url + "/admin/storage/sweep", json={}, headers=server.headers()).json()
    assert sha not in swept["deleted"]
    assert retailer.request("GET", f"/releases/{release['id']}/artifacts/metrics.json").content == artifact
    assert admin_check(server).returncode == 0
    audit_verifies(server.url, server.admin_token)


def test_api_killed_mid_sweep_loses_nothing_referenced_and_the_next_sweep_finishes(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """Thousands of old orphans make the sweep's delete step take a while; the API is killed during
    it. After the restart the referenced ciphertext is intact, `admin check` passes and names the
    interrupted sweep, and the next sweep removes the rest of the orphans."""
    import sqlite3

    server = Server(procs, tmp_path / "api" / "data", tmp_path / "api.log")
    server.data_dir.parent.mkdir(parents=True)
    server.start()
    keys = register_room_key(server.url, server.runner_token)
    owner = owner_token(server.url, server.headers())
    ciphertext = encrypt_bytes(os.urandom(2**20), [keys.enc_public])
    sha = hashlib.sha256(ciphertext).hexdigest()
    put = declare(server.url, owner, "retail.kept", sha, len(ciphertext))
    resp = httpx.put(
        server.url + put,
        content=ciphertext,
        timeout=60,
        headers={"authorization": f"Bearer {owner}", "content-type": "application/octet-stream"},
    )
    assert resp.status_code == 200, resp.text
    blobs = server.data_dir / "blobs"
    orphans = 30000
    for i in range(orphans):  # what failed uploads left over time, as files named by their hash
        data = f"orphan {i}".encode()
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest[:2]).mkdir(exist_ok=True)
        (blobs / digest[:2] / digest).write_bytes(data)
    age_blobs(server.data_dir)

    sweeper = threading.Thread(
        target=lambda: _quiet_post(server.url + "/admin/storage/sweep", server.headers()), daemon=True
    )
    sweeper.start()
    db = sqlite3.connect(f"file:{server.data_dir / 'cleanroom.db'}?mode=ro", uri=True, timeout=30)
    deadline = time.monotonic() + 120
    while not (planned := db.execute("SELECT details FROM audit WHERE action = 'storage.sweep_planned'").fetchone()):
        assert time.monotonic() < deadline, "the sweep did not plan"
        time.sleep(0.002)
    first = json.loads(planned[0])["blobs"][0]  # the delete step goes in this order
    while (blobs / first[:2] / first).exists():
        assert time.monotonic() < deadline, "the sweep did not start deleting"
        time.sleep(0.001)
    assert server.proc is not None
    server.proc.kill9()  # during the delete step
    sweeper.join(30)
    swept_before_kill = db.execute("SELECT 1 FROM audit WHERE action = 'storage.swept'").fetchone()
    db.close()
    left = sum(1 for _ in blobs.glob("??/*"))
    assert not swept_before_kill and 1 < left < orphans + 1, (left, swept_before_kill)  # killed mid-way

    server.start()
    assert (
        httpx.get(
            server.url + "/runner/datasets/retail.kept/ciphertext",
            headers={"authorization": f"Bearer {server.runner_token}"},
        ).content
        == ciphertext
    )
    checked = admin_check(server)
    report = json.loads(checked.stdout)
    assert checked.returncode == 0 and report["ok"] and report["interrupted_sweep"], checked.stdout
    done = cli(["admin", "sweep"], {"CLEANROOM_URL": server.url, "CLEANROOM_TOKEN": server.admin_token})
    assert done.returncode == 0 and "deleted" in done.stderr, done.stdout + done.stderr
    report = json.loads(admin_check(server).stdout)
    assert report["ok"] and report["orphans"] == [] and report["interrupted_sweep"] is None, report
    assert [p.name for p in blobs.glob("??/*")] == [sha]
    audit_verifies(server.url, server.admin_token)


def _quiet_post(url: str, headers: dict[str, str]) -> None:
    try:
        httpx.post(url, json={}, headers=headers, timeout=120)
    except httpx.HTTPError:
        pass  # the server is killed mid-request


# (b) the runner killed during a phase -------------------------------------------------------------

SLEEPY_MANIFEST = """\
name = "sleepy"
version = "1.0.0"
kind = "preprocess"
entry = "plugin.py"
description = "Waits, so that a fault-injection test can catch the job in its compute phase."

[params.seconds]
type = "number"
default = 5
description = "how long to wait"
"""

SLEEPY_CODE = '''"""Waits, so that a fault-injection test can catch the job in its compute phase."""

import time

from cleanroom.hookspecs import hookimpl


@hookimpl
def preprocess(df, params):
    time.sleep(params["seconds"])
    return df
'''


def sleepy_job_spec(room_org: Any, tmp_path: Path, customers: int, seconds: float) -> tuple[Any, Any, str]:
    """The scenario with a `sleepy` first step, approved by both owners: (retailer, analyst, job spec)."""
    retailer, bank, analyst, _, ids = setup_scenario(room_org, tmp_path, customers, approve=True)
    sleepy = tmp_path / "sleepy"
    sleepy.mkdir()
    (sleepy / "cleanroom-plugin.toml").write_text(SLEEPY_MANIFEST)
    (sleepy / "plugin.py").write_text(SLEEPY_CODE)
    sleepy_id = analyst.submit_plugin(sleepy)["id"]
    retailer.decide_plugin(sleepy_id, "retail.purchases")
    bank.decide_plugin(sleepy_id, "bank.customers")
    spec = scenario.job_spec(ids).replace(
        '[join]\nhow = "inner"\n',
        f'[join]\nhow = "inner"\n\n[[steps]]\nplugin = "{sleepy_id}"\nparams = {{ seconds = {seconds} }}\n',
    )
    return retailer, analyst, spec


def _containers(docker_client: Any, job_id: str) -> list[Any]:
    from tests.dockerutil import job_containers

    return job_containers(docker_client, job_id)


class RunnerProc:
    """`cleanroom runner` as a subprocess, with a runner home that survives restarts (the room key)."""

    def __init__(self, procs: list[Proc], room: Any, home: Path, log: Path) -> None:
        self.procs, self.room, self.home, self.log = procs, room, home, log
        self.env = {
            "CLEANROOM_URL": room.url,
            "CLEANROOM_TOKEN": room.runner_token,
            "CLEANROOM_RUNNER_HOME": str(home),
            "CLEANROOM_POLL_SECONDS": "0.2",
            "CLEANROOM_JOB_TIMEOUT_SECONDS": "180",
            "CLEANROOM_SANDBOX_IMAGE": os.environ["CLEANROOM_SANDBOX_IMAGE"],
        }
        self.proc: Proc | None = None

    def start(self) -> Proc:
        """Start a runner; return once it registered the room key, removed orphans and recovered jobs."""
        heartbeat = self.home / "heartbeat"  # written by the service loop, after its start-up work
        heartbeat.unlink(missing_ok=True)
        self.proc = Proc(["runner"], self.env, self.log)
        self.procs.append(self.proc)
        deadline = time.monotonic() + 60
        while not (heartbeat.exists() and self.room.admin.room().get("ready")):
            assert self.proc.proc.poll() is None, f"the runner exited:\n{self.proc.tail()}"
            assert time.monotonic() < deadline, f"the runner did not start:\n{self.proc.tail()}"
            time.sleep(0.1)
        return self.proc


def kill_runner_during(runner: RunnerProc, room: Any, docker_client: Any, job_id: str, phase: str) -> None:
    """Wait until the job's `phase` container runs (and the API shows the phase), then kill -9 the runner."""
    deadline = time.monotonic() + 180
    while True:
        job = room.admin.get_job(job_id)
        assert job["status"] in ("queued", "running"), f"the job ended before its {phase} phase: {job}"
        running = [
            c
            for c in _containers(docker_client, job_id)
            if c.labels.get("cleanroom.phase") == phase and c.status == "running"
        ]
        if job["phase"] == phase and running:
            break
        assert runner.proc is not None
        assert time.monotonic() < deadline, f"the job never reached {phase}: {job}\n{runner.proc.tail()}"
        time.sleep(0.05)
    assert runner.proc is not None
    runner.proc.kill9()
    assert _containers(docker_client, job_id), "the killed runner's sandbox container should still be there"
    assert room.admin.get_job(job_id)["status"] == "running"


@pytest.mark.docker
@pytest.mark.parametrize("phase", ["compute", "release", "compute-twice"])
def test_runner_killed_mid_phase_requeues_the_job(room: Any, tmp_path: Path, procs: list[Proc], phase: str) -> None:
    from tests.dockerutil import require_docker, require_image

    docker_client = require_docker()
    require_image(docker_client, "CLEANROOM_SANDBOX_IMAGE")
    runner = RunnerProc(procs, room, tmp_path / "runner-home", tmp_path / "runner.log")
    runner.start()

    retailer, analyst, spec = sleepy_job_spec(room.org, tmp_path, 1000, 5 if phase.startswith("compute") else 0)
    job_id = analyst.submit_job(spec)["id"]

    kills = 2 if phase == "compute-twice" else 1
    for _ in range(kills):
        kill_runner_during(runner, room, docker_client, job_id, phase.removesuffix("-twice"))
        restarted = runner.start()  # same runner home: same room key; removes its orphans, re-queues the job

    final = room.end_time_budget(job_id, timeout=240)
    actions = []  # a running job's events join the chain at its outcome time, inside one job.ended event
    for e in room.admin.audit_events():
        if e["object_id"] == job_id:
            actions += [h["action"] for h in e["details"]["events"]] if e["action"] == "job.ended" else [e["action"]]
    if kills == 1:
        assert final["status"] == "succeeded", f"{final}\n{restarted.tail()}"
        assert actions.count("job.started") == 2 and "job.requeued" in actions, actions
        assert retailer.get_release(job_id)["id"]
    else:  # the runner died during the job on both attempts: the job fails, with a reason, and no release
        assert final["status"] == "failed" and final["error_class"] == "runner_restart", final
        assert "restarted" in retailer.get_job(job_id)["reason"]  # owners see the reason; analysts, nothing
        assert analyst.get_job(job_id)["status"] == "nothing_released"
        assert actions.count("job.started") == 2 and actions[-1] == "job.failed", actions
        assert room.admin.get_job(job_id)["release_id"] is None

    assert _containers(docker_client, job_id) == [], "a sandbox container of the job was left behind"
    audit_verifies(room.url, room.admin_token)


# (c) disk full and upload limits --------------------------------------------------------------------


def _put(url: str, token: str, put: str, data: bytes) -> httpx.Response:
    return httpx.put(
        url + put,
        content=data,
        timeout=60,
        headers={"authorization": f"Bearer {token}", "content-type": "application/octet-stream"},
    )


def _error_json(resp: httpx.Response) -> dict[str, Any]:
    assert resp.headers["content-type"].startswith("application/json"), resp.text[:200]
    body = resp.json()
    assert isinstance(body, dict) and body.get("error") and body.get("message"), body
    assert "Traceback" not in resp.text and "/" + "tmp" not in body["message"], body
    return body


def test_upload_over_the_size_limit_fails_cleanly(tmp_path: Path, procs: list[Proc]) -> None:
    limit = 2**20
    server = Server(procs, tmp_path / "api" / "data", tmp_path / "api.log", CLEANROOM_MAX_UPLOAD_BYTES=str(limit))
    server.data_dir.parent.mkdir(parents=True)
    server.start()
    keys = register_room_key(server.url, server.runner_token)
    owner = owner_token(server.url, server.headers())

    # declared larger than the limit: refused before any byte is sent
    too_big = httpx.post(
        server.url + "/datasets/uploads",
        headers=server.headers(owner),
        json={
            "name": "big.one",
            "policy": scenario.BANK_POLICY,
            "row_count": 1,
            "mock": [],
            "schema": {"columns": [{"name": "_pid", "type": "string"}]},
            "sha256": "ab" * 32,
            "size": limit + 1,
        },
    )
    assert too_big.status_code == 413 and _error_json(too_big)["error"]

    # declared small, but the stream is larger than declared: cut off at the limit
    data = AGE_MAGIC + os.urandom(limit + 2**19)
    put = declare(server.url, owner, "sneaky.one", hashlib.sha256(data[: limit // 2]).hexdigest(), limit // 2)
    resp = _put(server.url, owner, put, data)
    assert resp.status_code == 413, resp.text
    _error_json(resp)
    assert blob_files(server.data_dir) == {"tmp": [], "final": []}
    assert httpx.get(server.url + "/datasets", headers=server.headers()).json()["items"] == []

    # the API serves on, and an upload that fits goes through
    good = encrypt_bytes(b"_pid\nabc\n", [keys.enc_public])
    put = declare(server.url, owner, "small.one", hashlib.sha256(good).hexdigest(), len(good))
    assert _put(server.url, owner, put, good).status_code == 200
    audit_verifies(server.url, server.admin_token)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MiB tmpfs (needs root, or CAP_SYS_ADMIN in a container)."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_during_upload_fails_cleanly_and_the_api_serves_on(small_disk: Path) -> None:
    from tests.conftest import Room

    room = Room(small_disk / "data")
    # uvicorn logs the 500's traceback after answering; on CPython < 3.11.8 that can race pytest's own
    # use of `ast` when it formats a failure (pytest-dev/pytest#10763): keep it quiet
    logging.getLogger("uvicorn.error").disabled = True
    try:
        keys = register_room_key(room.url, room.runner_token)
        owner = owner_token(room.url, {"authorization": f"Bearer {room.admin_token}"})
        blobs = small_disk / "data"
        stats = os.statvfs(small_disk)
        free = stats.f_bavail * stats.f_frsize
        # a little more than what is free: the disk fills near the end of the stream
        data = AGE_MAGIC + os.urandom(free + 2**20)
        put = declare(room.url, owner, "retail.huge", hashlib.sha256(data).hexdigest(), len(data))
        resp = _put(room.url, owner, put, data)
        assert resp.status_code == 507 and "disk is full" in resp.text, resp.text
        body = _error_json(resp)
        assert blob_files(blobs) == {"tmp": [], "final": []}, "a partial upload was left on the full disk"
        after = os.statvfs(small_disk)
        assert after.f_bavail * after.f_frsize > free - 2**20  # the space came back
        admin = {"authorization": f"Bearer {room.admin_token}"}
        assert httpx.get(room.url + "/health").json()["status"] == "ok"
        assert httpx.get(room.url + "/datasets/retail.huge", headers=admin).status_code == 404

        good = encrypt_bytes(b"_pid\nabc\n", [keys.enc_public])
        put = declare(room.url, owner, "small.one", hashlib.sha256(good).hexdigest(), len(good))
        assert _put(room.url, owner, put, good).status_code == 200
        assert Client(room.url, room.admin_token, profile=Profile(name="disk-full")).audit_verify()["ok"]
        print(json.dumps({"disk_full_answer": resp.status_code, "body": body}))
    finally:
        logging.getLogger("uvicorn.error").disabled = False
        room.stop()


@pytest.mark.docker
def test_sigterm_stops_the_runner_and_removes_its_warm_pool(room: Any, tmp_path: Path, procs: list[Proc]) -> None:
    """`docker stop` (SIGTERM) ends the runner cleanly, warm pool removed; kill -9 (the control) leaves the
    pool behind, and the next start removes it."""
    from tests.dockerutil import require_docker, require_image

    docker_client = require_docker()
    require_image(docker_client, "CLEANROOM_SANDBOX_IMAGE")
    runner = RunnerProc(procs, room, tmp_path / "runner-home", tmp_path / "runner.log")
    runner.start()
    runner_id = room.admin.room()["keys"]["fingerprint"].removeprefix("SHA256:")[:16]

    def warm() -> list[Any]:
        return docker_client.containers.list(
            all=True, filters={"label": ["cleanroom.job=warm", f"cleanroom.runner={runner_id}"]}, ignore_removed=True
        )  # one may go between list and inspect

    def wait_for_pool() -> None:
        deadline = time.monotonic() + 90
        while len(warm()) < 2:
            assert time.monotonic() < deadline, f"no warm pool:\n{runner.proc.tail() if runner.proc else ''}"
            time.sleep(0.2)

    wait_for_pool()
    assert runner.proc is not None
    runner.proc.kill9()  # the control: nothing runs to clean up
    assert len(warm()) == 2

    runner.start()  # removes what the killed runner left, then warms its own pool
    wait_for_pool()
    assert runner.proc is not None
    runner.proc.proc.send_signal(signal.SIGTERM)
    assert runner.proc.proc.wait(timeout=60) == 0, runner.proc.tail()
    assert warm() == [], "the runner left its warm pool behind after SIGTERM"
