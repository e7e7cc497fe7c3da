"""Plugins (bundles bound by hash, with their review report) and owners' signed approvals."""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel

from cleanroom.api.app import row_dict
from cleanroom.api.authz import Caller, can_see_all, require_dataset_owner, visible_plugin
from cleanroom.api.deps import Ctx, get_ctx
from cleanroom.api.openapi import binary, errors, raw_body
from cleanroom.api.routes_datasets import check_not_withdrawn, current_policy, load_dataset
from cleanroom.api.routes_room import CLOCK_SKEW
from cleanroom.api.schemas import ApprovalRecorded, ApprovalRevoked, PluginDetail, PluginSubmitted
from cleanroom.crypto import verify
from cleanroom.errors import Conflict, NotFound, PermissionDenied, TooLarge, ValidationError
from cleanroom.identifiers import check_name
from cleanroom.store.db import dumps, new_id, now

router = APIRouter()


def load_plugin(conn: Any, plugin_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM plugins WHERE id = ?", (plugin_id,)).fetchone()
    if not row:
        raise NotFound(f"no plugin with id {plugin_id[:16]}")
    return plugin_row(conn, row)


def plugin_row(conn: Any, row: Any) -> dict[str, Any]:
    """A plugins row as a dict, with `users`: org id -> when it submitted the same bytes after the first
    submitter (a plugin is its bytes: any analyst may submit existing bytes and use them in its jobs)."""
    plugin = row_dict(row, "manifest", "review")
    plugin["users"] = {r[0]: r[1] for r in conn.execute(
        "SELECT org_id, created_at FROM plugin_users WHERE plugin_id = ?", (plugin["id"],))}
    return plugin


def may_use_plugin(conn: Any, caller: Caller, plugin_id: str) -> bool:
    """Whether the caller's jobs may name this plugin: staff and owners any, analysts those they submitted."""
    row = conn.execute("SELECT * FROM plugins WHERE id = ?", (plugin_id,)).fetchone()
    return bool(row) and can_see_plugin(caller, plugin_row(conn, row))


def approvals_of(conn: Any, plugin_id: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT a.*, o.name AS org FROM approvals a JOIN orgs o ON o.id = a.org_id"
                        " WHERE plugin_id = ? ORDER BY created_at", (plugin_id,)).fetchall()
    return [row_dict(r, "payload") for r in rows]


def plugin_view(conn: Any, plugin: dict[str, Any], *, full: bool, caller: Caller | None = None) -> dict[str, Any]:
    """A plugin as `caller` may see it. An analyst that submitted bytes another org submitted first gets
    its own view: itself as submitter, its own submission time, the approvals in effect for the bytes
    (which its jobs use anyway; without their reasons) and the decisions taken since it submitted them."""
    since = None if caller is None or can_see_all(caller) or plugin["submitted_by"] == caller.org_id \
        else plugin.get("users", {}).get(caller.org_id)
    by = conn.execute("SELECT name FROM orgs WHERE id = ?", (plugin["submitted_by"],)).fetchone()["name"]
    if since is not None and caller is not None:
        by = caller.name
    view = {"id": plugin["id"], "name": plugin["name"], "version": plugin["version"], "kind": plugin["kind"],
            "submitted_by": by, "size": plugin["size"], "created_at": since or plugin["created_at"],
            "blocking_findings": sum(1 for f in plugin["review"].get("findings", [])
                                     if f.get("severity") == "blocking")}
    approvals = [{"id": a["id"], "dataset": a["dataset"], "org": a["org"], "decision": a["decision"],
                  "reason": a["reason"], "policy_version": a["policy_version"],
                  "dataset_sha256": a["dataset_sha256"], "created_at": a["created_at"],
                  "revoked_at": a["revoked_at"]} for a in approvals_of(conn, plugin["id"])]
    if since is not None:
        approvals = [a if a["created_at"] >= since else {**a, "reason": ""} for a in approvals
                     if a["created_at"] >= since or a["decision"] == "approve" and not a["revoked_at"]]
    view["approvals"] = approvals
    if full:
        view["manifest"] = plugin["manifest"]
        view["review"] = plugin["review"]
    return view


@router.post("/plugins", status_code=201, tags=["plugins"], operation_id="submit_plugin",
              response_model=PluginSubmitted, responses=errors(400, 409, 507),
              openapi_extra=raw_body("application/x-tar", "application/octet-stream",
                                     description="the plugin's canonical bundle (docs/plugins.md)"))
async def submit_plugin(request: Request, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Submit a plugin bundle (its canonical tar as the body); answers its id and review report."""
    from cleanroom import bundle, review

    cap = ctx.settings.max_bundle_bytes
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > cap:
            raise TooLarge(f"the bundle is larger than {cap} bytes")
    archive = bytes(body)
    parsed = bundle.unpack(archive)
    plugin_id = hashlib.sha256(archive).hexdigest()
    manifest = parsed.manifest
    check_name("plugin", manifest["name"])
    check_name("version", manifest["version"])
    report = review.review(parsed).to_dict()
    with ctx.store.tx() as conn:
        existing = conn.execute("SELECT * FROM plugins WHERE id = ?", (plugin_id,)).fetchone()
        if existing:  # the same bytes: the caller may use them too, and sees its own view of them
            plugin = plugin_row(conn, existing)
            if plugin["submitted_by"] != ctx.caller.org_id and ctx.caller.org_id not in plugin["users"]:
                conn.execute("INSERT INTO plugin_users (plugin_id, org_id, created_at) VALUES (?,?,?)",
                             (plugin_id, ctx.caller.org_id, now()))
                # an event about the caller's own plugins (not the plugin's: the first submitter's scope)
                ctx.audit(conn, "plugin.resubmitted", "org", ctx.caller.name,
                          {"plugin": plugin_id, "name": manifest["name"], "version": manifest["version"]})
                plugin = load_plugin(conn, plugin_id)
            return {**plugin_view(conn, plugin, full=True, caller=ctx.caller), "created": False}
        _check_lineage(conn, ctx, manifest["name"], manifest["version"])
        digest = ctx.store.blobs.put_bytes(archive)
        assert digest == plugin_id
        conn.execute("INSERT INTO plugins (id, name, version, kind, manifest, review, size, submitted_by,"
                     " created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                     (plugin_id, manifest["name"], manifest["version"], manifest["kind"], dumps(manifest),
                      dumps(report), len(archive), ctx.caller.org_id, now()))
        ctx.audit(conn, "plugin.submitted", "plugin", plugin_id,
                  {"name": manifest["name"], "version": manifest["version"], "kind": manifest["kind"],
                   "blocking_findings": sum(1 for f in report.get("findings", [])
                                            if f.get("severity") == "blocking")})
        view = plugin_view(conn, load_plugin(conn, plugin_id), full=True, caller=ctx.caller)
    return {**view, "created": True}


def _check_lineage(conn: Any, ctx: Ctx, name: str, version: str) -> None:
    """A plugin name belongs to the org that first submitted it (its lineage: what "changes since the
    last approved version" compares against); a name or version that looks like another is refused."""
    if conn.execute("SELECT 1 FROM plugins WHERE name = ? AND submitted_by != ?",
                    (name, ctx.caller.org_id)).fetchone():
        raise Conflict(f"the plugin name {name!r} belongs to another org", hint="choose another name in "
                       "cleanroom-plugin.toml: plugin names are the room's, first come, first served")
    check_name("plugin", name, [r[0] for r in conn.execute("SELECT DISTINCT name FROM plugins")])
    versions = [r[0] for r in conn.execute("SELECT version FROM plugins WHERE name = ?", (name,))]
    if version in versions:
        raise Conflict(f"{name} {version} exists already with other code",
                       hint="bump the version in cleanroom-plugin.toml")
    check_name("version", version, versions)


@router.get("/plugins", tags=["plugins"])
def list_plugins(ctx: Ctx = Depends(get_ctx)) -> list[dict[str, Any]]:
    """Plugins you may see: all for owners and reviewers, your own for analysts."""
    with ctx.store.read() as conn:
        rows = conn.execute("SELECT * FROM plugins ORDER BY name, created_at").fetchall()
        out = []
        for r in rows:
            plugin = plugin_row(conn, r)
            try:
                visible_plugin(ctx.caller, plugin)
            except NotFound:
                continue
            out.append(plugin_view(conn, plugin, full=False, caller=ctx.caller))
    return out


ID_PREFIX = re.compile(r"[0-9a-f]{8,64}")


def resolve_plugin(conn: Any, ref: str, caller: Caller) -> dict[str, Any]:
    """A plugin the caller may see, by full id, by a unique id prefix (>= 8 hex digits) or by
    name@version. Only plugins the caller may see are candidates, and every miss is the same
    "plugin not found": absent, another analyst's and ambiguous-with-another-analyst's look alike."""
    if "@" in ref:
        name, _, version = ref.partition("@")
        rows = conn.execute("SELECT * FROM plugins WHERE name = ? AND version = ?", (name, version)).fetchall()
    elif ID_PREFIX.fullmatch(ref.lower()):
        prefix = ref.lower()  # an exact comparison of the first characters: no LIKE, no wildcards
        rows = conn.execute("SELECT * FROM plugins WHERE substr(id, 1, ?) = ? ORDER BY id",
                            (len(prefix), prefix)).fetchall()
    else:
        rows = []
    seen = [p for p in (plugin_row(conn, r) for r in rows) if can_see_plugin(caller, p)]
    if len(seen) > 1:
        raise ValidationError(f"plugin id prefix {ref} is ambiguous", hint="give more of the id")
    if not seen:
        raise NotFound("plugin not found")
    return seen[0]


def can_see_plugin(caller: Caller, plugin: dict[str, Any]) -> bool:
    try:
        visible_plugin(caller, plugin)
    except NotFound:
        return False
    return True


def replaced_version(conn: Any, plugin: dict[str, Any]) -> dict[str, Any] | None:
    """The version this plugin replaces: the latest approved one of the same name *by the same org*
    (another org's plugin of that name is never its previous version), or None."""
    row = conn.execute(
        "SELECT p.* FROM plugins p JOIN approvals a ON a.plugin_id = p.id"
        " WHERE p.name = ? AND p.submitted_by = ? AND p.id != ? AND p.created_at <= ?"
        " AND a.decision = 'approve' AND a.revoked_at IS NULL"
        " ORDER BY p.created_at DESC LIMIT 1",
        (plugin["name"], plugin["submitted_by"], plugin["id"], plugin["created_at"])).fetchone()
    return plugin_row(conn, row) if row else None


@router.get("/plugins/{ref}", tags=["plugins"], operation_id="get_plugin", response_model=PluginDetail,
            responses=errors(404))
def get_plugin(ref: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """A plugin: manifest, files, review findings, approvals, diff against the last approved version."""
    from cleanroom import bundle

    with ctx.store.read() as conn:
        plugin = resolve_plugin(conn, ref, ctx.caller)
        view = plugin_view(conn, plugin, full=True, caller=ctx.caller)
        parsed = bundle.unpack(ctx.store.blobs.read(plugin["id"]))
        view["files"] = {path: data.decode("utf-8", "replace") for path, data in sorted(parsed.files.items())}
        prev = replaced_version(conn, plugin)
        view["diff_against"] = None
        if prev and can_see_plugin(ctx.caller, prev):  # a diff never shows code the caller may not read
            old = bundle.unpack(ctx.store.blobs.read(prev["id"]))
            prev_view = plugin_view(conn, prev, full=False, caller=ctx.caller)
            view["diff_against"] = {"id": prev["id"], "version": prev["version"],
                                    "submitted_by": prev_view["submitted_by"],
                                    "approved_for": sorted({a["dataset"] for a in prev_view["approvals"]
                                                            if a["decision"] == "approve" and not a["revoked_at"]}),
                                    "diff": bundle.diff(old, parsed)}
    return view


@router.get("/plugins/{ref}/bundle", tags=["plugins"], operation_id="get_plugin_bundle", response_class=Response,
            responses=binary("application/x-tar", description="the bundle's bytes (a tar archive)") | errors(404))
def get_plugin_bundle(ref: str, ctx: Ctx = Depends(get_ctx)) -> Response:
    """The exact bytes that were hashed: reviewers can re-hash them."""
    with ctx.store.read() as conn:
        plugin = resolve_plugin(conn, ref, ctx.caller)
    return Response(ctx.store.blobs.read(plugin["id"]), media_type="application/x-tar")


class ApprovalIn(BaseModel):
    payload: dict[str, Any]
    signature: str


APPROVAL_KEYS = {"type", "plugin_id", "dataset", "policy_version", "policy_sha256", "dataset_sha256", "decision",
                 "reason", "org", "issued_at"}


def check_signed(conn: Any, ctx: Ctx, payload: dict[str, Any], signature: str, kind: str) -> None:
    """Common checks of a signed decision: type, signer, freshness, signature by the org's key."""
    if payload.get("type") != kind:
        raise ValidationError(f"payload type must be {kind!r}")
    if payload.get("org") != ctx.caller.name:
        raise PermissionDenied("the payload names another org than the caller")
    issued = payload.get("issued_at")
    if not isinstance(issued, (int, float)) or abs(time.time() - issued) > CLOCK_SKEW:
        raise ValidationError("the signed payload is stale or from the future (replay?)",
                              hint="sign a fresh decision; check this machine's clock")
    keys = conn.execute("SELECT sign_public FROM orgs WHERE id = ?", (ctx.caller.org_id,)).fetchone()
    if not keys or not keys["sign_public"]:
        raise ValidationError("this org has registered no signing key", hint="run any cleanroom command "
                              "with your profile once: it registers the keys")
    verify(keys["sign_public"], payload, signature)


@router.post("/plugins/{plugin_id}/approvals", status_code=201, tags=["plugins"], operation_id="decide_plugin",
              response_model=ApprovalRecorded, responses=errors(404, 409, 422))
def approve_plugin(plugin_id: str, body: ApprovalIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Record an owner's signed approval (or rejection) of this exact plugin for one dataset."""
    p = body.payload
    if set(p) != APPROVAL_KEYS:
        raise ValidationError(f"approval payload must have exactly the keys {sorted(APPROVAL_KEYS)}")
    if p["decision"] not in ("approve", "reject"):
        raise ValidationError("decision must be 'approve' or 'reject'")
    with ctx.store.tx() as conn:
        plugin = load_plugin(conn, plugin_id)
        if p["plugin_id"] != plugin["id"]:
            raise ValidationError("the signed payload names another plugin")
        ds = load_dataset(conn, str(p["dataset"]))
        require_dataset_owner(ctx.caller, ds)
        check_not_withdrawn(ds)
        check_signed(conn, ctx, p, body.signature, "plugin-approval")
        if p["policy_version"] != ds["policy_version"]:
            raise Conflict(f"the approval is for policy version {p['policy_version']} but "
                           f"{ds['name']} is at version {ds['policy_version']}")
        if p["policy_sha256"] != current_policy(conn, ds["name"], ds["policy_version"])["sha256"]:
            raise Conflict("the approval names another policy text than the dataset's current policy")
        if p["dataset_sha256"] != ds["sha256"]:
            raise Conflict("the approval names other data than the dataset holds")
        last_revoked = conn.execute(
            "SELECT MAX(revoked_at) FROM approvals WHERE plugin_id = ? AND dataset = ?",
            (plugin_id, ds["name"])).fetchone()[0]
        if last_revoked and p["issued_at"] <= last_revoked:
            raise Conflict("this signed approval predates a revocation (replay)")
        if conn.execute("SELECT 1 FROM approvals WHERE signature = ?", (body.signature,)).fetchone():
            raise Conflict("this signed approval was recorded already (replay)")
        approval_id = new_id("apr")
        conn.execute("UPDATE approvals SET revoked_at = ? WHERE plugin_id = ? AND dataset = ? AND "
                     "revoked_at IS NULL", (now(), plugin_id, ds["name"]))
        conn.execute(
            "INSERT INTO approvals (id, plugin_id, dataset, policy_version, dataset_sha256, org_id, decision,"
            " reason, payload, signature, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (approval_id, plugin_id, ds["name"], p["policy_version"], p["dataset_sha256"], ctx.caller.org_id,
             p["decision"], str(p["reason"])[:2000], json.dumps(p), body.signature, now()))
        ctx.audit(conn, f"plugin.{'approved' if p['decision'] == 'approve' else 'rejected'}", "plugin",
                  plugin_id, {"dataset": ds["name"], "policy_version": p["policy_version"],
                              "approval": approval_id})
    return {"id": approval_id, "decision": p["decision"], "dataset": ds["name"], "plugin_id": plugin_id}


@router.delete("/plugins/{plugin_id}/approvals/{approval_id}", tags=["plugins"], operation_id="revoke_approval",
                response_model=ApprovalRevoked, responses=errors(404, 409))
def revoke_approval(plugin_id: str, approval_id: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Revoke an approval; jobs not yet started that rely on it will not run."""
    with ctx.store.tx() as conn:
        row = conn.execute("SELECT * FROM approvals WHERE id = ? AND plugin_id = ?",
                           (approval_id, plugin_id)).fetchone()
        if not row:
            raise NotFound("no such approval")
        if row["org_id"] != ctx.caller.org_id:
            raise PermissionDenied("only the org that approved can revoke")
        if row["revoked_at"] is not None:
            raise Conflict("the approval is revoked already")
        conn.execute("UPDATE approvals SET revoked_at = ? WHERE id = ?", (now(), approval_id))
        ctx.audit(conn, "plugin.approval_revoked", "plugin", plugin_id,
                  {"dataset": row["dataset"], "approval": approval_id})
    return {"id": approval_id, "revoked": True}
