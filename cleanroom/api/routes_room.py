"""Health, the room's public keys, orgs and the audit log."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from cleanroom import __version__, audit
from cleanroom.api.app import row_dict
from cleanroom.api.authz import ROLES
from cleanroom.api.deps import Ctx, get_ctx, new_token
from cleanroom.api.openapi import errors
from cleanroom.api.schemas import AuditPage, AuditVerification, Health, Org, OrgKeysRotated, OrgToken, RoomInfo
from cleanroom.crypto import fingerprint, verify
from cleanroom.errors import Conflict, NotFound, PermissionDenied, ValidationError
from cleanroom.identifiers import check_name
from cleanroom.store.db import new_id, now

CLOCK_SKEW = 600  # seconds a signed statement may be old (or ahead): the same as approvals

router = APIRouter()


@router.get("/health", tags=["room"], operation_id="get_health", response_model=Health)
def health(ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Liveness and readiness: the database answers."""
    with ctx.store.read() as conn:
        conn.execute("SELECT 1").fetchone()
        room = conn.execute("SELECT value FROM room WHERE key = 'keys'").fetchone()
    return {"status": "ok", "version": __version__, "room_key": bool(room)}


def room_keys(conn: Any) -> dict[str, Any] | None:
    row = conn.execute("SELECT value FROM room WHERE key = 'keys'").fetchone()
    return json.loads(row["value"]) if row else None


@router.get("/room", tags=["room"], operation_id="get_room", response_model=RoomInfo)
def room_info(ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """The room's public keys (data encryption and receipt signing) and their fingerprint."""
    with ctx.store.read() as conn:
        keys = room_keys(conn)
        # no count of releases: it would tell anyone when some job succeeded
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("orgs", "datasets", "plugins", "jobs")}
    return {"version": __version__, "ready": keys is not None, "keys": keys, "counts": counts}


class OrgIn(BaseModel):
    name: str = Field(min_length=2, max_length=40)
    roles: list[str] = Field(min_length=1)


def _org_view(row: Any) -> dict[str, Any]:
    org = row_dict(row, "roles")
    keys = None
    if org.get("enc_public") and org.get("sign_public"):
        keys = {"enc_public": org["enc_public"], "sign_public": org["sign_public"],
                "fingerprint": fingerprint(org["enc_public"] + org["sign_public"])}
    return {"id": org["id"], "name": org["name"], "roles": org["roles"], "keys": keys,
            "created_at": org["created_at"]}


@router.post("/orgs", status_code=201, tags=["orgs"], operation_id="create_org", response_model=OrgToken,
              responses=errors(409))
def create_org(body: OrgIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Create an org with roles; its token is in the answer and never shown again."""
    check_name("org", body.name)
    bad = [r for r in body.roles if r not in ROLES or r in ("admin", "runner")]
    if bad:
        raise ValidationError(f"unknown or reserved role {bad[0]!r}",
                              hint="roles: owner, analyst, reviewer")
    with ctx.store.tx() as conn:
        if conn.execute("SELECT 1 FROM orgs WHERE name = ?", (body.name,)).fetchone():
            raise Conflict(f"an org named {body.name!r} exists already")
        check_name("org", body.name, [r[0] for r in conn.execute("SELECT name FROM orgs")])
        org_id = new_id("org")
        roles = sorted(set(body.roles))
        conn.execute("INSERT INTO orgs (id, name, roles, created_at) VALUES (?,?,?,?)",
                     (org_id, body.name, json.dumps(roles), now()))
        token = new_token(conn, org_id)
        ctx.audit(conn, "org.created", "org", body.name, {"roles": roles})
        row = conn.execute("SELECT * FROM orgs WHERE id = ?", (org_id,)).fetchone()
    return {"org": _org_view(row), "token": token}


@router.post("/orgs/{name}/token", tags=["orgs"], operation_id="rotate_token", response_model=OrgToken,
              responses=errors(404))
def rotate_token(name: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Revoke every token of an org and issue a new one, shown once: the org itself (`me` or its name),
    or an admin for an org that lost its token. The runner's token is managed by its token file."""
    with ctx.store.tx() as conn:
        row = conn.execute("SELECT * FROM orgs WHERE name = ?",
                           (ctx.caller.name if name == "me" else name,)).fetchone()
        if not row or row["name"] == "runner":
            raise NotFound(f"no org named {name!r}")
        if row["id"] != ctx.caller.org_id and not ctx.caller.is_admin:
            raise PermissionDenied("only the org itself or an admin can rotate its token")
        conn.execute("UPDATE tokens SET revoked_at = ? WHERE org_id = ? AND revoked_at IS NULL",
                     (now(), row["id"]))
        token = new_token(conn, row["id"])
        ctx.audit(conn, "token.rotated", "org", row["name"], {"by": ctx.caller.name})
    return {"org": _org_view(row), "token": token}


@router.get("/orgs", tags=["orgs"])
def list_orgs(ctx: Ctx = Depends(get_ctx)) -> list[dict[str, Any]]:
    """Every org in the room with its roles and public keys."""
    with ctx.store.read() as conn:
        rows = conn.execute("SELECT * FROM orgs WHERE name NOT IN ('runner') ORDER BY name").fetchall()
    return [_org_view(r) for r in rows]


@router.get("/orgs/me", tags=["orgs"], operation_id="whoami", response_model=Org)
def whoami(ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """The org behind the token."""
    with ctx.store.read() as conn:
        row = conn.execute("SELECT * FROM orgs WHERE id = ?", (ctx.caller.org_id,)).fetchone()
    return _org_view(row)


@router.get("/orgs/{name}", tags=["orgs"], operation_id="get_org", response_model=Org, responses=errors(404))
def get_org(name: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """One org's roles and public keys."""
    with ctx.store.read() as conn:
        row = conn.execute("SELECT * FROM orgs WHERE name = ?", (name,)).fetchone()
    if not row:
        raise NotFound(f"no org named {name!r}")
    return _org_view(row)


class KeysIn(BaseModel):
    enc_public: str = Field(max_length=200)
    sign_public: str = Field(max_length=200)


@router.put("/orgs/me/keys", tags=["orgs"], operation_id="register_keys", response_model=Org,
             responses=errors(409))
def register_keys(body: KeysIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Register the public halves of the org's key pair (generated on the org's machine)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from pyrage import x25519

    try:
        x25519.Recipient.from_str(body.enc_public)
        import base64

        Ed25519PublicKey.from_public_bytes(base64.b64decode(body.sign_public, validate=True))
    except Exception as exc:
        raise ValidationError("the public keys are not valid (age X25519 and base64 Ed25519)") from exc
    with ctx.store.tx() as conn:
        row = conn.execute("SELECT * FROM orgs WHERE id = ?", (ctx.caller.org_id,)).fetchone()
        if row["enc_public"]:
            if (row["enc_public"], row["sign_public"]) == (body.enc_public, body.sign_public):
                return _org_view(row)
            raise Conflict("this org registered other keys already",
                           hint="key rotation is not supported yet; ask the operator")
        conn.execute("UPDATE orgs SET enc_public = ?, sign_public = ? WHERE id = ?",
                     (body.enc_public, body.sign_public, ctx.caller.org_id))
        ctx.audit(conn, "org.keys_registered", "org", ctx.caller.name,
                  {"fingerprint": fingerprint(body.enc_public + body.sign_public)})
        row = conn.execute("SELECT * FROM orgs WHERE id = ?", (ctx.caller.org_id,)).fetchone()
    return _org_view(row)


class KeyRotationIn(BaseModel):
    payload: dict[str, Any]
    old_signature: str = Field(max_length=200)
    new_signature: str = Field(max_length=200)


ROTATION_KEYS = {"type", "org", "old_sign_public", "new_enc_public", "new_sign_public", "issued_at"}


@router.post("/orgs/me/keys/rotate", tags=["orgs"], operation_id="rotate_keys", response_model=OrgKeysRotated,
              responses=errors(409, 422))
def rotate_keys(body: KeyRotationIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Replace the org's keys with a statement signed by the old signing key (it is the org) and the new
    one (it holds it). Runners follow the chain of statements from the key they pinned. The org's
    approvals, signed with the old key, are revoked: approve again with the new one."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from pyrage import x25519

    p = body.payload
    if set(p) != ROTATION_KEYS or p.get("type") != "key-rotation":
        raise ValidationError(f"a key rotation payload has exactly the keys {sorted(ROTATION_KEYS)}, "
                              "type 'key-rotation'")
    if p["org"] != ctx.caller.name:
        raise PermissionDenied("the statement names another org than the caller")
    issued = p["issued_at"]
    if not isinstance(issued, int | float) or abs(time.time() - issued) > CLOCK_SKEW:
        raise ValidationError("the statement is stale or from the future (replay?)")
    try:
        x25519.Recipient.from_str(str(p["new_enc_public"]))
        Ed25519PublicKey.from_public_bytes(base64.b64decode(str(p["new_sign_public"]), validate=True))
    except Exception as exc:
        raise ValidationError("the new public keys are not valid (age X25519 and base64 Ed25519)") from exc
    with ctx.store.tx() as conn:
        row = conn.execute("SELECT * FROM orgs WHERE id = ?", (ctx.caller.org_id,)).fetchone()
        if not row["sign_public"] or row["sign_public"] != p["old_sign_public"]:
            raise Conflict("the statement does not name the org's registered signing key")
        if p["new_sign_public"] == row["sign_public"]:
            raise ValidationError("the new signing key is the old one")
        verify(row["sign_public"], p, body.old_signature)
        verify(p["new_sign_public"], p, body.new_signature)
        conn.execute("INSERT INTO key_rotations (org_id, payload, old_signature, new_signature, created_at)"
                     " VALUES (?,?,?,?,?)", (row["id"], json.dumps(p), body.old_signature, body.new_signature,
                                             now()))
        conn.execute("UPDATE orgs SET enc_public = ?, sign_public = ? WHERE id = ?",
                     (p["new_enc_public"], p["new_sign_public"], row["id"]))
        revoked = conn.execute("UPDATE approvals SET revoked_at = ? WHERE org_id = ? AND revoked_at IS NULL",
                               (now(), row["id"])).rowcount
        ctx.audit(conn, "org.keys_rotated", "org", row["name"],
                  {"old": fingerprint(row["enc_public"] + row["sign_public"]),
                   "new": fingerprint(p["new_enc_public"] + p["new_sign_public"]), "approvals_revoked": revoked})
        row = conn.execute("SELECT * FROM orgs WHERE id = ?", (row["id"],)).fetchone()
    return {**_org_view(row), "approvals_revoked": revoked}


def key_rotations(conn: Any, org_id: str) -> list[dict[str, Any]]:
    """An org's signed key rotations, oldest first (the runner walks them from the key it pinned)."""
    return [{"payload": json.loads(r["payload"]), "old_signature": r["old_signature"],
             "new_signature": r["new_signature"]}
            for r in conn.execute("SELECT * FROM key_rotations WHERE org_id = ? ORDER BY seq", (org_id,))]


class AuditScope:
    """Which audit events an org reads in full: those about itself, its datasets and plugins, the
    submission and start of jobs it may see, and every event of the jobs whose outcome it sees
    (`routes_jobs.sees_outcome`). Admins and reviewers read everything. Other events are redacted."""

    def __init__(self, conn: Any, caller: Any) -> None:
        self.conn, self.caller = conn, caller
        self.everything = caller.has("admin", "reviewer")
        self.datasets = {r[0] for r in conn.execute("SELECT name FROM datasets WHERE owner_id = ?", (caller.org_id,))}
        self.plugins = {r[0] for r in conn.execute("SELECT id FROM plugins WHERE submitted_by = ?", (caller.org_id,))}
        self.jobs: dict[str, tuple[bool, bool]] = {}

    def job(self, job_id: str) -> tuple[bool, bool]:
        """(may see the job, sees its outcome)."""
        from cleanroom.api.authz import visible_job
        from cleanroom.api.routes_jobs import input_owner_ids, load_job, sees_outcome

        if job_id not in self.jobs:
            try:
                job = load_job(self.conn, job_id)
                owner_ids = input_owner_ids(self.conn, job)
                rel = visible_job(self.caller, job, owner_ids)
                self.jobs[job_id] = (True, sees_outcome(self.caller, rel, owner_ids))
            except NotFound:
                self.jobs[job_id] = (False, False)
        return self.jobs[job_id]

    def readable(self, event: dict[str, Any]) -> bool:
        if self.everything:
            return True
        kind, oid, action, mine = event["object_type"], event["object_id"], event["action"], \
            event["actor"] == self.caller.name
        if kind == "job":  # a job's later events (phases, outcome, release) tell how it went
            related, full = self.job(oid)
            return full or related and (action in ("job.submitted", "job.started")
                                        or action == "job.cancelled" and mine)
        if kind == "release":
            row = self.conn.execute("SELECT job_id FROM releases WHERE id = ?", (oid,)).fetchone()
            return bool(row) and self.job(row[0])[1]
        return (mine or kind == "room" or kind == "org" and oid == self.caller.name
                or kind == "dataset" and oid in self.datasets or kind == "plugin" and oid in self.plugins)

    def view(self, event: dict[str, Any]) -> dict[str, Any]:
        return event if self.readable(event) else audit.redact(event)


@router.get("/audit", tags=["audit"], operation_id="list_audit_events", response_model=AuditPage)
def list_audit(after: int = Query(0, ge=0, le=2**63 - 1), limit: int = Query(1000, ge=1, le=10_000),
               ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Audit events after sequence number `after`, oldest first (at most `limit`, max 10000). Events you
    may not read come as `{seq, prev_hash, hash, redacted: true}`: the chain still verifies."""
    from cleanroom.api.routes_jobs import release_held_events

    limit = max(1, min(limit, 10_000))
    with ctx.store.read() as conn:
        due = conn.execute("SELECT 1 FROM jobs WHERE held_events IS NOT NULL AND reveal_at <= ? LIMIT 1",
                           (now(),)).fetchone()
    if due:  # a job's outcome time passed: its held events join the chain before anyone reads it
        with ctx.store.tx() as conn:
            release_held_events(conn)
    with ctx.store.read() as conn:
        rows = conn.execute("SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)).fetchall()
        total = conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
        scope = AuditScope(conn, ctx.caller)
        events = [scope.view(audit.row_to_event(r)) for r in rows]
    return {"events": events, "total": total}


@router.get("/audit/verify", tags=["audit"], operation_id="verify_audit", response_model=AuditVerification)
def verify_audit(ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """The server's own check of the chain (clients should also verify with `cleanroom audit verify`)."""
    with ctx.store.read() as conn:
        events = [audit.row_to_event(r) for r in conn.execute("SELECT * FROM audit ORDER BY rowid")]
    return audit.verify_events(events)
