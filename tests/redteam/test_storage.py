"""Storage integrity: a member (or a flaky network) tries to make the room lose bytes a record needs.

Blobs are content-addressed and shared, so the attacks aim a failing or retried upload at bytes that
some record references: the uploader's own dataset (a retry), another org's release artifact, a job
log, a plugin bundle, another dataset; and they race uploads against each other and against the
sweep. Each attack is followed by the same proof: the referenced blob still hashes to its name, its
reader still gets the original bytes, `GET /admin/storage/check` is ok, and a sweep over blobs aged
past the grace period keeps it. Each attack class has a harmless control that shows the test can
pass: the honest upload succeeds, the orphan a failure leaves is reported and swept.

Everything goes through the real API over HTTP on a real SQLite file and blob directory; jobs are
finished through the runner's own routes (no sandbox is needed to make a release record).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cleanroom import crypto, scenario
from cleanroom.crypto import encrypt_bytes
from cleanroom.errors import Conflict, NotFound, PermissionDenied, TooLarge, ValidationError
from cleanroom.store.db import dumps
from tests.conftest import Room
from tests.scenario_setup import setup_scenario

CLI = [sys.executable, "-c", "from cleanroom.cli import main; main()"]
DAY = 86400
SCHEMA = {"columns": [{"name": "_pid", "type": "string"}, {"name": "x", "type": "integer"}]}


# The world: a room with datasets, plugins and a released job ----------------------------------------


def released_job(
    url: str, runner_token: str, analyst: Any, retailer: Any, bank: Any, ids: dict[str, str]
) -> dict[str, Any]:
    """A job finished through the runner's routes, with an encrypted artifact and an encrypted log."""

    def runner(method: str, path: str, **kw: Any) -> Any:
        resp = httpx.request(method, url + path, timeout=60, headers={"authorization": f"Bearer {runner_token}"}, **kw)
        assert resp.status_code < 300, f"{method} {path}: {resp.status_code} {resp.text[:300]}"
        return resp.json()

    job = analyst.submit_job(scenario.job_spec(ids))["id"]
    assert runner("POST", "/runner/claim")["job"] == job
    readers = [c.keys().enc_public for c in (analyst, retailer, bank)]
    plain = b'{"metrics": {"r2": 0.5}}'
    artifact = encrypt_bytes(plain, readers)
    log = encrypt_bytes(b"the job's log", readers[1:])
    art = runner("PUT", f"/runner/jobs/{job}/artifacts/metrics.json", content=artifact)
    logged = runner("PUT", f"/runner/jobs/{job}/artifacts/_logs", content=log)
    manifest = {
        "job_id": job,
        "outputs": {"metrics.json": {"sha256": hashlib.sha256(plain).hexdigest(), "bytes": len(plain)}},
        "checks": [],
        "epsilon_spent": 0.0,
        "recipient": "acme-analytics",
    }
    done = runner(
        "POST",
        f"/runner/jobs/{job}/finish",
        json={
            "status": "succeeded",
            "reason": "",
            "log_blob": logged["blob"],
            "release": {
                "manifest": manifest,
                "receipt": {"body": {}, "signature": "", "room_keys": {}},
                "artifacts": {"metrics.json": {"blob": art["blob"], "size": art["size"]}},
                "review_by": ["retail.purchases"],
            },
        },
    )
    return {"job": job, "id": done["release_id"], "artifact": artifact, "log": log}


class World:
    def __init__(self, room: Room, tmp_path: Path) -> None:
        self.room = room
        self.room_keys = crypto.generate_keypair()
        httpx.post(
            room.url + "/runner/register",
            headers={"authorization": f"Bearer {room.runner_token}"},
            json={"enc_public": self.room_keys.enc_public, "sign_public": self.room_keys.sign_public},
        ).raise_for_status()
        self.retailer, self.bank, self.analyst, _, self.ids = setup_scenario(room.org, tmp_path, 200, approve=True)
        self.attacker = room.org("mallory", "owner")  # another owner in the room
        self.release = self._release()

    @property
    def blobs(self) -> Path:
        return self.room.settings.data_dir / "blobs"

    def _release(self) -> dict[str, Any]:
        made = released_job(self.room.url, self.room.runner_token, self.analyst, self.retailer, self.bank, self.ids)
        made["bundle"] = self.analyst.request("GET", f"/plugins/{self.ids['impute']}/bundle").content
        made["dataset"] = httpx.get(
            self.room.url + "/runner/datasets/bank.customers/ciphertext",
            headers={"authorization": f"Bearer {self.room.runner_token}"},
        ).content
        return made

    # what readers get ------------------------------------------------------------------------------
    def read_back(self, kind: str) -> bytes:
        rel = self.release
        if kind == "artifact":  # the reviewing owner downloads it (the recipient after the review)
            return self.retailer.request("GET", f"/releases/{rel['id']}/artifacts/metrics.json").content
        if kind == "log":
            return self.retailer.request("GET", f"/jobs/{rel['job']}/logs").content
        if kind == "bundle":
            return self.analyst.request("GET", f"/plugins/{self.ids['impute']}/bundle").content
        return httpx.get(
            self.room.url + "/runner/datasets/bank.customers/ciphertext",
            headers={"authorization": f"Bearer {self.room.runner_token}"},
        ).content

    def assert_intact(self) -> None:
        """Every referenced blob is there with the right hash, readers get the original bytes, and
        a sweep over everything aged past the grace period deletes nothing referenced."""
        for kind in ("artifact", "log", "bundle", "dataset"):
            assert self.read_back(kind) == self.release[kind], f"the {kind} changed or vanished"
        report = self.room.admin.storage_check()
        assert report["ok"], report
        self.age_all()
        swept = self.room.admin.storage_sweep()
        assert self.room.admin.storage_check()["ok"]
        for kind in ("artifact", "log", "bundle", "dataset"):
            assert self.read_back(kind) == self.release[kind], f"the sweep removed the {kind}"
        assert not set(swept["deleted"]) & set(report_referenced(self.room))

    def age_all(self, seconds: float = 3 * DAY) -> None:
        t = time.time() - seconds
        for path in self.blobs.glob("??/*"):
            os.utime(path, (t, t))


def audit_actions(world: World, object_id: str | None = None) -> list[str]:
    """The audit log's actions, read from the room's database (what every member's view is cut from)."""
    with world.room.store.read() as conn:
        rows = conn.execute("SELECT action, object_id FROM audit ORDER BY seq").fetchall()
    return [r["action"] for r in rows if object_id is None or r["object_id"] == object_id]


def report_referenced(room: Room) -> set[str]:
    from cleanroom.store.sweep import referenced

    with room.store.read() as conn:
        return set(referenced(conn))


@pytest.fixture
def world(room: Room, tmp_path: Path) -> World:
    return World(room, tmp_path)


def declare(client: Any, name: str, data: bytes, **overrides: Any) -> dict[str, Any]:
    # a policy without [columns.X] rules: the room refuses rules for columns the schema lacks
    body = {
        "name": name,
        "description": "",
        "policy": "[privacy]\nk = 10\n",
        "schema": SCHEMA,
        "row_count": 1,
        "mock": [],
        "dropped": [],
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        **overrides,
    }
    return dict(client.post("/datasets/uploads", json=body))


def put(client: Any, decl: dict[str, Any], data: bytes | Iterator[bytes]) -> dict[str, Any]:
    return dict(
        client.request("PUT", decl["put"], content=data, headers={"content-type": "application/octet-stream"}).json()
    )


def fresh(world: World, text: str = "") -> bytes:
    """A new ciphertext to the room key (age, so the API accepts it)."""
    return encrypt_bytes(f"_pid,x\nabc,1\n{text}".encode(), [world.room_keys.enc_public])


# 1. retries of one's own upload ------------------------------------------------------------------


def test_retried_dataset_upload_keeps_its_ciphertext(world: World) -> None:
    owner, data = world.retailer, fresh(world, "retry")
    decl = declare(owner, "retail.retry", data)
    again = declare(owner, "retail.retry", data)  # the client lost the first answer and declares again
    assert again["upload_id"] == decl["upload_id"] and again["retried"] is True
    first = put(owner, decl, data)
    assert first["sha256"] == hashlib.sha256(data).hexdigest() and "already_done" not in first
    # the PUT is retried (the answer was lost): same bytes -> the dataset, nothing removed
    for _ in range(3):
        retry = put(owner, decl, data)
        assert retry["already_done"] is True and retry["sha256"] == first["sha256"]
    # the declaration is retried after the upload is done: it says so and changes nothing
    with pytest.raises(Conflict, match="uploaded already with this ciphertext: nothing to do"):
        declare(owner, "retail.retry", data)
    # a retried PUT with other bytes (a confused client) is refused and stores nothing
    with pytest.raises(Conflict, match="done already"):
        put(owner, decl, fresh(world, "other"))
    # a truncated retry of the done upload is refused too
    with pytest.raises(Conflict, match="done already"):
        put(owner, decl, data[:-5])
    stored = httpx.get(
        world.room.url + "/runner/datasets/retail.retry/ciphertext",
        headers={"authorization": f"Bearer {world.room.runner_token}"},
    ).content
    assert stored == data
    assert audit_actions(world).count("dataset.uploaded") == 3  # 2 scenario + this one
    world.assert_intact()
    assert (
        httpx.get(
            world.room.url + "/runner/datasets/retail.retry/ciphertext",
            headers={"authorization": f"Bearer {world.room.runner_token}"},
        ).content
        == data
    )


def test_control_failed_puts_then_a_good_retry(world: World) -> None:
    """Control: broken PUTs store nothing (no blob, no dataset), and the same upload then succeeds."""
    owner, data = world.retailer, fresh(world, "control")
    decl = declare(owner, "retail.control", data)
    before = set(world.blobs.glob("??/*"))
    with pytest.raises(ValidationError, match="incomplete"):
        put(owner, decl, data[:-3])
    flipped = bytearray(data)
    flipped[-1] ^= 1
    with pytest.raises(ValidationError, match="corrupt"):
        put(owner, decl, bytes(flipped))
    assert set(world.blobs.glob("??/*")) == before and not list((world.blobs / "tmp").iterdir())
    assert put(owner, decl, data)["name"] == "retail.control"


# 2. names are reserved while an upload is pending -------------------------------------------------


def test_a_pending_upload_reserves_its_name(world: World) -> None:
    owner, data = world.retailer, fresh(world, "pending")
    decl = declare(owner, "shared.name", data)
    with pytest.raises(Conflict, match="reserved by another org's pending upload"):
        declare(world.attacker, "shared.name", fresh(world, "mallory"))
    with pytest.raises(Conflict, match="pending already") as err:
        declare(owner, "shared.name", fresh(world, "second thoughts"))
    assert err.value.details["pending_upload"] == decl["upload_id"]
    with pytest.raises(Conflict, match="pending already"):  # same bytes, other metadata
        declare(owner, "shared.name", data, description="changed")
    with pytest.raises(Conflict, match="replayed"):  # the same bytes under another name
        declare(world.attacker, "mallory.copy", data)
    with pytest.raises(Conflict, match="replayed"):  # an existing dataset's bytes
        declare(world.attacker, "mallory.copy", world.release["dataset"])
    # control: other names are free, and the pending upload completes with its own bytes
    own = fresh(world, "m")
    assert put(world.attacker, declare(world.attacker, "mallory.own", own), own)["name"] == "mallory.own"
    assert put(owner, decl, data)["sha256"] == hashlib.sha256(data).hexdigest()
    assert world.retailer.get_dataset("shared.name")["owner"] == "retailer"
    world.assert_intact()


def test_withdrawing_a_pending_upload_frees_its_name_and_removes_no_bytes(world: World) -> None:
    owner, attacker = world.retailer, world.attacker
    data = fresh(world, "first try")
    decl = declare(owner, "retail.withdrawn", data)
    with pytest.raises(NotFound):  # another org cannot withdraw it (nor learn it exists)
        attacker.request("DELETE", decl["put"])
    with pytest.raises(Conflict, match="pending already") as err:
        declare(owner, "retail.withdrawn", fresh(world, "second try"))
    assert "cancel-upload" in (err.value.hint or "")
    done = _cli(world, "--json", "dataset", "cancel-upload", decl["upload_id"], token=owner.token)
    assert done.returncode == 0 and '"cancelled": true' in done.stdout, done.stdout + done.stderr
    with pytest.raises(NotFound):
        put(owner, decl, data)
    second = fresh(world, "second try")
    ds = put(owner, declare(owner, "retail.withdrawn", second), second)  # control: the name is free again
    assert ds["sha256"] == hashlib.sha256(second).hexdigest()
    with pytest.raises(Conflict, match="done already"):
        owner.request("DELETE", f"/datasets/uploads/{owner_upload_id(world, 'retail.withdrawn')}")
    # withdrawn while its bytes (a release artifact's) stream in: stored, then refused, nothing removed
    target = world.release["artifact"]
    racing = declare(attacker, "mallory.withdrawn", target)
    outcome: dict[str, Any] = {}
    sender = threading.Thread(target=lambda: outcome.update(r=_try(lambda: put(attacker, racing, _slow(target, 1.0)))))
    sender.start()
    time.sleep(0.3)
    attacker.request("DELETE", racing["put"])
    sender.join(30)
    assert isinstance(outcome["r"], NotFound), outcome
    assert world.read_back("artifact") == target
    world.assert_intact()


def owner_upload_id(world: World, name: str) -> str:
    with world.room.store.read() as conn:
        return str(conn.execute("SELECT id FROM uploads WHERE name = ? AND done_at IS NOT NULL", (name,)).fetchone()[0])


def _try(fn: Any) -> Any:
    try:
        return fn()
    except Exception as exc:  # the outcome under test
        return exc


# 3. failing uploads of bytes that a record references ---------------------------------------------


def expire_soon(world: World, decl: dict[str, Any], seconds: float) -> None:
    """Back-date a declaration so that it expires `seconds` from now (as if it was made long ago)."""
    with world.room.store.tx() as conn:
        conn.execute(
            "UPDATE uploads SET created_at = ? WHERE id = ?",
            (time.time() - world.room.settings.upload_ttl_seconds + seconds, decl["upload_id"]),
        )


def _slow(data: bytes, seconds: float) -> Iterator[bytes]:
    step = max(1, len(data) // 4)
    for offset in range(0, len(data), step):
        time.sleep(seconds / 4)
        yield data[offset : offset + step]


@pytest.mark.parametrize("kind", ["artifact", "log", "bundle", "dataset"])
def test_failing_upload_of_referenced_bytes_deletes_nothing(world: World, kind: str) -> None:
    """The attacker (an input owner can read the artifact and the log) uploads the very bytes of a
    referenced blob in uploads that fail in every way an upload can fail."""
    target, attacker = world.release[kind], world.attacker
    if kind == "dataset":  # another dataset's bytes: refused as a replay before anything is stored
        with pytest.raises(Conflict, match="replayed"):
            declare(attacker, "mallory.dataset", target)
        decl = None
    else:
        decl = declare(attacker, f"mallory.{kind}", target)
        # the old exploit: a second declaration of the name, to complete first and make this one lose
        with pytest.raises(Conflict, match="pending already"):
            declare(attacker, f"mallory.{kind}", fresh(world, "decoy"))
        with pytest.raises(ValidationError, match="age ciphertext" if kind == "bundle" else "incomplete"):
            put(attacker, decl, target[:-7])
    attempts = [
        (
            "declared other hash",
            lambda: put(attacker, declare(attacker, f"mallory.{kind}.h", fresh(world), size=len(target)), target),
        ),
        ("too long", lambda: put(attacker, declare(attacker, f"mallory.{kind}.l", target[:-1]), target)),
    ]
    for label, attempt in attempts:
        with pytest.raises((ValidationError, Conflict, TooLarge)):
            attempt()
        assert world.read_back(kind) == target, f"{label}: the {kind} is gone"
    if decl is not None and kind != "bundle":
        # an upload that passes every check, commits the shared bytes (renaming a new copy over the
        # referenced file), then loses: its declaration expires while the bytes stream in (time is
        # moved by back-dating the declaration)
        expire_soon(world, decl, 1.5)
        with pytest.raises(Conflict, match="expired"):
            put(attacker, decl, _slow(target, 2.0))
    elif decl is not None:  # a plugin bundle is no age file: refused before anything is stored
        with pytest.raises(ValidationError, match="age ciphertext"):
            put(attacker, decl, target)
    assert world.read_back(kind) == target
    world.assert_intact()


def test_control_a_failed_uploads_orphan_is_reported_and_swept(world: World) -> None:
    """Control: bytes that only a failed upload stored are an orphan; check lists it and the sweep
    deletes it once it is older than the grace period (and not before), with two audit events."""
    attacker, data = world.attacker, fresh(world, "orphan")
    decl = declare(attacker, "mallory.orphan", data)
    with world.room.store.tx() as conn:
        conn.execute(
            "UPDATE uploads SET created_at = created_at - ? WHERE id = ?",
            (world.room.settings.upload_ttl_seconds + 60, decl["upload_id"]),
        )
    with pytest.raises(Conflict, match="expired"):
        put(attacker, decl, data)  # refused before it stores anything
    decl2 = declare(attacker, "mallory.orphan2", data)
    # a PUT that commits and then finds its declaration expired: the orphan of a failed upload
    expire_soon(world, decl2, 1.5)
    with pytest.raises(Conflict, match="expired"):
        put(attacker, decl2, _slow(data, 2.0))
    digest = hashlib.sha256(data).hexdigest()
    assert (world.blobs / digest[:2] / digest).exists()
    report = world.room.admin.storage_check()
    assert report["ok"] and digest not in [o["blob"] for o in report["orphans"]]  # its declaration names it
    young = world.room.admin.storage_sweep()
    assert digest not in young["deleted"] and (world.blobs / digest[:2] / digest).exists()
    world.age_all()
    swept = world.room.admin.storage_sweep()  # the declarations expired: nothing names the blob any more
    assert digest in swept["deleted"] and not (world.blobs / digest[:2] / digest).exists()
    assert audit_actions(world)[-2:] == ["storage.sweep_planned", "storage.swept"]
    world.assert_intact()


# 4. races ---------------------------------------------------------------------------------------------


def _in_threads(n: int, fn: Any) -> list[Any]:
    results: list[Any] = [None] * n
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:  # the outcome under test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_declarations_and_puts_race_safely(world: World) -> None:
    owners = [world.retailer, world.attacker]
    payloads = [fresh(world, f"racer {i}") for i in range(6)]
    declared = _in_threads(6, lambda i: declare(owners[i % 2], "race.name", payloads[i]))
    winners = [r for r in declared if isinstance(r, dict)]
    assert len(winners) == 1, declared
    assert all(isinstance(r, Conflict) for r in declared if not isinstance(r, dict))
    won = declared.index(winners[0])
    client, data = owners[won % 2], payloads[won]
    # six PUTs of the same upload at once (a client retrying in parallel): one dataset, never an error
    puts = _in_threads(6, lambda i: put(client, winners[0], data))
    assert all(isinstance(r, dict) for r in puts), puts
    assert sum(1 for r in puts if not r.get("already_done")) == 1
    assert {r["sha256"] for r in puts} == {hashlib.sha256(data).hexdigest()}
    assert audit_actions(world, "race.name") == ["dataset.uploaded"]
    # the same referenced bytes (the release artifact) declared under several names at once
    target = world.release["artifact"]
    racing = _in_threads(4, lambda i: declare(world.attacker, f"race.same.{i}", target))
    assert sum(1 for r in racing if isinstance(r, dict)) == 1
    world.assert_intact()


def test_sweeps_racing_uploads_of_an_old_orphans_bytes(world: World) -> None:
    """An old orphan's bytes are uploaded again while sweeps run: the upload's dataset keeps them."""
    stop = threading.Event()
    sweeps: list[Any] = []

    def sweeper() -> None:
        while not stop.is_set():
            sweeps.append(world.room.admin.storage_sweep(grace_seconds=3600))

    thread = threading.Thread(target=sweeper)
    thread.start()
    try:
        for i in range(5):
            data = fresh(world, f"reborn {i}")
            digest = hashlib.sha256(data).hexdigest()
            world.room.store.blobs.put_bytes(data)  # an orphan from an earlier failed attempt, long ago
            t = time.time() - 3 * DAY
            os.utime(world.blobs / digest[:2] / digest, (t, t))
            ds = put(world.retailer, declare(world.retailer, f"reborn.{i}", data), data)
            assert ds["sha256"] == digest
            assert (
                httpx.get(
                    world.room.url + f"/runner/datasets/reborn.{i}/ciphertext",
                    headers={"authorization": f"Bearer {world.room.runner_token}"},
                ).content
                == data
            )
    finally:
        stop.set()
        thread.join(60)
    assert sweeps, "no sweep ran"
    world.assert_intact()
    for i in range(5):
        assert world.room.store.blobs.hash_of(world.retailer.get_dataset(f"reborn.{i}")["sha256"]) is not None


# 5. the admin routes and the CLI -------------------------------------------------------------------


def test_only_admins_sweep_or_check_and_a_short_grace_is_refused(world: World) -> None:
    for member in (world.retailer, world.analyst, world.attacker):
        with pytest.raises(PermissionDenied):
            member.storage_sweep()
        with pytest.raises(PermissionDenied):
            member.storage_check()
    with pytest.raises(ValidationError, match="at least 3600"):
        world.room.admin.storage_sweep(grace_seconds=0)
    assert world.room.admin.storage_sweep(dry_run=True)["dry_run"] is True  # control
    world.assert_intact()


def _cli(world: World, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CLEANROOM_") or k == "CLEANROOM_HOME"},
        "CLEANROOM_URL": world.room.url,
        "CLEANROOM_TOKEN": token or world.room.admin_token,
    }
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def test_admin_check_exits_non_zero_on_a_missing_or_corrupt_blob(world: World) -> None:
    ok = _cli(world, "admin", "check")
    assert ok.returncode == 0 and "storage ok" in ok.stderr, ok.stdout + ok.stderr  # control
    digest = hashlib.sha256(world.release["artifact"]).hexdigest()
    path = world.blobs / digest[:2] / digest
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # damage from outside the room
    bad = _cli(world, "admin", "check")
    assert bad.returncode == 1 and "corrupt" in bad.stderr and digest in bad.stderr, bad.stderr
    assert _cli(world, "admin", "check", "--no-hashes").returncode == 0  # only hashing sees a flipped bit
    path.unlink()
    gone = _cli(world, "admin", "check", "--no-hashes")
    assert gone.returncode == 1 and "missing" in gone.stderr and "artifact metrics.json" in gone.stderr
    path.write_bytes(original)
    dry = _cli(world, "admin", "sweep", "--dry-run")
    assert dry.returncode == 0 and "would delete" in dry.stderr
    assert _cli(world, "--json", "admin", "check").returncode == 0
    assert dumps(world.room.admin.storage_check()["missing"]) == "[]"
