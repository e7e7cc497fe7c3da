"""What the JSON routes and the review page show of orgs, datasets and plugins (from the store's rows)."""

from __future__ import annotations

import re
from typing import Any

from cleanroom.api.authz import Caller, can_see_all, visible_plugin
from cleanroom.api.common import decode_cursor, page
from cleanroom.crypto import fingerprint
from cleanroom.errors import NotFound, PermissionDenied, ValidationError
from cleanroom.store import approvals, datasets, orgs, plugins


def org_view(org: Any) -> dict[str, Any]:
    keys = None
    if org.get("enc_public") and org.get("sign_public"):
        keys = {
            "enc_public": org["enc_public"],
            "sign_public": org["sign_public"],
            "fingerprint": fingerprint(org["enc_public"] + org["sign_public"]),
        }
    return {"id": org["id"], "name": org["name"], "roles": org["roles"], "keys": keys, "created_at": org["created_at"]}


def private_counts(view: dict[str, Any], caller: Caller, owner_id: str) -> dict[str, Any]:
    """The exact row count and ciphertext size are the owner's (and staff's): for everyone else they would
    be an exact release of the dataset's size (PRIVACY-DESIGN.md section 1: n is private)."""
    if owner_id != caller.org_id and not caller.has("admin", "reviewer"):
        view.update(row_count=None, size=None)
    return view


def dataset_view(listed: Any, *, full: Any = None) -> dict[str, Any]:
    """A dataset from `store.datasets.Listed`; with `full` (its `Dataset` row and `PolicyVersion`, as a
    pair) also its schema, mock sample, dropped columns and policy."""
    view = {
        "name": listed["name"],
        "owner": listed["owner"],
        "description": listed["description"],
        "row_count": listed["row_count"],
        "sha256": listed["sha256"],
        "size": listed["size"],
        "policy_version": listed["policy_version"],
        "policy_sha256": listed["policy_sha256"],
        "created_at": listed["created_at"],
        "columns": [c.get("name") for c in listed["schema"].get("columns", [])],
        "withdrawn_at": listed.get("withdrawn_at"),
    }
    if full is not None:
        ds, pol = full
        view.update(
            {
                "schema": ds["schema"],
                "mock": ds["mock"],
                "dropped": ds["dropped"],
                "policy": pol["policy"],
                "policy_text": pol["text"],
            }
        )
    return view


def can_see_plugin(caller: Caller, plugin: dict[str, Any]) -> bool:
    try:
        visible_plugin(caller, plugin)
    except NotFound:
        return False
    return True


def blocking_findings(review: dict[str, Any]) -> int:
    return sum(1 for f in review.get("findings", []) if f.get("severity") == "blocking")


def plugin_view(
    plugin: Any,
    *,
    submitter: str,
    approvals: list[dict[str, Any]],
    caller: Caller | None,
    since: float | None = None,
    full: bool = False,
) -> dict[str, Any]:
    """A plugin as `caller` may see it. An analyst that submitted bytes another org submitted first (`since`:
    when) gets its own view: itself as submitter, its own submission time, the approvals in effect for the
    bytes (which its jobs use anyway; without their reasons) and the decisions taken since it submitted."""
    if caller is None or can_see_all(caller) or plugin["submitted_by"] == caller.org_id:
        since = None
    by = caller.name if since is not None and caller is not None else submitter
    view = {
        "id": plugin["id"],
        "name": plugin["name"],
        "version": plugin["version"],
        "kind": plugin["kind"],
        "submitted_by": by,
        "size": plugin["size"],
        "created_at": since or plugin["created_at"],
        "blocking_findings": blocking_findings(plugin["review"]),
    }
    shown = [
        {
            "id": a["id"],
            "dataset": a["dataset"],
            "org": a["org"],
            "decision": a["decision"],
            "reason": a["reason"],
            "policy_version": a["policy_version"],
            "dataset_sha256": a["dataset_sha256"],
            "created_at": a["created_at"],
            "revoked_at": a["revoked_at"],
        }
        for a in approvals
    ]
    if since is not None:
        shown = [
            a if a["created_at"] >= since else {**a, "reason": ""}
            for a in shown
            if a["created_at"] >= since or a["decision"] == "approve" and not a["revoked_at"]
        ]
    view["approvals"] = shown
    if full:
        view["manifest"] = plugin["manifest"]
        view["review"] = plugin["review"]
    return view


def dataset_detail(conn: Any, caller: Caller, name: str) -> dict[str, Any]:
    """One dataset in full as the caller may see it (NotFound when withdrawn and not the caller's)."""
    ds = datasets.load(conn, name=name)
    if ds["withdrawn_at"] is not None and ds["owner_id"] != caller.org_id and not caller.is_admin:
        raise NotFound(
            f"dataset {name!r} was withdrawn by its owner",
            hint="receipts of its past releases still verify (cleanroom receipt verify)",
        )
    full = (ds, datasets.policy(conn, name=name, version=ds["policy_version"]))
    return private_counts(dataset_view(datasets.listed(conn, name=name), full=full), caller, ds["owner_id"])


def dataset_page(ctx: Any, *, limit: int, after: str | None) -> dict[str, Any]:
    """A page of the datasets the caller may list."""
    start = decode_cursor(after, str)
    with ctx.store.read() as conn:
        rows = datasets.page(
            conn,
            viewer_id=ctx.caller.org_id,
            all_withdrawn=ctx.caller.is_admin,
            after=start[0] if start else None,
            limit=limit + 1,
        )
    return page(
        rows, limit, lambda d: [d["name"]], lambda d: private_counts(dataset_view(d), ctx.caller, d["owner_id"])
    )


def plugin_page(ctx: Any, *, limit: int, after: str | None) -> dict[str, Any]:
    """A page of the plugins the caller may see: all for owners and reviewers, their own for analysts."""
    start = decode_cursor(after, str, float, str)
    with ctx.store.read() as conn:
        rows = plugins.page(
            conn, viewer_id=ctx.caller.org_id, all_plugins=can_see_all(ctx.caller), after=start, limit=limit + 1
        )
    return page(
        rows,
        limit,
        lambda p: [p["name"], p["created_at"], p["id"]],
        lambda p: plugin_view(
            p, submitter=p["submitter"], approvals=p["approvals"], caller=ctx.caller, since=p["since"]
        ),
    )


def plugin_full_view(conn: Any, plugin: plugins.Plugin, caller: Caller | None, *, full: bool = True) -> dict[str, Any]:
    """`plugin_view` of a stored plugin, with its submitter and approvals read from the store."""
    submitter = orgs.by_id(conn, org_id=plugin["submitted_by"])
    since = plugin["users"].get(caller.org_id) if caller is not None else None
    return plugin_view(
        plugin,
        submitter=submitter["name"] if submitter else "",
        full=full,
        caller=caller,
        approvals=approvals.of_plugin(conn, plugin_id=plugin["id"]),  # type: ignore[arg-type]
        since=since,
    )


ID_PREFIX = re.compile(r"[0-9a-f]{8,64}")


def resolve_plugin(conn: Any, ref: str, caller: Caller) -> plugins.Plugin:
    """A plugin the caller may see, by full id, by a unique id prefix (>= 8 hex digits) or by
    name@version. Only plugins the caller may see are candidates, and every miss is the same
    "plugin not found": absent, another analyst's and ambiguous-with-another-analyst's look alike."""
    if "@" in ref:
        name, _, version = ref.partition("@")
        rows = plugins.by_name_version(conn, name=name, version=version)
    elif ID_PREFIX.fullmatch(ref.lower()):
        rows = plugins.by_id_prefix(conn, prefix=ref.lower())
    else:
        rows = []
    seen = [p for p in rows if can_see_plugin(caller, p)]  # type: ignore[arg-type]
    if len(seen) > 1:
        raise ValidationError(f"plugin id prefix {ref} is ambiguous", hint="give more of the id")
    if not seen:
        raise NotFound("plugin not found")
    return seen[0]


def plugin_detail(conn: Any, blobs: Any, caller: Caller, ref: str) -> dict[str, Any]:
    """A plugin with its files and the diff against the version it replaces (when the caller may read it)."""
    from cleanroom import bundle

    plugin = resolve_plugin(conn, ref, caller)
    view = plugin_full_view(conn, plugin, caller)
    parsed = bundle.unpack(blobs.read(plugin["id"]))
    view["files"] = {path: data.decode("utf-8", "replace") for path, data in sorted(parsed.files.items())}
    prev = plugins.replaced_version(conn, plugin=plugin)
    view["diff_against"] = None
    if prev and can_see_plugin(caller, prev):  # type: ignore[arg-type]  # never code the caller may not read
        old = bundle.unpack(blobs.read(prev["id"]))
        prev_view = plugin_full_view(conn, prev, caller, full=False)
        view["diff_against"] = {
            "id": prev["id"],
            "version": prev["version"],
            "submitted_by": prev_view["submitted_by"],
            "approved_for": sorted(
                {a["dataset"] for a in prev_view["approvals"] if a["decision"] == "approve" and not a["revoked_at"]}
            ),
            "diff": bundle.diff(old, parsed),
        }
    return view


def budget_view(conn: Any, caller: Caller, name: str) -> dict[str, Any]:
    """A dataset's privacy budget, spent and left, with its charges: for its owner and staff in full, for
    the orgs its policy releases to their own share (PermissionDenied for everyone else)."""
    from cleanroom.policy import Policy
    from cleanroom.store import ledger

    ds = datasets.load(conn, name=name)
    policy = Policy.from_dict(datasets.policy(conn, name=name, version=ds["policy_version"])["policy"])
    owner = ds["owner_id"] == caller.org_id
    staff = caller.has("admin", "reviewer")
    if not (owner or staff or caller.name in policy.recipients):
        raise PermissionDenied(f"the budget of {name} is shown to its owner and the orgs its policy releases to")
    recipient = None if owner or staff else caller.name
    view = ledger.remaining(conn, dataset=name, policy=policy, recipient=recipient)
    view["charges"] = ledger.charges(conn, dataset=name, recipient=recipient)
    return view
