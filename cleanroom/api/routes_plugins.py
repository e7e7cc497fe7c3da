"""Plugins (bundles bound by hash, with their review report) and owners' signed approvals."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel

from cleanroom.api.authz import require_dataset_owner
from cleanroom.api.common import DEFAULT_LIMIT, After, Limit, check_not_withdrawn
from cleanroom.api.deps import Ctx, get_ctx
from cleanroom.api.openapi import binary, errors, raw_body
from cleanroom.api.schemas import ApprovalRecorded, ApprovalRevoked, PluginDetail, PluginPage, PluginSubmitted
from cleanroom.api.statements import APPROVAL_KEYS, check_keys, check_signed
from cleanroom.api.views import blocking_findings, plugin_detail, plugin_full_view, plugin_page, resolve_plugin
from cleanroom.crypto import digest
from cleanroom.errors import Conflict, NotFound, PermissionDenied, TooLarge, ValidationError
from cleanroom.identifiers import check_name
from cleanroom.store import approvals, datasets, plugins
from cleanroom.store.db import new_id, now

router = APIRouter()


@router.post(
    "/plugins",
    status_code=201,
    tags=["plugins"],
    operation_id="submit_plugin",
    response_model=PluginSubmitted,
    responses=errors(400, 409, 507),
    openapi_extra=raw_body(
        "application/x-tar", "application/octet-stream", description="the plugin's canonical bundle (docs/plugins.md)"
    ),
)
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
    plugin_id = digest(archive)
    manifest = parsed.manifest
    check_name("plugin", manifest["name"])
    check_name("version", manifest["version"])
    report = review.review(parsed).to_dict()
    with ctx.store.tx() as conn:
        existing = plugins.get(conn, plugin_id=plugin_id)
        if existing:  # the same bytes: the caller may use them too, and sees its own view of them
            if existing["submitted_by"] != ctx.caller.org_id and ctx.caller.org_id not in existing["users"]:
                plugins.add_user(conn, plugin_id=plugin_id, org_id=ctx.caller.org_id, created_at=now())
                # an event about the caller's own plugins (not the plugin's: the first submitter's scope)
                ctx.audit(
                    conn,
                    "plugin.resubmitted",
                    "org",
                    ctx.caller.name,
                    {"plugin": plugin_id, "name": manifest["name"], "version": manifest["version"]},
                )
                existing = plugins.load(conn, plugin_id=plugin_id)
            return {**plugin_full_view(conn, existing, ctx.caller), "created": False}
        _check_lineage(conn, ctx, manifest["name"], manifest["version"])
        stored = ctx.store.blobs.put_bytes(archive)
        assert stored == plugin_id
        plugins.create(
            conn,
            plugin_id=plugin_id,
            manifest=manifest,
            review=report,
            size=len(archive),
            submitted_by=ctx.caller.org_id,
            created_at=now(),
        )
        ctx.audit(
            conn,
            "plugin.submitted",
            "plugin",
            plugin_id,
            {
                "name": manifest["name"],
                "version": manifest["version"],
                "kind": manifest["kind"],
                "blocking_findings": blocking_findings(report),
            },
        )
        view = plugin_full_view(conn, plugins.load(conn, plugin_id=plugin_id), ctx.caller)
    return {**view, "created": True}


def _check_lineage(conn: Any, ctx: Ctx, name: str, version: str) -> None:
    """A plugin name belongs to the org that first submitted it (its lineage: what "changes since the
    last approved version" compares against); a name or version that looks like another is refused."""
    if plugins.name_taken_by_other(conn, name=name, org_id=ctx.caller.org_id):
        raise Conflict(
            f"the plugin name {name!r} belongs to another org",
            hint="choose another name in cleanroom-plugin.toml: plugin names are the room's, first come, first served",
        )
    check_name("plugin", name, plugins.names(conn))
    versions = plugins.versions(conn, name=name)
    if version in versions:
        raise Conflict(
            f"{name} {version} exists already with other code", hint="bump the version in cleanroom-plugin.toml"
        )
    check_name("version", version, versions)


@router.get("/plugins", tags=["plugins"], operation_id="list_plugins", response_model=PluginPage)
def list_plugins(limit: Limit = DEFAULT_LIMIT, after: After = None, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Plugins you may see (all for owners and reviewers, your own for analysts) by name and version;
    `limit` per page, pass `next` as `after` for the following page."""
    return plugin_page(ctx, limit=limit, after=after)


@router.get(
    "/plugins/{ref}", tags=["plugins"], operation_id="get_plugin", response_model=PluginDetail, responses=errors(404)
)
def get_plugin(ref: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """A plugin: manifest, files, review findings, approvals, diff against the last approved version."""
    with ctx.store.read() as conn:
        return plugin_detail(conn, ctx.store.blobs, ctx.caller, ref)


@router.get(
    "/plugins/{ref}/bundle",
    tags=["plugins"],
    operation_id="get_plugin_bundle",
    response_class=Response,
    responses=binary("application/x-tar", description="the bundle's bytes (a tar archive)") | errors(404),
)
def get_plugin_bundle(ref: str, ctx: Ctx = Depends(get_ctx)) -> Response:
    """The exact bytes that were hashed: reviewers can re-hash them."""
    with ctx.store.read() as conn:
        plugin = resolve_plugin(conn, ref, ctx.caller)
    return Response(ctx.store.blobs.read(plugin["id"]), media_type="application/x-tar")


class ApprovalIn(BaseModel):
    payload: dict[str, Any]
    signature: str


@router.post(
    "/plugins/{plugin_id}/approvals",
    status_code=201,
    tags=["plugins"],
    operation_id="decide_plugin",
    response_model=ApprovalRecorded,
    responses=errors(404, 409, 422),
)
def approve_plugin(plugin_id: str, body: ApprovalIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Record an owner's signed approval (or rejection) of this exact plugin for one dataset."""
    p = body.payload
    check_keys(p, APPROVAL_KEYS, "plugin approval")
    if p["decision"] not in ("approve", "reject"):
        raise ValidationError("decision must be 'approve' or 'reject'")
    with ctx.store.tx() as conn:
        plugin = plugins.load(conn, plugin_id=plugin_id)
        if p["plugin_id"] != plugin["id"]:
            raise ValidationError("the signed payload names another plugin")
        ds = datasets.load(conn, name=str(p["dataset"]))
        require_dataset_owner(ctx.caller, ds)  # type: ignore[arg-type]
        check_not_withdrawn(ds)
        check_signed(conn, ctx.caller, p, body.signature, "plugin-approval")
        if p["policy_version"] != ds["policy_version"]:
            raise Conflict(
                f"the approval is for policy version {p['policy_version']} but "
                f"{ds['name']} is at version {ds['policy_version']}"
            )
        if p["policy_sha256"] != datasets.policy(conn, name=ds["name"], version=ds["policy_version"])["sha256"]:
            raise Conflict("the approval names another policy text than the dataset's current policy")
        if p["dataset_sha256"] != ds["sha256"]:
            raise Conflict("the approval names other data than the dataset holds")
        last_revoked = approvals.last_revoked(conn, plugin_id=plugin_id, dataset=ds["name"])
        if last_revoked and p["issued_at"] <= last_revoked:
            raise Conflict("this signed approval predates a revocation (replay)")
        if approvals.signature_known(conn, signature=body.signature):
            raise Conflict("this signed approval was recorded already (replay)")
        approval_id = new_id("apr")
        approvals.record(
            conn,
            approval_id=approval_id,
            plugin_id=plugin_id,
            dataset=ds["name"],
            org_id=ctx.caller.org_id,
            payload=p,
            signature=body.signature,
            at=now(),
        )
        ctx.audit(
            conn,
            f"plugin.{'approved' if p['decision'] == 'approve' else 'rejected'}",
            "plugin",
            plugin_id,
            {"dataset": ds["name"], "policy_version": p["policy_version"], "approval": approval_id},
        )
    return {"id": approval_id, "decision": p["decision"], "dataset": ds["name"], "plugin_id": plugin_id}


@router.delete(
    "/plugins/{plugin_id}/approvals/{approval_id}",
    tags=["plugins"],
    operation_id="revoke_approval",
    response_model=ApprovalRevoked,
    responses=errors(404, 409),
)
def revoke_approval(plugin_id: str, approval_id: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Revoke an approval; jobs not yet started that rely on it will not run."""
    with ctx.store.tx() as conn:
        row = approvals.get(conn, approval_id=approval_id, plugin_id=plugin_id)
        if not row:
            raise NotFound("no such approval")
        if row["org_id"] != ctx.caller.org_id:
            raise PermissionDenied("only the org that approved can revoke")
        if row["revoked_at"] is not None:
            raise Conflict("the approval is revoked already")
        approvals.revoke(conn, approval_id=approval_id, at=now())
        ctx.audit(
            conn, "plugin.approval_revoked", "plugin", plugin_id, {"dataset": row["dataset"], "approval": approval_id}
        )
    return {"id": approval_id, "revoked": True}
