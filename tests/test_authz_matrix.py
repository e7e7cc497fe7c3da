"""Authorisation matrix: every API route x every kind of caller, against real objects over HTTP.

The expected table (MATRIX below) is data: one row per case, one column per caller. Every route of
the app (except the OpenAPI/docs routes and the /ui pages, tested in test_web.py) must have at least
one row, so a new route without a rule *and* an expectation fails CI. No cell may answer 5xx.

The world is built once per module, without a runner: a room key registered with the runner's
token, three owners with datasets, two analysts, a reviewer, the scenario's plugins approved, a
queued job, and released jobs finished through the runner's routes (so release routes have real
objects). Mutating cases act on throwaway objects made for the cell, so the order does not matter.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from cleanroom import bundle, crypto, scenario
from cleanroom.api.authz import iter_routes
from cleanroom.crypto import KeyPair, digest, encrypt_bytes, generate_keypair
from cleanroom.prepare.ingest import new_join_secret

REPO = Path(__file__).resolve().parent.parent

CALLERS = ("anon", "admin", "owner", "other_owner", "analyst", "other_analyst", "reviewer", "runner")
# which org each caller is (anon has no token; the runner's org is made by the API)
ORG_OF = {
    "admin": "admin",
    "owner": "retailer",
    "other_owner": "telco",
    "analyst": "acme-analytics",
    "other_analyst": "other-analytics",
    "reviewer": "auditor",
    "runner": "runner",
}

# Routes with their own tests: FastAPI's OpenAPI/docs routes and the review web pages under /ui.
SKIPPED_ROUTES = {"openapi", "swagger_ui_html", "swagger_ui_redirect", "redoc_html"}
SKIPPED_PREFIXES = ("/ui",)

# The objects behind each column:
#   owner         = retailer: owns retail.purchases (an input of the jobs), the upload, the approval
#   other_owner   = telco: owns telco.usage only (no job uses it)
#   analyst       = acme-analytics: submitted the plugins and the jobs, recipient of the releases
#   other_analyst = other-analytics: an analyst with nothing of its own
#   reviewer      = auditor (role reviewer)
#   runner        = the runner service's token
# row: case (route name[@variant]), method, path, then one status per caller, in CALLERS order:
#      anon admin owner other_owner analyst other_analyst reviewer runner
MATRIX = """
health                 GET    /health                                        200  200  200  200  200  200  200  200
room_info              GET    /room                                          200  200  200  200  200  200  200  200
create_org             POST   /orgs                                          401  201  403  403  403  403  403  403
rotate_token           POST   /orgs/{name}/token                             401  200  403  403  403  403  403  403
list_orgs              GET    /orgs                                          401  200  200  200  200  200  200  403
whoami                 GET    /orgs/me                                       401  200  200  200  200  200  200  403
get_org                GET    /orgs/{name}                                   401  200  200  200  200  200  200  403
register_keys          PUT    /orgs/me/keys                                  401  200  200  200  200  200  200  403
rotate_keys            POST   /orgs/me/keys/rotate                           401  409  409  409  409  409  409  403
list_audit             GET    /audit                                         401  200  200  200  200  200  200  403
verify_audit           GET    /audit/verify                                  401  200  200  200  200  200  200  403
create_upload          POST   /datasets/uploads                              401  201  201  201  403  403  403  403
put_upload             PUT    /datasets/uploads/{upload_id}                  401  404  200  404  403  403  403  403
cancel_upload          DELETE /datasets/uploads/{upload_id}                  401  404  200  404  403  403  403  403
list_datasets          GET    /datasets                                      401  200  200  200  200  200  200  403
get_dataset            GET    /datasets/{name}                               401  200  200  200  200  200  200  403
update_policy          PUT    /datasets/{name}/policy                        401  403  200  403  403  403  403  403
withdraw_dataset       POST   /datasets/{name}/withdraw                      401  403  200  403  403  403  403  403
submit_plugin          POST   /plugins                                       401  201  201  201  201  201  403  403
list_plugins           GET    /plugins                                       401  200  200  200  200  200  200  403
get_plugin             GET    /plugins/{ref}                                 401  200  200  200  200  404  200  403
get_plugin_bundle      GET    /plugins/{ref}/bundle                          401  200  200  200  200  404  200  403
approve_plugin         POST   /plugins/{plugin_id}/approvals                 401  403  201  403  403  403  403  403
revoke_approval        DELETE /plugins/{plugin_id}/approvals/{approval_id}   401  403  200  403  403  403  403  403
submit_job             POST   /jobs                                          401  403  403  403  201  400  403  403
list_jobs              GET    /jobs                                          401  200  200  200  200  200  200  403
get_job                GET    /jobs/{job_id}                                 401  200  200  404  200  404  200  403
cancel_job             POST   /jobs/{job_id}/cancel                          401  200  200  404  200  404  403  403
job_logs               GET    /jobs/{job_id}/logs                            401  403  200  404  403  403  403  403
list_releases          GET    /releases                                      401  200  200  200  200  200  200  403
get_release            GET    /releases/{release_id}                         401  200  200  404  404  404  200  403
approve_release        POST   /releases/{release_id}/approve                 401  403  200  403  403  403  403  403
reject_release         POST   /releases/{release_id}/reject                  401  403  200  403  403  403  403  403
get_artifact@pending   GET    /releases/{release_id}/artifacts/{name:path}   401  403  200  404  404  404  403  403
get_artifact@reviewed  GET    /releases/{release_id}/artifacts/{name:path}   401  403  200  404  200  404  403  403
dataset_budget         GET    /datasets/{name}/budget                        401  200  200  403  200  403  200  403
job_cost               POST   /jobs/cost                                     401  200  200  200  200  200  403  403
storage_check          GET    /admin/storage/check                           401  200  403  403  403  403  403  403
storage_sweep          POST   /admin/storage/sweep                           401  200  403  403  403  403  403  403
runner_register        POST   /runner/register                               401  403  403  403  403  403  403  200
runner_recover         POST   /runner/recover                                401  403  403  403  403  403  403  200
runner_heartbeat       POST   /runner/heartbeat                              401  403  403  403  403  403  403  200
runner_claim           POST   /runner/claim                                  401  403  403  403  403  403  403  200
runner_job             GET    /runner/jobs/{job_id}                          401  403  403  403  403  403  403  200
runner_context         GET    /runner/jobs/{job_id}/context                  401  403  403  403  403  403  403  200
runner_ciphertext      GET    /runner/datasets/{name}/ciphertext             401  403  403  403  403  403  403  200
runner_bundle          GET    /runner/plugins/{plugin_id}/bundle             401  403  403  403  403  403  403  200
runner_progress        POST   /runner/jobs/{job_id}/progress                 401  403  403  403  403  403  403  200
runner_artifact        PUT    /runner/jobs/{job_id}/artifacts/{name:path}    401  403  403  403  403  403  403  200
runner_finish          POST   /runner/jobs/{job_id}/finish                   401  403  403  403  403  403  403  200
"""


@dataclass(frozen=True)
class Row:
    case: str
    route: str
    method: str
    path: str
    expected: dict[str, int]


def parse_matrix(text: str) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for line in text.strip().splitlines():
        case, method, path, *codes = line.split()
        assert len(codes) == len(CALLERS), f"row {case}: {len(codes)} codes for {len(CALLERS)} callers"
        assert case not in rows, f"duplicate row {case}"
        rows[case] = Row(case, case.partition("@")[0], method, path, dict(zip(CALLERS, map(int, codes), strict=True)))
    return rows


ROWS = parse_matrix(MATRIX)


# The world ----------------------------------------------------------------------------------------


@dataclass
class World:
    url: str
    http: httpx.Client
    tokens: dict[str, str | None]
    keys: dict[str, KeyPair]  # org name -> key pair (held in memory, never re-read)
    room_keys: KeyPair
    spec: str
    plugin_ids: dict[str, str]
    scratch_plugin: str  # submitted by the analyst, approved/revoked by cells
    datasets: dict[str, dict[str, Any]]
    queued_job: str
    pending_release: dict[str, str]  # job id, release id: waits for retail's review
    approve_target: dict[str, str]  # a pending release for the approve_release cells
    reject_target: dict[str, str]  # another one for the reject_release cells
    reviewed_release: dict[str, str]  # reviewed by retail: downloadable by the recipient
    ids: Iterator[int] = field(default_factory=lambda: iter(range(10**6)))

    def call(self, who: str, method: str, path: str, **kw: Any) -> httpx.Response:
        token = self.tokens[who]
        headers = dict(kw.pop("headers", {}))
        if token:
            headers["authorization"] = f"Bearer {token}"
        return self.http.request(method, path, headers=headers, **kw)

    def ok(self, who: str, method: str, path: str, **kw: Any) -> Any:
        resp = self.call(who, method, path, **kw)
        assert resp.status_code < 300, f"setup {method} {path} as {who}: {resp.status_code} {resp.text[:300]}"
        return resp.json()

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{next(self.ids)}-{secrets.token_hex(3)}"

    def signed_approval(self, who: str, plugin_id: str, dataset: str, decision: str = "approve") -> dict[str, Any]:
        org = ORG_OF.get(who, "retailer") if who not in ("anon", "runner") else "retailer"
        ds = self.datasets[dataset]
        payload = {
            "type": "plugin-approval",
            "plugin_id": plugin_id,
            "dataset": dataset,
            "policy_version": ds["policy_version"],
            "policy_sha256": ds["policy_sha256"],
            "dataset_sha256": ds["sha256"],
            "decision": decision,
            "reason": "",
            "org": org,
            "issued_at": time.time(),
        }
        return {"payload": payload, "signature": self.keys[org].sign(payload)}

    def cancel_if_queued(self, job_id: str) -> None:
        status = self.ok("admin", "GET", f"/jobs/{job_id}")["status"]
        if status in ("queued", "running"):
            self.ok("admin", "POST", f"/jobs/{job_id}/cancel")


def _release(w: World, *, reviewed: bool) -> dict[str, str]:
    """A job finished through the runner's own routes, with an encrypted artifact and a log."""
    job = w.ok("analyst", "POST", "/jobs", json={"spec": w.spec})["id"]
    claimed = w.ok("runner", "POST", "/runner/claim")["job"]
    assert claimed == job, "setup: another job was queued"
    readers = [w.keys[o].enc_public for o in ("acme-analytics", "retailer", "bank")]
    plain = b'{"metrics": {"r2": 0.5}}'
    art = w.ok("runner", "PUT", f"/runner/jobs/{job}/artifacts/metrics.json", content=encrypt_bytes(plain, readers))
    log = w.ok("runner", "PUT", f"/runner/jobs/{job}/artifacts/_logs", content=encrypt_bytes(b"log", readers[1:]))
    manifest = {
        "job_id": job,
        "outputs": {"metrics.json": {"sha256": hashlib.sha256(plain).hexdigest(), "bytes": len(plain)}},
        "checks": [],
        "epsilon_spent": 0.0,
        "recipient": "acme-analytics",
    }
    done = w.ok(
        "runner",
        "POST",
        f"/runner/jobs/{job}/finish",
        json={
            "status": "succeeded",
            "reason": "",
            "log_blob": log["blob"],
            "release": {
                "manifest": manifest,
                "receipt": {"body": {}, "signature": "", "room_keys": {}},
                "artifacts": {"metrics.json": {"blob": art["blob"], "size": art["size"]}},
                "review_by": ["retail.purchases"],
            },
        },
    )
    release = {"job": job, "release": done["release_id"]}
    if reviewed:
        payload = {
            "type": "release-approval",
            "release_id": release["release"],
            "dataset": "retail.purchases",
            "manifest_sha256": digest(manifest),
            "org": "retailer",
            "issued_at": time.time(),
        }
        w.ok(
            "owner",
            "POST",
            f"/releases/{release['release']}/approve",
            json={"payload": payload, "signature": w.keys["retailer"].sign(payload)},
        )
    return release


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from tests.conftest import Room

    base = tmp_path_factory.mktemp("authz")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLEANROOM_HOME", str(base / "home"))  # org keys made during setup stay in tmp
        for var in ("CLEANROOM_URL", "CLEANROOM_TOKEN", "CLEANROOM_PROFILE"):
            mp.delenv(var, raising=False)
        room = Room(base / "api-data")
        try:
            yield _build_world(room, base)
        finally:
            room.stop()


def _build_world(room: Any, base: Path) -> World:
    room_keys = generate_keypair()  # what the runner does on its first start
    httpx.post(
        room.url + "/runner/register",
        headers={"authorization": f"Bearer {room.runner_token}"},
        json={"enc_public": room_keys.enc_public, "sign_public": room_keys.sign_public},
    ).raise_for_status()
    admin_keys = room.admin.keys()
    retailer = room.org("retailer", "owner")
    bank = room.org("bank", "owner")
    telco = room.org("telco", "owner")
    analyst = room.org("acme-analytics", "analyst")
    other = room.org("other-analytics", "analyst")
    reviewer = room.org("auditor", "reviewer")
    files = scenario.write_data(base / "data", 120)
    secret = new_join_secret()
    retailer.upload_dataset(
        files["retail"],
        name="retail.purchases",
        policy=scenario.RETAIL_POLICY,
        id_column="customer_id",
        join_secret=secret,
    )
    retailer.upload_dataset(
        files["retail"],
        name="retail.scratch",
        policy=scenario.RETAIL_POLICY,
        id_column="customer_id",
        join_secret=secret,
    )
    bank.upload_dataset(
        files["bank"], name="bank.customers", policy=scenario.BANK_POLICY, id_column="customer_id", join_secret=secret
    )
    telco.upload_dataset(
        files["bank"], name="telco.usage", policy=scenario.BANK_POLICY, id_column="customer_id", join_secret=secret
    )
    ids = {name: analyst.submit_plugin(REPO / "plugins" / name)["id"] for name in scenario.PLUGINS}
    for pid in ids.values():
        retailer.decide_plugin(pid, "retail.purchases")
        bank.decide_plugin(pid, "bank.customers")
    scratch = analyst.submit_plugin(REPO / "plugins" / "scale")["id"]
    keys = {c.whoami()["name"]: c.keys() for c in (retailer, bank, telco, analyst, other, reviewer)}
    keys["admin"] = admin_keys
    tokens: dict[str, str | None] = {
        "anon": None,
        "admin": room.admin_token,
        "owner": retailer.token,
        "other_owner": telco.token,
        "analyst": analyst.token,
        "other_analyst": other.token,
        "reviewer": reviewer.token,
        "runner": room.runner_token,
    }
    w = World(
        url=room.url,
        http=httpx.Client(base_url=room.url, timeout=60),
        tokens=tokens,
        keys=keys,
        room_keys=room_keys,
        spec=scenario.job_spec(ids, epsilon=0.01) + "delta = 1e-10\n",
        plugin_ids=ids,
        scratch_plugin=scratch,
        datasets={},
        queued_job="",
        pending_release={},
        approve_target={},
        reviewed_release={},
        reject_target={},
    )
    for name in ("retail.purchases", "retail.scratch", "bank.customers", "telco.usage"):
        w.datasets[name] = w.ok("admin", "GET", f"/datasets/{name}")
    # released jobs first (the runner claims the oldest queued job), then the job that stays queued
    w.pending_release = _release(w, reviewed=False)
    w.approve_target = _release(w, reviewed=False)
    w.reject_target = _release(w, reviewed=False)
    w.reviewed_release = _release(w, reviewed=True)
    with room.store.tx() as conn:  # as if their time budgets ran out: their analyst may see the outcome
        conn.execute("UPDATE jobs SET reveal_at = started_at WHERE started_at IS NOT NULL")
    w.queued_job = w.ok("analyst", "POST", "/jobs", json={"spec": w.spec})["id"]
    return w


# One request per case and caller -----------------------------------------------------------------


@dataclass
class Req:
    method: str
    path: str
    kw: dict[str, Any] = field(default_factory=dict)
    after: Callable[[], None] | None = None  # clean-up run whatever the answer was


# the room refuses a policy whose [columns.X] rules name columns the schema lacks: one that names none
MATRIX_POLICY = '[release]\nrecipients = ["acme-analytics"]\n'


def _upload_meta(w: World, *, name: str, sha256: str, size: int) -> dict[str, Any]:
    return {
        "name": name,
        "description": "authz matrix",
        "policy": MATRIX_POLICY,
        "schema": {"columns": [{"name": "_pid", "type": "string"}, {"name": "x", "type": "integer"}]},
        "row_count": 1,
        "mock": [],
        "dropped": [],
        "sha256": sha256,
        "size": size,
    }


def _put_upload(w: World, who: str) -> Req:
    data = encrypt_bytes(b"_pid,x\nabc,1\n", [w.room_keys.enc_public])
    decl = w.ok(
        "owner",
        "POST",
        "/datasets/uploads",
        json=_upload_meta(w, name=w.unique("authz.upload"), sha256=hashlib.sha256(data).hexdigest(), size=len(data)),
    )
    return Req("PUT", decl["put"], {"content": data, "headers": {"content-type": "application/octet-stream"}})


def _cancel_upload(w: World, who: str) -> Req:
    decl = w.ok(
        "owner",
        "POST",
        "/datasets/uploads",
        json=_upload_meta(w, name=w.unique("authz.cancel"), sha256=secrets.token_hex(32), size=100),
    )
    return Req("DELETE", decl["put"])


def _withdraw(w: World, who: str) -> Req:
    """A throwaway dataset of the owner's (uploaded for the cell), withdrawn by the caller."""
    data = encrypt_bytes(b"_pid,x\nabc,1\n", [w.room_keys.enc_public])
    name = w.unique("authz.withdraw")
    decl = w.ok(
        "owner",
        "POST",
        "/datasets/uploads",
        json=_upload_meta(w, name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data)),
    )
    w.ok("owner", "PUT", decl["put"], content=data, headers={"content-type": "application/octet-stream"})
    return Req("POST", f"/datasets/{name}/withdraw")


def _update_policy(w: World, who: str) -> Req:
    k = 10 + next(w.ids)  # a new policy every time (an unchanged one is a 409)
    return Req(
        "PUT",
        "/datasets/retail.scratch/policy",
        {"json": {"policy": scenario.RETAIL_POLICY.replace("k = 10", f"k = {k}")}},
    )


def _revoke(w: World, who: str) -> Req:
    approval = w.ok(
        "owner",
        "POST",
        f"/plugins/{w.scratch_plugin}/approvals",
        json=w.signed_approval("owner", w.scratch_plugin, "retail.purchases"),
    )
    return Req("DELETE", f"/plugins/{w.scratch_plugin}/approvals/{approval['id']}")


def _submit_job(w: World, who: str) -> Req:
    def after() -> None:
        # cancel what the cell made, so queue limits and the runner's claim order stay as they were
        for job in w.ok("admin", "GET", "/jobs", params={"limit": 1000})["items"]:
            if job["status"] == "queued" and job["id"] != w.queued_job:
                w.ok("admin", "POST", f"/jobs/{job['id']}/cancel")

    return Req("POST", "/jobs", {"json": {"spec": w.spec}}, after)


def _cancel_job(w: World, who: str) -> Req:
    job = w.ok("analyst", "POST", "/jobs", json={"spec": w.spec})["id"]
    return Req("POST", f"/jobs/{job}/cancel", after=lambda: w.cancel_if_queued(job))


def _release_decision(w: World, who: str, verb: str, target: dict[str, Any], **extra: Any) -> Req:
    """A signed release approval or rejection (`verb`: approve, reject) of `target`'s release."""
    rid = target["release"]
    release = w.ok("admin", "GET", f"/releases/{rid}")
    org = ORG_OF[who] if who not in ("anon", "runner") else "retailer"
    payload = {
        "type": {"approve": "release-approval", "reject": "release-rejection"}[verb],
        "release_id": rid,
        "dataset": "retail.purchases",
        "manifest_sha256": digest(release["manifest"]),
        "org": org,
        "issued_at": time.time(),
        **extra,
    }
    return Req(
        "POST", f"/releases/{rid}/{verb}", {"json": {"payload": payload, "signature": w.keys[org].sign(payload)}}
    )


def _approve_release(w: World, who: str) -> Req:
    return _release_decision(w, who, "approve", w.approve_target)


def _reject_release(w: World, who: str) -> Req:
    return _release_decision(w, who, "reject", w.reject_target, reason="no")


def _rotate_keys(w: World, who: str) -> Req:
    org = ORG_OF[who] if who not in ("anon", "runner") else "retailer"
    stranger, new = crypto.generate_keypair(), crypto.generate_keypair()
    payload = {
        "type": "key-rotation",
        "org": org,
        "old_sign_public": stranger.sign_public,
        "new_enc_public": new.enc_public,
        "new_sign_public": new.sign_public,
        "issued_at": time.time(),
    }
    return Req(
        "POST",
        "/orgs/me/keys/rotate",
        {"json": {"payload": payload, "old_signature": stranger.sign(payload), "new_signature": new.sign(payload)}},
    )


def _runner_finish(w: World, who: str) -> Req:
    job = w.ok("analyst", "POST", "/jobs", json={"spec": w.spec})["id"]
    return Req(
        "POST",
        f"/runner/jobs/{job}/finish",
        {"json": {"status": "failed", "reason": "authz matrix", "error_class": "test"}},
        after=lambda: w.cancel_if_queued(job),
    )


def _own_keys(w: World, who: str) -> Req:
    pair = w.keys[ORG_OF.get(who, "retailer")] if who not in ("anon", "runner") else w.keys["retailer"]
    return Req("PUT", "/orgs/me/keys", {"json": {"enc_public": pair.enc_public, "sign_public": pair.sign_public}})


def _get(path: str) -> Callable[[World, str], Req]:
    return lambda w, who: Req("GET", path.format(w=w))


def _post(path: str, **kw: Any) -> Callable[[World, str], Req]:
    return lambda w, who: Req("POST", path.format(w=w), dict(kw))


BUILDERS: dict[str, Callable[[World, str], Req]] = {
    "health": _get("/health"),
    "room_info": _get("/room"),
    "create_org": lambda w, who: Req("POST", "/orgs", {"json": {"name": w.unique("org"), "roles": ["analyst"]}}),
    # a statement naming a key that is not the caller's: authorised callers get 409, and nobody's keys change
    "rotate_keys": _rotate_keys,
    # a fresh org per cell: rotating a caller's own token would break the cells after it
    "rotate_token": lambda w, who: Req(
        "POST",
        "/orgs/{}/token".format(
            w.ok("admin", "POST", "/orgs", json={"name": w.unique("org"), "roles": ["analyst"]})["org"]["name"]
        ),
    ),
    "list_orgs": _get("/orgs"),
    "whoami": _get("/orgs/me"),
    "get_org": _get("/orgs/retailer"),
    "register_keys": _own_keys,
    "list_audit": _get("/audit"),
    "verify_audit": _get("/audit/verify"),
    "create_upload": lambda w, who: Req(
        "POST",
        "/datasets/uploads",
        {"json": _upload_meta(w, name=w.unique("authz.decl"), sha256=secrets.token_hex(32), size=100)},
    ),
    "put_upload": _put_upload,
    "cancel_upload": _cancel_upload,
    "list_datasets": _get("/datasets"),
    "get_dataset": _get("/datasets/retail.purchases"),
    "update_policy": _update_policy,
    "withdraw_dataset": _withdraw,
    "submit_plugin": lambda w, who: Req(
        "POST",
        "/plugins",
        {"content": bundle.pack(REPO / "plugins" / "scale"), "headers": {"content-type": "application/x-tar"}},
    ),
    "list_plugins": _get("/plugins"),
    "get_plugin": _get("/plugins/{w.plugin_ids[impute]}"),
    "get_plugin_bundle": _get("/plugins/{w.plugin_ids[impute]}/bundle"),
    "approve_plugin": lambda w, who: Req(
        "POST",
        f"/plugins/{w.scratch_plugin}/approvals",
        {"json": w.signed_approval(who, w.scratch_plugin, "retail.purchases")},
    ),
    "revoke_approval": _revoke,
    "submit_job": _submit_job,
    "list_jobs": _get("/jobs"),
    "get_job": _get("/jobs/{w.queued_job}"),
    "cancel_job": _cancel_job,
    "job_logs": _get("/jobs/{w.pending_release[job]}/logs"),
    "list_releases": _get("/releases"),
    "get_release": _get("/releases/{w.pending_release[release]}"),
    "approve_release": _approve_release,
    "reject_release": _reject_release,
    "get_artifact@pending": _get("/releases/{w.pending_release[release]}/artifacts/metrics.json"),
    "get_artifact@reviewed": _get("/releases/{w.reviewed_release[release]}/artifacts/metrics.json"),
    "dataset_budget": _get("/datasets/retail.purchases/budget"),
    "job_cost": lambda w, who: Req("POST", "/jobs/cost", {"json": {"spec": w.spec}}),
    "storage_check": _get("/admin/storage/check"),
    "storage_sweep": _post("/admin/storage/sweep", json={"dry_run": True}),
    "runner_register": lambda w, who: Req(
        "POST",
        "/runner/register",
        {"json": {"enc_public": w.room_keys.enc_public, "sign_public": w.room_keys.sign_public}},
    ),
    "runner_recover": _post("/runner/recover"),
    "runner_heartbeat": _post("/runner/heartbeat", json={"instance": "matrix-1", "name": "matrix", "ttl": 30}),
    "runner_claim": _post("/runner/claim"),
    "runner_job": _get("/runner/jobs/{w.queued_job}"),
    "runner_context": _get("/runner/jobs/{w.queued_job}/context"),
    "runner_ciphertext": _get("/runner/datasets/retail.purchases/ciphertext"),
    "runner_bundle": _get("/runner/plugins/{w.plugin_ids[impute]}/bundle"),
    "runner_progress": _post("/runner/jobs/{w.pending_release[job]}/progress", json={"phase": "compute"}),
    "runner_artifact": lambda w, who: Req(
        "PUT", f"/runner/jobs/{w.pending_release['job']}/artifacts/extra.bin", {"content": b"opaque"}
    ),
    "runner_finish": _runner_finish,
}


# Tests --------------------------------------------------------------------------------------------


def app_routes(tmp_path: Path) -> dict[str, set[tuple[str, str]]]:
    """Route name -> {(method, path)} of the real app, without the skipped routes."""
    from cleanroom.api.app import create_app
    from cleanroom.settings import Settings

    app = create_app(Settings(data_dir=tmp_path / "routes"))
    routes: dict[str, set[tuple[str, str]]] = {}
    for route in iter_routes(app.routes):
        name, path = getattr(route, "name", None), getattr(route, "path", "")
        if name in SKIPPED_ROUTES or path.startswith(SKIPPED_PREFIXES):
            continue
        for method in sorted(getattr(route, "methods", None) or {"?"}):
            if method != "HEAD":
                routes.setdefault(str(name), set()).add((method, path))
    return routes


def test_every_route_has_a_row_and_every_row_a_route(tmp_path: Path) -> None:
    routes = app_routes(tmp_path)
    covered = {row.route for row in ROWS.values()}
    missing = sorted(set(routes) - covered)
    assert not missing, (
        f"routes with no row in the authorisation matrix: {missing}; add a rule to "
        "cleanroom/api/authz.py RULES and an expectation row to tests/test_authz_matrix.py"
    )
    stale = sorted(covered - set(routes))
    assert not stale, f"matrix rows for routes that no longer exist: {stale}"
    moved = [
        f"{row.case}: table says {row.method} {row.path}, app has {sorted(routes[row.route])}"
        for row in ROWS.values()
        if (row.method, row.path) not in routes[row.route]
    ]
    assert not moved, "\n".join(moved)
    assert set(BUILDERS) == set(ROWS), sorted(set(BUILDERS) ^ set(ROWS))


def test_every_route_has_an_authz_rule() -> None:
    from cleanroom.api.authz import RULES

    missing = sorted({row.route for row in ROWS.values()} - set(RULES))
    assert not missing, f"routes in the matrix without a rule in authz.RULES: {missing}"


@pytest.mark.parametrize("case", list(ROWS))
def test_matrix(world: World, case: str) -> None:
    row = ROWS[case]
    problems = []
    for who in CALLERS:
        req = BUILDERS[case](world, who)
        try:
            resp = world.call(who, req.method, req.path, **req.kw)
        finally:
            if req.after:
                req.after()
        got = resp.status_code
        assert got < 500, f"{case} as {who}: {got} {resp.text[:300]}"
        if got != row.expected[who]:
            problems.append(f"{who:>13}: expected {row.expected[who]}, got {got} {resp.text[:160]}")
        if got >= 400:
            body = resp.json()
            assert isinstance(body, dict) and "error" in body, f"{case} as {who}: error body {resp.text[:200]}"
            assert "Traceback" not in resp.text
    assert not problems, f"{row.method} {row.path}\n" + "\n".join(problems)


def test_lists_show_only_what_the_caller_may_see(world: World) -> None:
    """The list routes answer 200 to everyone; their content follows the same visibility as get_*."""

    def names(who: str, path: str, key: str) -> set[str]:
        return {item[key] for item in world.ok(who, "GET", path)["items"]}

    everything = names("admin", "/jobs", "id")
    assert world.queued_job in everything
    assert world.queued_job in names("owner", "/jobs", "id")
    assert world.queued_job in names("reviewer", "/jobs", "id")
    assert names("other_owner", "/jobs", "id") == set()
    # the other analyst sees only what it submitted itself (the submit_job cell may have made one)
    assert all(j["submitted_by"] == "other-analytics" for j in world.ok("other_analyst", "GET", "/jobs")["items"])
    assert all(p["submitted_by"] == "other-analytics" for p in world.ok("other_analyst", "GET", "/plugins")["items"])
    assert world.plugin_ids["impute"] not in names("other_analyst", "/plugins", "id")
    assert world.plugin_ids["impute"] in names("other_owner", "/plugins", "id")
    assert names("other_owner", "/releases", "id") == set()
    assert names("other_analyst", "/releases", "id") == set()
    # the recipient lists a release once released; one pending review does not exist for it yet
    assert world.reviewed_release["release"] in names("analyst", "/releases", "id")
    assert world.pending_release["release"] not in names("analyst", "/releases", "id")
    assert world.pending_release["release"] in names("owner", "/releases", "id")
    # analysts get no reason text, error class or phase (how a job ended is for the owners)
    job = world.ok("analyst", "GET", f"/jobs/{world.queued_job}")
    assert "reason" not in job and job["error_class"] is None and job["phase"] is None
    assert json.dumps(world.ok("runner", "GET", "/health"))  # public routes stay public for the runner
