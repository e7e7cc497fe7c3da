"""Health, the room's public keys, orgs and the audit log."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from cleanroom import __version__
from cleanroom.api import audit_views
from cleanroom.api.authz import ROLES
from cleanroom.api.common import DEFAULT_LIMIT, After, Limit, decode_cursor, page
from cleanroom.api.deps import Ctx, get_ctx, new_token
from cleanroom.api.openapi import errors
from cleanroom.api.schemas import AuditPage, AuditVerification, Health, Org, OrgKeysRotated, OrgPage, OrgToken, RoomInfo
from cleanroom.api.statements import ROTATION_KEYS, check_fresh, check_public_keys
from cleanroom.api.views import org_view
from cleanroom.audit import verify_events
from cleanroom.crypto import fingerprint, verify
from cleanroom.errors import Conflict, NotFound, PermissionDenied, ValidationError
from cleanroom.identifiers import check_name
from cleanroom.store import approvals, audit, orgs, room
from cleanroom.store.db import new_id, now

router = APIRouter()


@router.get("/health", tags=["room"], operation_id="get_health", response_model=Health)
def health(ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Liveness and readiness: the database answers."""
    with ctx.store.read() as conn:
        room.ping(conn)
        keys = room.keys(conn)
    return {"status": "ok", "version": __version__, "room_key": bool(keys)}


@router.get("/room", tags=["room"], operation_id="get_room", response_model=RoomInfo)
def room_info(ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """The room's public keys (data encryption and receipt signing) and their fingerprint."""
    with ctx.store.read() as conn:
        keys = room.keys(conn)
        counts = room.counts(conn)
    return {"version": __version__, "ready": keys is not None, "keys": keys, "counts": counts}


class OrgIn(BaseModel):
    name: str = Field(min_length=2, max_length=40)
    roles: list[str] = Field(min_length=1)


@router.post(
    "/orgs", status_code=201, tags=["orgs"], operation_id="create_org", response_model=OrgToken, responses=errors(409)
)
def create_org(body: OrgIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Create an org with roles; its token is in the answer and never shown again."""
    check_name("org", body.name)
    bad = [r for r in body.roles if r not in ROLES or r in ("admin", "runner")]
    if bad:
        raise ValidationError(f"unknown or reserved role {bad[0]!r}", hint="roles: owner, analyst, reviewer")
    with ctx.store.tx() as conn:
        if orgs.by_name(conn, name=body.name):
            raise Conflict(f"an org named {body.name!r} exists already")
        check_name("org", body.name, orgs.names(conn))
        org_id = new_id("org")
        roles = sorted(set(body.roles))
        orgs.create(conn, org_id=org_id, name=body.name, roles=roles, created_at=now())
        token = new_token(conn, org_id)
        ctx.audit(conn, "org.created", "org", body.name, {"roles": roles})
        org = orgs.by_id(conn, org_id=org_id)
    return {"org": org_view(org), "token": token}


@router.post(
    "/orgs/{name}/token", tags=["orgs"], operation_id="rotate_token", response_model=OrgToken, responses=errors(404)
)
def rotate_token(name: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Revoke every token of an org and issue a new one, shown once: the org itself (`me` or its name),
    or an admin for an org that lost its token. The runner's token is managed by its token file."""
    with ctx.store.tx() as conn:
        org = orgs.by_name(conn, name=ctx.caller.name if name == "me" else name)
        if not org or org["name"] == "runner":
            raise NotFound(f"no org named {name!r}")
        if org["id"] != ctx.caller.org_id and not ctx.caller.is_admin:
            raise PermissionDenied("only the org itself or an admin can rotate its token")
        orgs.revoke_tokens(conn, org_id=org["id"], at=now())
        token = new_token(conn, org["id"])
        ctx.audit(conn, "token.rotated", "org", org["name"], {"by": ctx.caller.name})
    return {"org": org_view(org), "token": token}


@router.get("/orgs", tags=["orgs"], operation_id="list_orgs", response_model=OrgPage)
def list_orgs(limit: Limit = DEFAULT_LIMIT, after: After = None, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Every org in the room with its roles and public keys, by name (`limit` per page; pass `next` as
    `after` for the following page)."""
    start = decode_cursor(after, str)
    with ctx.store.read() as conn:
        rows = orgs.page(conn, after=start[0] if start else None, limit=limit + 1)
    return page(rows, limit, lambda o: [o["name"]], org_view)


@router.get("/orgs/me", tags=["orgs"], operation_id="whoami", response_model=Org)
def whoami(ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """The org behind the token."""
    with ctx.store.read() as conn:
        org = orgs.by_id(conn, org_id=ctx.caller.org_id)
    return org_view(org)


@router.get("/orgs/{name}", tags=["orgs"], operation_id="get_org", response_model=Org, responses=errors(404))
def get_org(name: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """One org's roles and public keys."""
    with ctx.store.read() as conn:
        org = orgs.by_name(conn, name=name)
    if not org:
        raise NotFound(f"no org named {name!r}")
    return org_view(org)


class KeysIn(BaseModel):
    enc_public: str = Field(max_length=200)
    sign_public: str = Field(max_length=200)


@router.put("/orgs/me/keys", tags=["orgs"], operation_id="register_keys", response_model=Org, responses=errors(409))
def register_keys(body: KeysIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Register the public halves of the org's key pair (generated on the org's machine)."""
    check_public_keys(body.enc_public, body.sign_public)
    with ctx.store.tx() as conn:
        org = orgs.by_id(conn, org_id=ctx.caller.org_id)
        assert org is not None
        if org["enc_public"]:
            if (org["enc_public"], org["sign_public"]) == (body.enc_public, body.sign_public):
                return org_view(org)
            raise Conflict(
                "this org registered other keys already",
                hint="rotate them with a statement signed by the old and the new key (cleanroom org rotate-keys)",
            )
        orgs.set_keys(conn, org_id=ctx.caller.org_id, enc_public=body.enc_public, sign_public=body.sign_public)
        ctx.audit(
            conn,
            "org.keys_registered",
            "org",
            ctx.caller.name,
            {"fingerprint": fingerprint(body.enc_public + body.sign_public)},
        )
        org = orgs.by_id(conn, org_id=ctx.caller.org_id)
    return org_view(org)


class KeyRotationIn(BaseModel):
    payload: dict[str, Any]
    old_signature: str = Field(max_length=200)
    new_signature: str = Field(max_length=200)


@router.post(
    "/orgs/me/keys/rotate",
    tags=["orgs"],
    operation_id="rotate_keys",
    response_model=OrgKeysRotated,
    responses=errors(409, 422),
)
def rotate_keys(body: KeyRotationIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Replace the org's keys with a statement signed by the old signing key (it is the org) and the new
    one (it holds it). Runners follow the chain of statements from the key it pinned. The org's
    approvals, signed with the old key, are revoked: approve again with the new one."""
    p = body.payload
    if set(p) != ROTATION_KEYS or p.get("type") != "key-rotation":
        raise ValidationError(
            f"a key rotation payload has exactly the keys {sorted(ROTATION_KEYS)}, type 'key-rotation'"
        )
    if p["org"] != ctx.caller.name:
        raise PermissionDenied("the statement names another org than the caller")
    check_fresh(p["issued_at"], "statement")
    check_public_keys(str(p["new_enc_public"]), str(p["new_sign_public"]), "new public keys")
    with ctx.store.tx() as conn:
        org = orgs.by_id(conn, org_id=ctx.caller.org_id)
        assert org is not None
        if not org["sign_public"] or org["sign_public"] != p["old_sign_public"]:
            raise Conflict("the statement does not name the org's registered signing key")
        if p["new_sign_public"] == org["sign_public"]:
            raise ValidationError("the new signing key is the old one")
        verify(org["sign_public"], p, body.old_signature)
        verify(p["new_sign_public"], p, body.new_signature)
        t = now()
        orgs.add_key_rotation(
            conn,
            org_id=org["id"],
            payload=p,
            old_signature=body.old_signature,
            new_signature=body.new_signature,
            created_at=t,
        )
        orgs.set_keys(conn, org_id=org["id"], enc_public=p["new_enc_public"], sign_public=p["new_sign_public"])
        revoked = approvals.revoke_all_of(conn, org_id=org["id"], at=t)
        ctx.audit(
            conn,
            "org.keys_rotated",
            "org",
            org["name"],
            {
                "old": fingerprint((org["enc_public"] or "") + org["sign_public"]),
                "new": fingerprint(p["new_enc_public"] + p["new_sign_public"]),
                "approvals_revoked": revoked,
            },
        )
        org = orgs.by_id(conn, org_id=org["id"])
    return {**org_view(org), "approvals_revoked": revoked}


@router.get("/audit", tags=["audit"], operation_id="list_audit_events", response_model=AuditPage)
def list_audit(
    after: int = Query(0, ge=0, le=2**63 - 1), limit: int = Query(1000, ge=1, le=10_000), ctx: Ctx = Depends(get_ctx)
) -> dict[str, Any]:
    """Audit events after sequence number `after`, oldest first (at most `limit`, max 10000). Events you
    may not read come as `{seq, prev_hash, hash, redacted: true}`: the chain still verifies."""
    return audit_views.audit_page(ctx, after=after, limit=limit)


@router.get("/audit/verify", tags=["audit"], operation_id="verify_audit", response_model=AuditVerification)
def verify_audit(ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """The server's own check of the chain (clients should also verify with `cleanroom audit verify`)."""
    with ctx.store.read() as conn:
        events = audit.all_events(conn)
    return verify_events(events)
