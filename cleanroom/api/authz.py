"""Authorisation in one place: a rule for every route, and the ownership checks routes call.

Every route of the app must have an entry in RULES (a test walks the route table), so a new
route without a rule fails CI instead of being open by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cleanroom.errors import NotFound, PermissionDenied

ROLES = ("admin", "owner", "analyst", "reviewer", "runner")

PUBLIC = "public"  # no token needed
ANY = "any"  # any authenticated org (runner excluded)

RULES: dict[str, str | tuple[str, ...]] = {
    # room and orgs
    "health": PUBLIC,
    "room_info": PUBLIC,
    "create_org": ("admin",),
    "rotate_token": ANY,  # the handler allows the org itself and admins
    "list_orgs": ANY,
    "whoami": ANY,
    "get_org": ANY,
    "register_keys": ANY,
    "rotate_keys": ANY,
    # datasets
    "create_upload": ("owner",),
    "put_upload": ("owner",),
    "cancel_upload": ("owner",),
    "list_datasets": ANY,
    "get_dataset": ANY,
    "update_policy": ("owner",),
    "withdraw_dataset": ("owner",),  # the handler allows the dataset's owner only (admins too are refused)
    # plugins and approvals
    "submit_plugin": ("analyst", "owner"),
    "list_plugins": ANY,
    "get_plugin": ANY,
    "get_plugin_bundle": ANY,
    "approve_plugin": ("owner",),
    "revoke_approval": ("owner",),
    # jobs and releases
    "submit_job": ("analyst",),
    "list_jobs": ANY,
    "get_job": ANY,
    "cancel_job": ANY,
    "job_logs": ("owner",),
    "list_releases": ANY,
    "get_release": ANY,
    "approve_release": ("owner",),
    "reject_release": ("owner",),
    "get_artifact": ANY,
    # privacy budgets (the handler limits a dataset's budget to its owner, its recipients and staff)
    "dataset_budget": ANY,
    "job_cost": ("analyst", "owner"),
    # audit
    "list_audit": ANY,
    "verify_audit": ANY,
    # storage (the sweep is the only code that deletes blobs)
    "storage_check": ("admin",),
    "storage_sweep": ("admin",),
    # runner
    "runner_register": ("runner",),
    "runner_recover": ("runner",),
    "runner_heartbeat": ("runner",),
    "runner_claim": ("runner",),
    "runner_job": ("runner",),
    "runner_context": ("runner",),
    "runner_ciphertext": ("runner",),
    "runner_bundle": ("runner",),
    "runner_progress": ("runner",),
    "runner_artifact": ("runner",),
    "runner_finish": ("runner",),
    # review web page (pages do their own login with the org token in a cookie)
    "web_login": PUBLIC,
    "web_login_post": PUBLIC,
    "web_logout": PUBLIC,
    "web_page": PUBLIC,
}


@dataclass(frozen=True)
class Caller:
    """The authenticated org behind a request."""

    org_id: str
    name: str
    roles: tuple[str, ...]

    def has(self, *roles: str) -> bool:
        return any(r in self.roles for r in roles)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


def check_route(route_name: str, caller: Caller | None) -> None:
    rule = RULES.get(route_name)
    if rule is None:
        raise PermissionDenied(f"route {route_name} has no authorisation rule")
    if rule == PUBLIC:
        return
    if caller is None:
        from cleanroom.errors import AuthenticationError

        raise AuthenticationError("this request needs a bearer token", hint="set CLEANROOM_TOKEN or use --profile")
    if rule == ANY:
        if caller.roles == ("runner",):
            raise PermissionDenied("the runner's token can only call runner routes")
        return
    if caller.is_admin and route_name != "submit_job" and not route_name.startswith("runner_"):
        return
    if not caller.has(*rule):
        raise PermissionDenied(
            f"this needs the role {' or '.join(rule)}; {caller.name} has {', '.join(caller.roles) or 'no role'}"
        )


# Ownership rules -----------------------------------------------------------------------------


def can_see_all(caller: Caller) -> bool:
    return caller.has("admin", "reviewer", "owner")


def require_dataset_owner(caller: Caller, dataset: dict[str, Any]) -> None:
    if dataset["owner_id"] != caller.org_id:
        raise PermissionDenied(f"only the owner of {dataset['name']} can do this")


def visible_plugin(caller: Caller, plugin: dict[str, Any]) -> None:
    """Owners, reviewers and admins see every plugin; analysts see their own: those they submitted,
    first or again (`users`: the orgs that submitted the same bytes after the first)."""
    if can_see_all(caller) or plugin["submitted_by"] == caller.org_id or caller.org_id in plugin.get("users", ()):
        return
    raise NotFound("plugin not found")


def job_relation(caller: Caller, job: dict[str, Any], input_owner_ids: set[str]) -> set[str]:
    """How the caller relates to a job: submitter, owner (of an input), recipient, staff."""
    rel = set()
    if job["org_id"] == caller.org_id:
        rel.add("submitter")
    if caller.org_id in input_owner_ids:
        rel.add("owner")
    if job.get("recipient_id") == caller.org_id:
        rel.add("recipient")
    if caller.has("admin", "reviewer"):
        rel.add("staff")
    return rel


def visible_job(caller: Caller, job: dict[str, Any], input_owner_ids: set[str]) -> set[str]:
    rel = job_relation(caller, job, input_owner_ids)
    if not rel:
        raise NotFound("job not found")
    return rel


def iter_routes(routes: Any) -> Any:
    """Every route of an app, looking inside included routers."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from iter_routes(inner.routes)
        else:
            yield route
