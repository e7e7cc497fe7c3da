"""Red team: what an analyst can observe about a job besides what was released (invariant 5).

The attacker is an analyst (mallory) whose approved code behaves differently on the data: a validation
step that fails only when a target person's value is above a threshold, or sleeps when it is. Before
this, the job's status, error class, phase timestamps (in every org's audit log), a held release's
hashes and sizes, and other orgs' audit events each leaked something. Each class is attacked here with
several variants, each paired with a control that shows the test could see a difference.

The runner's side is played by hand over its real HTTP routes (claim, progress, artifacts, finish, with
a receipt signed by the room key this test holds), so that every way a job can end is reproduced
exactly and at chosen times; `test_a_real_plugin_that_fails_or_sleeps_on_a_target...` does the same
with real plugins in real sandboxes. Releases are in exact mode under owner review
(`require_dp = false`, `review = true`): a job that fails and one whose output waits for review must
look the same to the analyst. (Whether a job released something at all stays one bit per job for its
analyst once the owners approved; `[limits] max_jobs_per_day` caps those bits.)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from cleanroom import audit
from cleanroom.client import Client, verify_result_dir
from cleanroom.crypto import KeyPair, canonical_json, encrypt_bytes, fingerprint, generate_keypair
from cleanroom.errors import CleanroomError, IntegrityError, NotFound, RateLimited
from cleanroom.profile import Profile
from cleanroom.runner.context import JobContext
from tests.redteam.conftest import AGGREGATE_CODE, AGGREGATE_PARAMS, new_home, owner_csv, write_plugin

POLICY = """\
[outputs]
allowed = ["aggregate", "model"]

[privacy]
k = 5
require_dp = false

[release]
recipients = {recipients}
review = true
{extra}
"""
VALIDATE = """\
@hookimpl
def preprocess(df, params):
    return df
"""
DS = "retail.sales"
LIMITED = "retail.limited"


class RunnerHand:
    """The runner's side of jobs, by hand over the runner's own HTTP routes (no sandbox)."""

    def __init__(self, room: Any, keys: KeyPair) -> None:
        self.keys = keys
        self.http = httpx.Client(
            base_url=room.url, timeout=60, headers={"authorization": f"Bearer {room.runner_token}"}
        )

    def call(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.http.request(method, path, **kw)
        assert resp.status_code < 300, f"{method} {path}: {resp.status_code} {resp.text[:300]}"
        return resp.json()

    def claim(self, job_id: str) -> None:
        assert self.call("POST", "/runner/claim")["job"] == job_id, "another job was queued"

    def progress(self, job_id: str, *phases: str) -> None:
        for phase in phases:
            self.call("POST", f"/runner/jobs/{job_id}/progress", json={"phase": phase})

    def fail(self, job_id: str, status: str, error_class: str, reason: str) -> dict[str, Any]:
        return self.call(
            "POST",
            f"/runner/jobs/{job_id}/finish",
            json={"status": status, "error_class": error_class, "reason": reason},
        )

    def succeed(self, job_id: str, files: dict[str, bytes], readers: list[str], review_by: list[str]) -> dict[str, Any]:
        """Upload encrypted artifacts and finish with a manifest and a receipt signed by the room key."""
        outputs, uploaded = {}, {}
        for name, data in sorted(files.items()):
            outputs[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            up = self.call("PUT", f"/runner/jobs/{job_id}/artifacts/{name}", content=encrypt_bytes(data, readers))
            uploaded[name] = {"blob": up["blob"], "size": up["size"]}
        manifest = {
            "job_id": job_id,
            "outputs": outputs,
            "checks": [{"name": "min_group_size", "passed": True}],
            "epsilon_spent": 0.0,
            "recipient": "mallory",
        }
        receipt = self.receipt(job_id, outputs, manifest, self.keys)
        return self.call(
            "POST",
            f"/runner/jobs/{job_id}/finish",
            json={
                "status": "succeeded",
                "release": {"manifest": manifest, "receipt": receipt, "artifacts": uploaded, "review_by": review_by},
            },
        )

    @staticmethod
    def receipt(job_id: str, outputs: dict[str, Any], manifest: dict[str, Any], keys: KeyPair) -> dict[str, Any]:
        body = {
            "type": "cleanroom-receipt",
            "version": 1,
            "job_id": job_id,
            "approvals": [],
            "outputs": outputs,
            "manifest_sha256": hashlib.sha256(canonical_json(manifest)).hexdigest(),
        }
        return {
            "body": body,
            "signature": keys.sign(body),
            "room_keys": {
                "enc_public": keys.enc_public,
                "sign_public": keys.sign_public,
                "fingerprint": fingerprint(keys.enc_public + keys.sign_public),
            },
        }


def _org(room: Any, name: str, role: str) -> Client:
    created = room.admin.create_org(name, [role])
    client = Client(room.url, created["token"], profile=Profile(name=f"{name}-{room.port}"))
    client.keys()
    return client


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shared_keys: Path) -> Iterator[SimpleNamespace]:
    from tests.conftest import Room

    base = tmp_path_factory.mktemp("outcome")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLEANROOM_HOME", str(new_home(tmp_path_factory, shared_keys)))
        for var in ("CLEANROOM_URL", "CLEANROOM_TOKEN", "CLEANROOM_PROFILE"):
            mp.delenv(var, raising=False)
        room = Room(base / "api-data")
        try:
            room_keys = generate_keypair()  # what the runner does on its first start
            httpx.post(
                room.url + "/runner/register",
                headers={"authorization": f"Bearer {room.runner_token}"},
                json={"enc_public": room_keys.enc_public, "sign_public": room_keys.sign_public},
                timeout=30,
            ).raise_for_status()
            w = SimpleNamespace(room=room, base=base, hand=RunnerHand(room, room_keys), room_keys=room_keys)
            w.retailer, w.mallory, w.eve = (
                _org(room, "retailer", "owner"),
                _org(room, "mallory", "analyst"),
                _org(room, "eve", "analyst"),
            )
            for name, extra in ((DS, ""), (LIMITED, "[limits]\nmax_jobs_per_day = 2\n")):
                csv = owner_csv(base / f"{name}.csv", "cnry", n=60)
                policy = POLICY.format(extra=extra, recipients='["mallory", "eve"]')
                w.retailer.upload_dataset(
                    csv,
                    name=name,
                    policy=policy,
                    id_column="customer_id",
                    join_secret=b"s" * 32,
                    drop_identifiers=False,
                )
            w.plugins = {}
            for who in ("mallory", "eve"):
                client = getattr(w, who)
                pre = client.submit_plugin(write_plugin(base / who, f"{who}-validate", VALIDATE))["id"]
                agg = client.submit_plugin(
                    write_plugin(base / who, f"{who}-agg", AGGREGATE_CODE, kind="analysis", params=AGGREGATE_PARAMS)
                )["id"]
                for pid in (pre, agg):
                    for name in (DS, LIMITED):
                        w.retailer.decide_plugin(pid, name)
                w.plugins[who] = (pre, agg)
            w.readers = [w.mallory.keys().enc_public, w.retailer.keys().enc_public]
            yield w
        finally:
            room.stop()


def spec(
    w: SimpleNamespace, who: str = "mallory", dataset: str = DS, budget: int | None = None, name: str = "probe"
) -> str:
    pre, agg = w.plugins[who]
    head = f"time_budget = {budget}\n" if budget else ""
    return (
        f'{head}name = "{name}"\nrecipient = "{who}"\n[[inputs]]\ndataset = "{dataset}"\n'
        f'[[steps]]\nplugin = "{pre}"\n[[steps]]\nplugin = "{agg}"\n'
        f'params = {{ name = "by_region", group_by = ["region"] }}\n[outputs]\naggregates = true\n'
    )


def reveal_now(w: SimpleNamespace, job_id: str) -> None:
    """Move the job's outcome time to now, as if its time budget had run out."""
    with w.room.store.tx() as conn:
        conn.execute("UPDATE jobs SET reveal_at = ? WHERE id = ?", (time.time(), job_id))


def audit_seq(w: SimpleNamespace) -> int:
    return int(w.room.admin.get("/audit", params={"limit": 1})["total"])


def login(w: SimpleNamespace, client: Client) -> httpx.Client:
    from tests.test_web import login as web_login

    return web_login(w.room, client.token or "")


def _scrub(text: str, job_id: str) -> str:
    text = text.replace(job_id, "JOB")
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "TIME", text)


def analyst_views(w: SimpleNamespace, job_id: str, since: int) -> dict[str, Any]:
    """Everything mallory can see about the job, with its id and its submission and start times
    (known to her before any data was touched) taken out."""
    m = w.mallory
    hidden = ("id", "name", "created_at", "started_at", "outcome_at", "spec")
    job = {k: v for k, v in m.get_job(job_id).items() if k not in hidden}
    listed = [{k: v for k, v in j.items() if k not in hidden} for j in m.list_jobs() if j["id"] == job_id]
    page = login(w, m).get("/ui/jobs").text
    row = re.search(r"<tr>(?:(?!</tr>).)*" + job_id + r"(?:(?!</tr>).)*</tr>", page, re.S)
    assert row, "the job is not on the analyst's jobs page"
    events = [e for e in m.audit_events() if e["seq"] > since]
    shape = [
        ("redacted",) if e.get("redacted") else (e["action"], e["object_type"], sorted(e["details"])) for e in events
    ]
    probe = httpx.get(f"{w.room.url}/releases/{job_id}", headers={"authorization": f"Bearer {m.token}"})
    return {
        "job": job,
        "list": listed,
        "page_row": _scrub(row.group(0), job_id),
        "audit": shape,
        "releases": [r for r in m.list_releases() if r["job_id"] == job_id],
        "release_get": (probe.status_code, probe.json()),
        "logs": httpx.get(
            f"{w.room.url}/jobs/{job_id}/logs", headers={"authorization": f"Bearer {m.token}"}
        ).status_code,
    }


# Every way a job can end, as the runner (or an org) makes it happen. Each gets the job claimed.
def _held(w: SimpleNamespace, job: str, delay: float = 0.0) -> None:
    w.hand.progress(job, "decrypting", "compute", "release", "uploading")
    time.sleep(delay)
    w.hand.succeed(job, {"by_region.csv": b"region,count\nnorth,12\n"}, w.readers, [DS])


def _fail(phases: tuple[str, ...], status: str, error_class: str, delay: float = 0.0) -> Callable[..., None]:
    def run(w: SimpleNamespace, job: str) -> None:
        w.hand.progress(job, *phases)
        time.sleep(delay)
        w.hand.fail(job, status, error_class, f"{error_class}: target value 4242.17 is above 4000")

    return run


def _rejected(w: SimpleNamespace, job: str) -> None:
    _held(w, job)
    w.retailer.reject_release(job, reason="row 17 is someone we know")


def _cancel(who: str, after_end: bool) -> Callable[..., None]:
    def run(w: SimpleNamespace, job: str) -> None:
        if after_end:
            _held(w, job)  # it ended (and waits for review) before the analyst cancels: it is withdrawn
        else:
            w.hand.progress(job, "decrypting", "compute")
        getattr(w, who).cancel_job(job)

    return run


ENDINGS: dict[str, Callable[..., None]] = {
    "never fails, output held for review": _held,
    "never fails, but slowly (sleeps on the target)": lambda w, job: _held(w, job, delay=2.0),
    "validation fails on the target at once": _fail(("decrypting", "compute"), "failed", "plugin_error"),
    "validation fails on the target after a while": _fail(("decrypting", "compute"), "failed", "plugin_error", 2.0),
    "the release check fails": _fail(("decrypting", "compute", "release"), "failed", "release_check_failed"),
    "the compute phase times out": _fail(("decrypting", "compute"), "timed_out", "timeout"),
    "out of memory while decrypting": _fail(("decrypting",), "failed", "out_of_memory"),
    "the owner rejects the output": _rejected,
    "the analyst cancels it while it runs": _cancel("mallory", after_end=False),
    "the analyst cancels it after it ended": _cancel("mallory", after_end=True),
    "the owner cancels it while it runs": _cancel("retailer", after_end=False),
}


def test_how_a_job_ended_and_when_are_invisible_to_its_analyst(world: SimpleNamespace) -> None:
    w = world
    during, after, owner_saw = {}, {}, {}
    for ending, make in ENDINGS.items():
        since = audit_seq(w)
        job = w.mallory.submit_job(spec(w))["id"]
        w.hand.claim(job)
        make(w, job)
        view = w.mallory.get_job(job)
        assert view["outcome_at"] == math.ceil((view["started_at"] + 600) / 10) * 10  # fixed by the spec
        during[ending] = analyst_views(w, job, since)
        owner_saw[ending] = {k: w.retailer.get_job(job)[k] for k in ("status", "error_class", "finished_at")}
        reveal_now(w, job)
        after[ending] = analyst_views(w, job, since)
        after[ending]["waited"] = {
            k: v
            for k, v in w.mallory.wait_job(job, timeout=10).items()
            if k not in ("id", "name", "created_at", "started_at", "outcome_at", "spec")
        }
    first = next(iter(ENDINGS))
    for ending in ENDINGS:
        assert during[ending] == during[first], ending
        assert after[ending] == after[first], ending
    assert during[first]["job"]["status"] == "running" and after[first]["job"]["status"] == "nothing_released"
    assert during[first]["audit"] == [
        ("job.submitted", "job", during[first]["audit"][0][2]),
        ("job.started", "job", []),
    ]  # nothing else until the outcome time
    assert after[first]["audit"][2:] == [("redacted",)]  # then one entry, the same for every ending
    assert after[first]["job"]["error_class"] is None and after[first]["job"]["finished_at"] is None
    assert after[first]["release_get"][0] == 404 and after[first]["logs"] == 403
    # control: the owners see what happened, so the views above could have differed
    assert len({(v["status"], v["error_class"]) for v in owner_saw.values()}) >= 6
    assert {v["error_class"] for v in owner_saw.values()} >= {
        "plugin_error",
        "release_check_failed",
        "timeout",
        "out_of_memory",
    }


def test_an_approved_release_is_what_changes_the_analysts_view(world: SimpleNamespace) -> None:
    w = world
    job = w.mallory.submit_job(spec(w))["id"]
    w.hand.claim(job)
    _held(w, job)
    reveal_now(w, job)
    assert w.mallory.get_job(job)["status"] == "nothing_released"
    w.retailer.approve_release(job)  # the owner saw the output in full and let it out: (c) of invariant 5
    shown = w.mallory.get_job(job)
    assert shown["status"] == "released" and shown["release_id"]
    assert w.mallory.get_release(job)["manifest"]["outputs"]["by_region.csv"]["bytes"] == len(
        b"region,count\nnorth,12\n"
    )


def test_the_analyst_cannot_filter_or_cancel_its_way_to_the_outcome(world: SimpleNamespace) -> None:
    w = world
    failed = w.mallory.submit_job(spec(w))["id"]
    w.hand.claim(failed)
    _fail(("compute",), "failed", "plugin_error")(w, failed)
    held = w.mallory.submit_job(spec(w))["id"]
    w.hand.claim(held)
    _held(w, held)
    for status in ("failed", "succeeded"):  # a filter on the stored status would answer for the hidden one
        assert [j["id"] for j in w.mallory.list_jobs(status=status)] == []
    running = {j["id"] for j in w.mallory.list_jobs(status="running")}
    assert {failed, held} <= running
    assert failed in {j["id"] for j in w.room.admin.list_jobs(status="failed")}  # control: staff filter
    # cancelling a job that ended (unknown to the analyst) answers as for one still running
    answers = [w.mallory.cancel_job(j) for j in (failed, held)]
    assert [
        {k: v for k, v in a.items() if k not in ("id", "created_at", "started_at", "outcome_at")} for a in answers
    ] == [{k: v for k, v in answers[0].items() if k not in ("id", "created_at", "started_at", "outcome_at")}] * 2
    assert w.retailer.get_job(held)["withdrawn"] is True
    w.retailer.approve_release(held)
    reveal_now(w, held)
    assert w.mallory.get_job(held)["status"] == "nothing_released"  # withdrawn: approved, still never out
    with pytest.raises(NotFound):
        w.mallory.get_release(held)


def test_a_job_that_ends_after_its_time_budget_releases_nothing(world: SimpleNamespace) -> None:
    w = world
    job = w.mallory.submit_job(spec(w))["id"]
    w.hand.claim(job)
    w.hand.progress(job, "decrypting", "compute", "release", "uploading")
    reveal_now(w, job)  # the analyst was shown "nothing released" at the outcome time...
    time.sleep(0.05)
    done = w.hand.succeed(job, {"by_region.csv": b"region,count\nnorth,12\n"}, w.readers, [DS])
    assert done["status"] == "timed_out" and done["release_id"] is None  # ...so a late success cannot change it
    assert w.retailer.get_job(job)["error_class"] == "time_budget"
    assert w.mallory.get_job(job)["status"] == "nothing_released"


def test_a_runner_restart_during_the_job_shows_nowhere(world: SimpleNamespace) -> None:
    w = world
    since = audit_seq(w)
    job = w.mallory.submit_job(spec(w))["id"]
    w.hand.claim(job)
    w.hand.progress(job, "decrypting", "compute")
    first = w.mallory.get_job(job)
    assert w.hand.call("POST", "/runner/recover")["requeued"] == [job]  # the runner restarted mid-job
    assert w.mallory.get_job(job) == first  # still running, same start, same outcome time
    w.hand.claim(job)
    _held(w, job)
    assert w.mallory.get_job(job) == first
    shape = [e.get("action", "redacted") for e in w.mallory.audit_events() if e["seq"] > since]
    assert shape == ["job.submitted", "job.started"]  # the second start is held with the rest
    reveal_now(w, job)
    ended = next(e for e in w.room.admin.audit_events() if e["action"] == "job.ended" and e["object_id"] == job)
    held = [h["action"] for h in ended["details"]["events"]]
    assert "job.requeued" in held and held.count("job.started") == 1  # control: the admin sees the restart


def test_the_sdk_waits_until_the_outcome_time_the_spec_fixed(world: SimpleNamespace) -> None:
    w = world
    job = w.mallory.submit_job(spec(w, budget=10))["id"]
    w.hand.claim(job)
    _fail(("compute",), "failed", "plugin_error")(w, job)  # fails at once
    t0 = time.time()
    assert w.retailer.wait_job(job, timeout=5)["status"] == "failed"  # control: the owner knows at once
    assert time.time() - t0 < 5
    shown = w.mallory.wait_job(job, timeout=60, interval=0.5)
    assert shown["status"] == "nothing_released"
    assert shown["outcome_at"] == math.ceil((shown["started_at"] + 10) / 10) * 10
    assert time.time() >= shown["outcome_at"] - 1  # (the API's clock; the same machine here)


def test_held_and_rejected_releases_show_the_recipient_nothing(world: SimpleNamespace) -> None:
    w = world
    jobs = {}
    for kind in ("held", "rejected", "failed"):
        job = w.mallory.submit_job(spec(w))["id"]
        w.hand.claim(job)
        {"held": _held, "rejected": _rejected, "failed": _fail(("compute",), "failed", "plugin_error")}[kind](w, job)
        reveal_now(w, job)
        jobs[kind] = job
    rel = {k: w.retailer.get_job(j)["release_id"] for k, j in jobs.items()}
    auth = {"authorization": f"Bearer {w.mallory.token}"}
    page = login(w, w.mallory)
    seen = {}
    for kind, job in jobs.items():
        ref = rel[kind] or "rel_" + "0" * 20
        probes = [
            httpx.get(f"{w.room.url}{path}", headers=auth)
            for path in (
                f"/releases/{job}",
                f"/releases/{ref}",
                f"/releases/{ref}/artifacts/by_region.csv",
                f"/releases/{job}/artifacts/by_region.csv",
            )
        ]
        seen[kind] = {
            "probes": [(p.status_code, _scrub(p.text, job).replace(ref, "REL")) for p in probes],
            "listed": [r for r in w.mallory.list_releases() if r["job_id"] == job],
            "page": (
                page.get(f"/ui/releases/{ref}").status_code,
                job in page.get("/ui/releases").text,
                ref in page.get("/ui/releases").text,
            ),
            "release_id": w.mallory.get_job(job)["release_id"],
        }
    assert seen["held"] == seen["rejected"] == seen["failed"]  # no hash, size, check or count: not even existence
    assert all(code == 404 for code, _ in seen["held"]["probes"]) and seen["held"]["listed"] == []
    assert "releases" not in w.mallory.room()["counts"]  # no room-wide count that moves when a job succeeds
    # control: the owners review it all (hashes, sizes, checks)
    owner_view = w.retailer.get_release(jobs["held"])
    assert (
        owner_view["manifest"]["outputs"]["by_region.csv"]["sha256"]
        == hashlib.sha256(b"region,count\nnorth,12\n").hexdigest()
    )
    assert len(owner_view["artifacts"]) == 1


def test_daily_job_cap_per_analyst_org_and_dataset(world: SimpleNamespace) -> None:
    w = world
    ids = [w.mallory.submit_job(spec(w, dataset=LIMITED))["id"] for _ in range(2)]
    with pytest.raises(RateLimited, match=r"retail.limited allows 2 jobs a day per analyst org") as refused:
        w.mallory.submit_job(spec(w, dataset=LIMITED))
    assert "try again in" in (refused.value.hint or "")
    ids.append(w.eve.submit_job(spec(w, "eve", dataset=LIMITED))["id"])  # control: another org has its own
    ids.append(w.mallory.submit_job(spec(w))["id"])  # control: a dataset without the cap
    for job in ids:  # (queued: cancelled before the runner claims them)
        w.room.admin.cancel_job(job)
    with pytest.raises(RateLimited):  # a cancelled job still counts: its submission was the probe
        w.mallory.submit_job(spec(w, dataset=LIMITED))


def test_other_orgs_job_events_are_redacted_and_the_chain_still_verifies(world: SimpleNamespace) -> None:
    w = world
    since = audit_seq(w)
    job = w.eve.submit_job(spec(w, "eve"))["id"]
    w.hand.claim(job)
    _held(w, job)
    reveal_now(w, job)
    mine = [e for e in w.mallory.audit_events() if e["seq"] > since]
    assert mine and all(e.get("redacted") for e in mine)  # eve's job: not its inputs, time or recipient
    assert all(set(e) == {"seq", "prev_hash", "hash", "redacted"} for e in mine)
    assert job not in json.dumps(list(w.mallory.audit_events()))
    result = w.mallory.audit_verify()
    assert result["ok"] and result["redacted"] > 0
    # controls: eve reads her job's submission; the owner, and the admin, read everything about it
    eves = [e for e in w.eve.audit_events() if e["seq"] > since]
    assert [e["action"] for e in eves if not e.get("redacted")][:2] == ["job.submitted", "job.started"]
    assert any(not e.get("redacted") and e["action"] == "job.ended" for e in w.retailer.audit_events())
    admin = list(w.room.admin.audit_events())
    assert not any(e.get("redacted") for e in admin) and w.room.admin.audit_verify()["redacted"] == 0
    ended = next(e for e in admin if e["action"] == "job.ended" and e["object_id"] == job)
    assert [h["action"] for h in ended["details"]["events"]][-2:] == ["release.created", "job.succeeded"]


@pytest.fixture
def small_room(tmp_path: Path) -> Iterator[SimpleNamespace]:
    from tests.conftest import Room

    room = Room(tmp_path / "api-data")
    try:
        orgs = {
            name: _org(room, name, role)
            for name, role in (("owner1", "owner"), ("mallory", "analyst"), ("eve", "analyst"), ("bob", "analyst"))
        }
        yield SimpleNamespace(room=room, **orgs)
    finally:
        room.stop()


def _rows(room: Any) -> list[dict[str, Any]]:
    with room.store.read() as conn:
        return [audit.row_to_event(r) for r in conn.execute("SELECT * FROM audit ORDER BY seq")]


def _write(room: Any, events: list[dict[str, Any]]) -> None:
    with room.store.tx() as conn:
        conn.execute("DELETE FROM audit")
        for e in events:
            conn.execute(
                "INSERT INTO audit (seq, ts, actor, action, object_type, object_id, details, prev_hash, hash)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    e["seq"],
                    e["ts"],
                    e["actor"],
                    e["action"],
                    e["object_type"],
                    e["object_id"],
                    json.dumps(e["details"]),
                    e["prev_hash"],
                    e["hash"],
                ),
            )


def _rechain(events: list[dict[str, Any]], start: int) -> None:
    for i in range(start, len(events)):
        events[i]["prev_hash"] = events[i - 1]["hash"] if i else audit.GENESIS
        events[i]["hash"] = audit.event_hash(events[i])


def _tamper(kind: str, events: list[dict[str, Any]], hidden: int, visible: int) -> list[dict[str, Any]]:
    """An operator's edit of the stored log; `hidden` is an index mallory cannot read, `visible` one she can."""
    events = [dict(e) for e in events]
    if kind == "drop a redacted entry":
        del events[hidden]
    elif kind == "edit a redacted entry and its hash":
        events[hidden]["details"] = {"roles": ["admin"]}
        events[hidden]["hash"] = audit.event_hash(events[hidden])
    elif kind == "edit a redacted entry and rewrite the rest of the chain":
        events[hidden]["details"] = {"roles": ["admin"]}
        _rechain(events, hidden)
    elif kind == "edit an entry mallory reads":
        events[visible]["actor"] = "eve"
    elif kind == "reorder two redacted entries":
        a, b = events[hidden], events[hidden + 1]
        a["seq"], b["seq"] = b["seq"], a["seq"]
        events[hidden], events[hidden + 1] = b, a
    return events


TAMPERING = [
    "drop a redacted entry",
    "edit a redacted entry and its hash",
    "edit a redacted entry and rewrite the rest of the chain",
    "edit an entry mallory reads",
    "reorder two redacted entries",
]


@pytest.mark.parametrize("kind", TAMPERING)
def test_a_tampered_chain_with_redacted_entries_fails_verification(small_room: SimpleNamespace, kind: str) -> None:
    s = small_room
    s.bob.rotate_token()  # more events mallory cannot read, after hers
    s.eve.rotate_token()
    first = s.mallory.audit_verify()  # pins the head in her profile
    assert first["ok"] and first["redacted"] >= 3, first  # control: the untouched log verifies with redactions
    seen = list(s.mallory.audit_events())
    hidden = next(
        i
        for i, e in enumerate(seen)
        if e.get("redacted") and i + 1 < len(seen) and seen[i + 1].get("redacted") and i > 0
    )
    visible = next(i for i, e in enumerate(seen) if not e.get("redacted"))
    _write(s.room, _tamper(kind, _rows(s.room), hidden, visible))
    result = s.mallory.audit_verify()
    assert not result["ok"], f"{kind}: mallory's check passed"
    assert result["broken_at"] is not None and result["reason"]


def test_redacted_entries_cannot_smuggle_or_drop_content() -> None:
    events: list[dict[str, Any]] = []
    for i, action in enumerate(("org.created", "job.submitted", "job.ended"), 1):
        e = {
            "seq": i,
            "ts": float(i),
            "actor": "admin",
            "action": action,
            "object_type": "x",
            "object_id": str(i),
            "details": {},
            "prev_hash": events[-1]["hash"] if events else audit.GENESIS,
        }
        e["hash"] = audit.event_hash(e)
        events.append(e)
    shown = [events[0], audit.redact(events[1]), events[2]]
    assert audit.verify_events(shown)["ok"]  # control
    for bad in (
        {**shown[1], "action": "job.failed"},
        {**shown[1], "hash": "zz" * 32},
        {k: v for k, v in shown[1].items() if k != "prev_hash"},
        {**shown[1], "redacted": "yes"},
    ):
        assert not audit.verify_events([shown[0], bad, shown[2]])["ok"], bad


def _get_result_fails(w: SimpleNamespace, job: str, out: Path) -> str:
    with pytest.raises(CleanroomError) as failed:
        w.mallory.get_result(job, out)
    assert not out.exists() or not any(out.iterdir()), "something was written"
    return str(failed.value)


@pytest.fixture(scope="module")
def released(world: SimpleNamespace) -> SimpleNamespace:
    w = world
    job = w.mallory.submit_job(spec(w))["id"]
    w.hand.claim(job)
    files = {"by_region.csv": b"region,count\nnorth,12\nsouth,15\n", "summary.json": b'{"n": 27}'}
    w.hand.succeed(job, files, w.readers, [DS])
    w.retailer.approve_release(job)
    reveal_now(w, job)
    other = w.hand.call(
        "PUT",
        f"/runner/jobs/{job}/artifacts/by_region.csv",
        content=encrypt_bytes(b"region,count\nnorth,99\n", w.readers),
    )
    return SimpleNamespace(job=job, files=files, release=w.retailer.get_release(job)["id"], other_blob=other["blob"])


class Operator:
    """Edits of the API's store that the operator can make, undone afterwards."""

    def __init__(self, room: Any, release_id: str) -> None:
        self.room, self.release_id = room, release_id

    def __enter__(self) -> Operator:
        with self.room.store.read() as conn:
            self.release = dict(conn.execute("SELECT * FROM releases WHERE id = ?", (self.release_id,)).fetchone())
            self.arts = [
                dict(r)
                for r in conn.execute("SELECT * FROM release_artifacts WHERE release_id = ?", (self.release_id,))
            ]
        return self

    def sql(self, statement: str, *args: Any) -> None:
        with self.room.store.tx() as conn:
            conn.execute(statement, args)

    def __exit__(self, *exc: object) -> None:
        with self.room.store.tx() as conn:
            conn.execute(
                "UPDATE releases SET manifest = ?, receipt = ? WHERE id = ?",
                (self.release["manifest"], self.release["receipt"], self.release_id),
            )
            conn.execute("DELETE FROM release_artifacts WHERE release_id = ?", (self.release_id,))
            for a in self.arts:
                conn.execute(
                    "INSERT INTO release_artifacts (release_id, name, blob, size) VALUES (?,?,?,?)",
                    (a["release_id"], a["name"], a["blob"], a["size"]),
                )


def _swap(w: SimpleNamespace, r: SimpleNamespace, op: Operator, kind: str) -> None:
    fake = b"region,count\nnorth,99\n"
    manifest = json.loads(op.release["manifest"])
    if kind == "swap an artifact":
        op.sql(
            "UPDATE release_artifacts SET blob = ? WHERE release_id = ? AND name = 'by_region.csv'",
            r.other_blob,
            r.release,
        )
    elif kind == "swap an artifact and its manifest entry":
        op.sql(
            "UPDATE release_artifacts SET blob = ? WHERE release_id = ? AND name = 'by_region.csv'",
            r.other_blob,
            r.release,
        )
        manifest["outputs"]["by_region.csv"] = {"sha256": hashlib.sha256(fake).hexdigest(), "bytes": len(fake)}
        op.sql("UPDATE releases SET manifest = ? WHERE id = ?", json.dumps(manifest), r.release)
    elif kind == "list an artifact the receipt does not":
        op.sql(
            "INSERT INTO release_artifacts (release_id, name, blob, size) VALUES (?,?,?,?)",
            r.release,
            "extra.csv",
            r.other_blob,
            10,
        )
    elif kind == "drop an artifact the receipt lists":
        op.sql("DELETE FROM release_artifacts WHERE release_id = ? AND name = 'summary.json'", r.release)
    elif kind == "re-sign the receipt with another key":
        receipt = json.loads(op.release["receipt"])
        outputs = {
            **receipt["body"]["outputs"],
            "by_region.csv": {"sha256": hashlib.sha256(fake).hexdigest(), "bytes": len(fake)},
        }
        forged = RunnerHand.receipt(r.job, outputs, manifest, generate_keypair())
        op.sql("UPDATE releases SET receipt = ? WHERE id = ?", json.dumps(forged), r.release)
        op.sql(
            "UPDATE release_artifacts SET blob = ? WHERE release_id = ? AND name = 'by_region.csv'",
            r.other_blob,
            r.release,
        )
    elif kind == "edit the receipt's outputs":
        receipt = json.loads(op.release["receipt"])
        receipt["body"]["outputs"]["by_region.csv"]["sha256"] = hashlib.sha256(fake).hexdigest()
        op.sql("UPDATE releases SET receipt = ? WHERE id = ?", json.dumps(receipt), r.release)


SWAPS = [
    "swap an artifact",
    "swap an artifact and its manifest entry",
    "list an artifact the receipt does not",
    "drop an artifact the receipt lists",
    "re-sign the receipt with another key",
    "edit the receipt's outputs",
]


@pytest.mark.parametrize("kind", SWAPS)
def test_result_get_refuses_what_the_signed_receipt_does_not_bind(
    world: SimpleNamespace, released: SimpleNamespace, kind: str, tmp_path: Path
) -> None:
    w, r = world, released
    w.mallory.room()  # pins the room key in mallory's profile, as on first use
    with Operator(w.room, r.release) as op:
        _swap(w, r, op, kind)
        reason = _get_result_fails(w, r.job, tmp_path / "out")
    assert "receipt" in reason or "manifest" in reason or "room key" in reason or "signature" in reason, reason
    done = w.mallory.get_result(r.job, tmp_path / "control")  # control: the untouched release downloads
    assert {Path(f).name for f in done["files"]} == {"by_region.csv", "summary.json", "receipt.json"}


def test_result_get_refuses_an_artifact_swapped_on_disk(
    world: SimpleNamespace, released: SimpleNamespace, tmp_path: Path
) -> None:
    w, r = world, released
    w.mallory.room()
    with Operator(w.room, r.release) as op:
        blob = next(a["blob"] for a in op.arts if a["name"] == "by_region.csv")
        path = next(p for p in w.room.settings.data_dir.rglob("*") if p.is_file() and blob in p.name)
        original = path.read_bytes()
        other = next(p for p in w.room.settings.data_dir.rglob("*") if p.is_file() and r.other_blob in p.name)
        try:
            path.write_bytes(other.read_bytes())
            _get_result_fails(w, r.job, tmp_path / "out")
        finally:
            path.write_bytes(original)
    assert w.mallory.get_result(r.job, tmp_path / "control")["release"] == r.release  # control


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from cleanroom.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


DIR_EDITS: dict[str, Callable[[Path], None]] = {
    "a file changed": lambda d: (d / "by_region.csv").write_bytes(b"region,count\nnorth,99\nsouth,15\n"),
    "a file missing": lambda d: (d / "summary.json").unlink(),
    "a file added": lambda d: (d / "extra.csv").write_text("x\n"),
    "a file renamed": lambda d: (d / "summary.json").rename(d / "summary2.json"),
    "a file replaced by a symlink": lambda d: (
        (d.parent / "real.json").write_bytes((d / "summary.json").read_bytes()),
        (d / "summary.json").unlink(),
        (d / "summary.json").symlink_to(d.parent / "real.json"),
    ),
    "the receipt's outputs edited": lambda d: d.joinpath("receipt.json").write_text(
        d.joinpath("receipt.json").read_text().replace('"bytes": 9', '"bytes": 10')
    ),
}


@pytest.mark.parametrize("edit", list(DIR_EDITS))
def test_receipt_verify_dir_checks_the_files_beside_the_receipt(
    world: SimpleNamespace, released: SimpleNamespace, edit: str, tmp_path: Path
) -> None:
    w, r = world, released
    fp = w.mallory.room()["keys"]["fingerprint"]
    out = tmp_path / "result"
    w.mallory.get_result(r.job, out)
    control = _cli("receipt", "verify", str(out), "--fingerprint", fp)
    assert control.returncode == 0 and "2 file(s) match it" in control.stderr, control.stderr
    assert verify_result_dir(out, expected_fingerprint=fp)["files"] == ["by_region.csv", "summary.json"]
    DIR_EDITS[edit](out)
    with pytest.raises(IntegrityError):
        verify_result_dir(out, expected_fingerprint=fp)
    refused = _cli("receipt", "verify", str(out), "--fingerprint", fp)
    assert refused.returncode != 0 and "receipt valid" not in refused.stderr


def _approval(owner: KeyPair, org: str, plugin: str, ds: dict[str, Any], **change: Any) -> dict[str, Any]:
    p = {
        "type": "plugin-approval",
        "plugin_id": plugin,
        "dataset": ds["name"],
        "policy_version": ds["policy_version"],
        "policy_sha256": ds["policy_sha256"],
        "dataset_sha256": ds["sha256"],
        "decision": "approve",
        "reason": "",
        "org": org,
        "issued_at": 1.0,
    }
    p.update(change)
    return {"payload": p, "signature": owner.sign(p), "org": org}


def test_a_receipt_names_exactly_the_approvals_that_covered_the_job() -> None:
    owner, stranger = generate_keypair(), generate_keypair()
    ds = {
        "name": "retail.sales",
        "owner": "retailer",
        "sha256": "a" * 64,
        "policy_version": 3,
        "policy_sha256": "b" * 64,
    }
    used, unused = "1" * 64, "2" * 64
    ctx = {
        "job": {"spec": {"steps": [{"plugin": used}]}},
        "datasets": [ds],
        "owners": {"retailer": {"sign_public": owner.sign_public}},
    }
    covering = _approval(owner, "retailer", used, ds)
    decoys = [
        _approval(owner, "retailer", unused, ds),  # a plugin the job does not run
        _approval(owner, "retailer", used, ds, policy_sha256="c" * 64),  # another policy text
        _approval(owner, "retailer", used, ds, policy_version=2),  # an older policy version
        _approval(owner, "retailer", used, ds, dataset_sha256="d" * 64),  # other data
        _approval(owner, "retailer", used, ds, decision="reject"),  # a rejection
        _approval(stranger, "retailer", used, ds, reason="forged"),  # not the owner's key
        _approval(stranger, "mallory", used, ds),  # by another org
        _approval(owner, "retailer", used, {**ds, "name": "bank.x"}),  # for another dataset
    ]
    digest = hashlib.sha256(canonical_json(covering["payload"])).hexdigest()
    assert JobContext.from_dict({**ctx, "approvals": [covering, *decoys]}).covering_approvals() == [digest]
    # control: the decoys alone cover nothing
    assert JobContext.from_dict({**ctx, "approvals": decoys}).covering_approvals() == []
    second = _approval(owner, "retailer", used, ds, reason="again")
    assert len(JobContext.from_dict({**ctx, "approvals": [covering, second, *decoys]}).covering_approvals()) == 2


REAL_VALIDATE = """\
@hookimpl
def preprocess(df, params):
    hit = bool((df["secret_code"] == params["target"]).any())  # one person's row, in the real data only
    if hit and params["mode"] == "fail":
        raise ValueError("the target is above the threshold")
    if hit and params["mode"] == "sleep":
        time.sleep(6)
    return df
"""
REAL_PARAMS = '[params.target]\ntype = "string"\nrequired = true\n[params.mode]\ntype = "string"\nrequired = true\n'


@pytest.mark.docker
@pytest.mark.slow
def test_a_real_plugin_that_fails_or_sleeps_on_a_target_looks_the_same_to_its_analyst(
    tmp_path_factory: pytest.TempPathFactory, shared_keys: Path
) -> None:
    from tests.redteam.conftest import stack_for_module

    hidden = ("id", "name", "created_at", "started_at", "outcome_at", "spec")
    with stack_for_module(tmp_path_factory, shared_keys, "outcome-real") as stack:
        owner = stack.owner("tara-shop")
        csv = owner_csv(stack.tmp / "shop.csv", "cnry", n=80)
        policy = POLICY.format(extra="", recipients=f'["{stack.analyst_name}"]')
        owner.upload_dataset(
            csv, name="tara.shop", policy=policy, id_column="customer_id", join_secret=b"s" * 32, drop_identifiers=False
        )
        check = stack.plugin(REAL_VALIDATE, params=REAL_PARAMS, approvers=[(owner, "tara.shop")])
        agg = stack.plugin(AGGREGATE_CODE, kind="analysis", params=AGGREGATE_PARAMS, approvers=[(owner, "tara.shop")])
        runs = {
            "never fails": {"target": "nobody", "mode": "fail"},
            "fails on the target": {"target": "cnryx0017", "mode": "fail"},
            "sleeps on the target": {"target": "cnryx0017", "mode": "sleep"},
        }
        table = (agg, {"name": "t", "group_by": ["region"]})
        steps = {label: [(check, params), table] for label, params in runs.items()}
        jobs = {
            label: stack.analyst.submit_job(
                "time_budget = 60\n" + stack.job_spec("tara.shop", steps[label], aggregates=True)
            )["id"]
            for label in runs
        }
        truth = {label: stack.room.admin.wait_job(job, timeout=180, interval=0.3) for label, job in jobs.items()}
        during = {
            label: {k: v for k, v in stack.analyst.get_job(job).items() if k not in hidden}
            for label, job in jobs.items()
        }  # all three ended; none has reached its outcome time
        views = {}
        for label, job in jobs.items():
            done = stack.analyst.wait_job(job, timeout=180, interval=0.5)
            assert time.time() >= done["outcome_at"] - 1
            views[label] = (during[label], {k: v for k, v in done.items() if k not in hidden})
        assert views["never fails"] == views["fails on the target"] == views["sleeps on the target"], views
        assert views["never fails"][0]["status"] == "running"
        assert views["never fails"][1]["status"] == "nothing_released"  # held for the owner's review
        # control: what really happened differs, the owner sees it, and its approval is what changes the view
        assert truth["fails on the target"]["status"] == "failed"
        assert truth["fails on the target"]["error_class"] == "plugin_error", truth
        assert truth["never fails"]["status"] == truth["sleeps on the target"]["status"] == "succeeded"
        slept = truth["sleeps on the target"]
        assert slept["finished_at"] - slept["started_at"] > 6  # it did take longer: the analyst could not tell
        owner.approve_release(jobs["never fails"])
        assert stack.analyst.get_job(jobs["never fails"])["status"] == "released"
