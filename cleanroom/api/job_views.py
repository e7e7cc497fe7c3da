"""Jobs and releases as each caller may see them, and the audit events a job holds until its outcome time.

An analyst who does not own every input learns a job's outcome only at its reveal time (its start plus
the spec's time budget) and only as `released` or `nothing_released`; input owners and staff see the
real status. Views are built from rows the store read in one query (`store.jobs.Listed`).
"""

from __future__ import annotations

import math
from typing import Any

from cleanroom.api.authz import Caller, visible_job
from cleanroom.api.common import check_not_withdrawn, decode_cursor, encode_cursor
from cleanroom.api.views import can_see_plugin
from cleanroom.errors import NotFound
from cleanroom.store import approvals as store_approvals
from cleanroom.store import audit, jobs, orgs, releases
from cleanroom.store import datasets as store_datasets
from cleanroom.store import plugins as store_plugins
from cleanroom.store.db import now

REVEAL_PAD = 10  # seconds: a reveal time is rounded up to a multiple of this


def time_budget(job: dict[str, Any], settings: Any) -> float:
    """Seconds from a job's start after which its analyst learns the outcome: the spec's, else the room's."""
    return float(job["spec"].get("time_budget") or settings.job_time_budget_seconds)


def reveal_time(started_at: float, budget: float) -> float:
    return math.ceil((started_at + budget) / REVEAL_PAD) * REVEAL_PAD


def sees_outcome(caller: Caller, rel: set[str], owner_ids: set[str]) -> bool:
    """Who may see how a job went (status, phase, timings, error class, reason, logs): staff, an org that
    owns every input, and an input owner that neither submitted the job nor receives its result.
    Everyone else (the analyst side) sees only `analyst_status`, fixed by the spec's time budget."""
    if "staff" in rel or owner_ids == {caller.org_id}:
        return True
    return "owner" in rel and not rel & {"submitter", "recipient"}


def release_state(review_by: list[str], decisions: releases.Decisions) -> dict[str, Any]:
    approved, rejected = decisions["approved"], decisions["rejected"]
    pending = [d for d in review_by if d not in approved | set(rejected)]
    return {
        "approved_by": sorted(approved),
        "rejected_by": sorted(rejected),
        "rejection_reasons": rejected,
        "pending_review": pending,
        "downloadable": not pending and not rejected,
    }


def released(job: Any, release: dict[str, Any] | None, t: float) -> bool:
    """Whether the job's recipient may have its release at time `t`: the outcome is out, every review
    done and none rejected, and the analyst did not withdraw it. `release`: review_by, approved, rejected."""
    if job["started_at"] is None or job.get("withdrawn_at") is not None or t < (job.get("reveal_at") or 0):
        return False  # (a job started before reveal times existed has none: its outcome was out already)
    if release is None:
        return False
    return bool(
        release_state(
            release["review_by"], {"approved": release["approved"], "rejected": dict.fromkeys(release["rejected"], "")}
        )["downloadable"]
    )


def analyst_status(job: jobs.Listed, t: float) -> str:
    """queued, running, released or nothing_released: one status for every way a job can fail, shown only
    once the job's reveal time (started_at + time budget) has passed; cancelled if it never started."""
    if job["started_at"] is None:
        return "queued" if job["status"] == "queued" else "cancelled"  # before it touched any data
    if t < (job["reveal_at"] or 0):
        return "running"
    return "released" if released(job, job["release"], t) else "nothing_released"


def relation(caller: Caller, job: jobs.Listed) -> tuple[set[str], bool]:
    """The caller's relation to a job (NotFound when none) and whether it sees the outcome."""
    rel = visible_job(caller, job, job["owner_ids"])  # type: ignore[arg-type]
    return rel, sees_outcome(caller, rel, job["owner_ids"])


def job_view(job: jobs.Listed, full: bool) -> dict[str, Any]:
    """A job as the caller may see it; `full` (see `sees_outcome`) adds the real status, phase, end time,
    error class and reason. The analyst's view has the same keys, with the data-dependent ones empty."""
    t = now()
    view = {
        "id": job["id"],
        "name": job["name"],
        "submitted_by": job["submitter"],
        "status": job["status"],
        "phase": job["phase"],
        "error_class": job["error_class"],
        "created_at": job["created_at"],
        "started_at": job["started_at"],
        "finished_at": job["finished_at"],
        "outcome_at": job["reveal_at"],
        "recipient": job["spec"].get("recipient"),
        "inputs": [i["dataset"] for i in job["spec"]["inputs"]],
        "release_id": None,
        "spec": job["spec"],
    }
    status = analyst_status(job, t)
    if full:
        view.update(
            release_id=job["release"]["id"] if job["release"] else None,
            analyst_status=status,
            withdrawn=job.get("withdrawn_at") is not None,
            reason=job["reason"],
            effective_policy=job["effective_policy"],
        )
        return view
    view.update(
        status=status,
        phase=None,
        error_class=None,
        finished_at=None,
        release_id=job["release"]["id"] if status == "released" and job["release"] else None,
    )
    return view


def caller_view(conn: Any, caller: Caller, job_id: str) -> tuple[set[str], bool, dict[str, Any]]:
    """The caller's relation to a job (NotFound when none), whether it sees the outcome, and its view."""
    job = jobs.load_listed(conn, job_id=job_id)
    rel, full = relation(caller, job)
    return rel, full, job_view(job, full)


# Releases ---------------------------------------------------------------------------------------


def release_relation(caller: Caller, job: Any, release: dict[str, Any]) -> set[str]:
    """The caller's relation to a release's job. A caller who does not see the job's outcome
    (`sees_outcome`) sees the release only once it is released to its recipient: before that, not
    its existence, hashes, sizes, checks or artifact count (NotFound, as for a job that failed).
    `release`: review_by, approved, rejected."""
    rel = visible_job(caller, job, job["owner_ids"])
    if not sees_outcome(caller, rel, job["owner_ids"]):
        if not released(job, release, now()):
            raise NotFound("release not found")
        rel.add("released")  # seen as released: shown with the job's outcome time, not its end
    return rel


def release_view(
    release: releases.Release,
    *,
    recipient: str,
    artifacts: list[dict[str, Any]],
    decisions: releases.Decisions,
    reveal_at: float | None,
    rel: set[str] | None = None,
) -> dict[str, Any]:
    created = release["created_at"]
    if rel and "released" in rel:  # when the job ended is for the owners: its analyst sees the outcome time
        created = reveal_at  # type: ignore[assignment]
    return {
        "id": release["id"],
        "job_id": release["job_id"],
        "recipient": recipient,
        "manifest": release["manifest"],
        "receipt": release["receipt"],
        "review_by": release["review_by"],
        "created_at": created,
        "artifacts": artifacts,
        **release_state(release["review_by"], decisions),
    }


def one_release(conn: Any, caller: Caller, ref: str) -> tuple[releases.Release, set[str], dict[str, Any]]:
    """A release by release or job id as the caller may see it (NotFound otherwise): row, relation, view."""
    release = releases.load(conn, ref=ref)
    job = jobs.load_listed(conn, job_id=release["job_id"])
    decisions = releases.decisions(conn, release_id=release["id"])
    rel = release_relation(caller, job, {"review_by": release["review_by"], **decisions})
    recipient = orgs.by_id(conn, org_id=release["recipient_id"])
    view = release_view(
        release,
        recipient=recipient["name"] if recipient else "",
        artifacts=releases.artifacts(conn, release_id=release["id"]),
        decisions=decisions,
        reveal_at=job["reveal_at"],
        rel=rel,
    )
    return release, rel, view


# Held audit events ------------------------------------------------------------------------------


def job_event(
    conn: Any,
    actor: str,
    job_id: str,
    action: str,
    object_type: str,
    object_id: str,
    details: dict[str, Any] | None = None,
) -> None:
    """Audit an event of a job, or, while the job has started and its outcome is not out yet, hold it in
    the job row: the held events join the chain as one `job.ended` event at the reveal time, so neither
    their number nor their place in the chain tells anyone how the job went or how long it ran."""
    state = jobs.hold_state(conn, job_id=job_id)
    t = now()
    if state is None or state[0] is None or t >= state[0]:
        audit.append(
            conn, actor=actor, action=action, object_type=object_type, object_id=object_id, details=details, ts=t
        )
        return
    held = state[1]
    held.append(
        {
            "ts": t,
            "actor": actor,
            "action": action,
            "object_type": object_type,
            "object_id": object_id,
            "details": details or {},
        }
    )
    jobs.set_held(conn, job_id=job_id, events=held)


def release_held_events(conn: Any) -> int:
    """Append the held events of every job whose reveal time has passed (in reveal-time order)."""
    t = now()
    due = jobs.held_due(conn, at=t)
    for job_id, events in due:
        audit.append(
            conn,
            actor="cleanroom",
            action="job.ended",
            object_type="job",
            object_id=job_id,
            details={"events": events},
            ts=t,
        )
        jobs.set_held(conn, job_id=job_id, events=None)
    return len(due)


# What a job spec is checked against -------------------------------------------------------------


def job_context(conn: Any, spec: Any, caller: Caller | None = None) -> dict[str, Any]:
    """Everything `jobspec.check_job` needs, read from the store.

    With `caller`, only plugins the caller may see count (an analyst's own; every plugin for owners,
    reviewers and admins): an analyst cannot run another analyst's plugin by its id, even an approved
    one, until it submits the same bytes itself (then the owners' approvals of those bytes cover it).
    """
    from cleanroom.policy import Policy

    found: dict[str, Any] = {}
    owners = store_datasets.owner_names(conn, names=spec.dataset_names())
    for name in spec.dataset_names():
        ds = store_datasets.get(conn, name=name)
        if not ds:
            continue
        check_not_withdrawn(ds)
        pol = store_datasets.policy(conn, name=name, version=ds["policy_version"])
        found[name] = {
            "owner": owners[name][1],
            "owner_id": ds["owner_id"],
            "policy": Policy.from_dict(pol["policy"]),
            "policy_version": ds["policy_version"],
            "sha256": ds["sha256"],
        }
    usable = {
        pid: p
        for pid, p in store_plugins.many(conn, plugin_ids=spec.plugin_ids()).items()
        if caller is None or can_see_plugin(caller, p)  # type: ignore[arg-type]
    }
    plugins = {pid: {"name": p["name"], "kind": p["kind"], "manifest": p["manifest"]} for pid, p in usable.items()}
    approvals = store_approvals.owners_in_force(conn, datasets=spec.dataset_names())
    # the privacy budget is checked and charged by `store.ledger.charge`, atomically with creating the job
    return {"datasets": found, "plugins": plugins, "approvals": approvals, "budget_remaining": {}}


def check_release_rules(conn: Any, spec: Any, context: dict[str, Any], effective: Any) -> None:
    """The release checks the spec decides (`release_rules.check_spec`), with the inputs' schemas."""
    from cleanroom import release_rules

    schemas = store_datasets.schemas(conn, names=list(context["datasets"]))
    inputs = {
        name: {"schema": schemas.get(name, {}), "policy": ds["policy"].to_dict()}
        for name, ds in context["datasets"].items()
    }
    release_rules.check_spec(spec, context["plugins"], inputs, effective)


# Pages ------------------------------------------------------------------------------------------


def job_page(ctx: Any, *, limit: int, after: str | None, status: str | None) -> dict[str, Any]:
    """Jobs the caller may see, newest first. `status` filters on the status as the caller sees it."""
    start = decode_cursor(after, float, str)
    staff = ctx.caller.has("admin", "reviewer")
    # Without staff rights the filter applies to each job's view (an analyst's status is not the stored
    # one), so the page is cut after filtering: a filter on the stored status would answer for hidden ones.
    in_sql = staff or not status
    with ctx.store.read() as conn:
        rows = jobs.page(
            conn,
            viewer_id=ctx.caller.org_id,
            viewer_name=ctx.caller.name,
            everything=staff,
            status=status if staff else None,
            after=start,
            limit=limit + 1 if in_sql else None,
        )
    items: list[dict[str, Any]] = []
    last: jobs.Listed | None = None
    for job in rows[:limit] if in_sql else rows:
        try:
            _, full = relation(ctx.caller, job)
        except NotFound:
            continue
        view = job_view(job, full)
        if in_sql or view["status"] == status:
            if len(items) == limit:  # one more shown: there is a next page
                return {"items": items, "next": encode_cursor([last["created_at"], last["id"]])}  # type: ignore[index]
            items.append(view)
            last = job
    more = in_sql and len(rows) > limit
    return {
        "items": items,
        "next": encode_cursor([rows[limit - 1]["created_at"], rows[limit - 1]["id"]]) if more else None,
    }


def release_page(ctx: Any, *, limit: int, after: str | None) -> dict[str, Any]:
    """Releases addressed to the caller or over its data, newest first."""
    start = decode_cursor(after, float, str)
    with ctx.store.read() as conn:
        rows = releases.page(
            conn,
            viewer_id=ctx.caller.org_id,
            viewer_name=ctx.caller.name,
            everything=ctx.caller.has("admin", "reviewer"),
            after=start,
            limit=limit + 1,
        )
    items = []
    for item in rows[:limit]:
        release, job, decisions = item["release"], item["job"], item["decisions"]
        try:
            rel = release_relation(ctx.caller, job, {"review_by": release["review_by"], **decisions})
        except NotFound:
            continue
        items.append(
            release_view(
                release,
                recipient=item["recipient"],
                artifacts=item["artifacts"],
                decisions=decisions,
                reveal_at=job["reveal_at"],
                rel=rel,
            )
        )
    last = rows[limit - 1]["release"] if len(rows) > limit else None  # read, shown or not
    return {"items": items, "next": encode_cursor([last["created_at"], last["id"]]) if last else None}
