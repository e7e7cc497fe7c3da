"""The audit log as each org may read it: in full what concerns it, the rest redacted (the chain still
verifies)."""

from __future__ import annotations

from typing import Any

from cleanroom.api.authz import visible_job
from cleanroom.api.deps import Ctx
from cleanroom.api.job_views import release_held_events, sees_outcome
from cleanroom.audit import redact
from cleanroom.errors import NotFound
from cleanroom.store import audit, datasets, jobs, plugins, releases
from cleanroom.store.db import now


class AuditScope:
    """Which audit events an org reads in full: those about itself, its datasets and plugins, the
    submission and start of jobs it may see, and every event of the jobs whose outcome it sees
    (`job_views.sees_outcome`). Admins and reviewers read everything. Other events are redacted."""

    def __init__(self, conn: Any, caller: Any) -> None:
        self.conn, self.caller = conn, caller
        self.everything = caller.has("admin", "reviewer")
        self.datasets = set() if self.everything else datasets.owned_by(conn, org_id=caller.org_id)
        self.plugins = set() if self.everything else plugins.submitted_by(conn, org_id=caller.org_id)
        self.jobs: dict[str, tuple[bool, bool]] = {}

    def job(self, job_id: str) -> tuple[bool, bool]:
        """(may see the job, sees its outcome)."""
        if job_id not in self.jobs:
            try:
                job = jobs.load(self.conn, job_id=job_id)
                owner_ids = jobs.input_owner_ids(self.conn, job=job)
                rel = visible_job(self.caller, job, owner_ids)  # type: ignore[arg-type]
                self.jobs[job_id] = (True, sees_outcome(self.caller, rel, owner_ids))
            except NotFound:
                self.jobs[job_id] = (False, False)
        return self.jobs[job_id]

    def readable(self, event: dict[str, Any]) -> bool:
        if self.everything:
            return True
        kind, oid, action, mine = (
            event["object_type"],
            event["object_id"],
            event["action"],
            event["actor"] == self.caller.name,
        )
        if kind == "job":  # a job's later events (phases, outcome, release) tell how it went
            related, full = self.job(oid)
            return (
                full or related and (action in ("job.submitted", "job.started") or action == "job.cancelled" and mine)
            )
        if kind == "release":
            job_id = releases.job_of(self.conn, release_id=oid)
            return job_id is not None and self.job(job_id)[1]
        return (
            mine
            or kind == "room"
            or kind == "org"
            and oid == self.caller.name
            or kind == "dataset"
            and oid in self.datasets
            or kind == "plugin"
            and oid in self.plugins
        )

    def view(self, event: dict[str, Any]) -> dict[str, Any]:
        return event if self.readable(event) else redact(event)


def audit_page(ctx: Ctx, *, after: int, limit: int) -> dict[str, Any]:
    """The audit events after `after` as the caller may read them, and the log's length."""
    with ctx.store.read() as conn:
        due = jobs.any_held_due(conn, at=now())
    if due:  # a job's outcome time passed: its held events join the chain before anyone reads it
        with ctx.store.tx() as conn:
            release_held_events(conn)
    with ctx.store.read() as conn:
        rows = audit.events_after(conn, after=after, limit=limit)
        total = audit.count(conn)
        scope = AuditScope(conn, ctx.caller)
        events = [scope.view(e) for e in rows]
    return {"events": events, "total": total}
