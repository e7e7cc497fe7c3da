"""Jobs: their rows, the one-query list, the queue the runner claims from, and held audit events."""

from __future__ import annotations

import functools
import json
from typing import Any, TypedDict

from cleanroom.errors import NotFound
from cleanroom.store.db import dumps


class Job(TypedDict):
    id: str
    org_id: str
    name: str
    spec: dict[str, Any]
    effective_policy: dict[str, Any]
    status: str
    phase: str | None
    reason: str | None
    error_class: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    runner_id: str | None
    log_blob: str | None
    attempts: int
    reveal_at: float | None
    held_events: str | None
    withdrawn_at: float | None
    recipient_id: str | None  # the recipient org's id (None when it is gone)


class Listed(Job):
    """A job with what its views need, read in the same query: the submitter's name, the input owners'
    ids, its release (if any) and that release's review state."""

    submitter: str
    owner_ids: set[str]
    release: dict[str, Any] | None


# A job row with its recipient's id, its submitter's name, its inputs' owners and its release with the
# datasets that approved or rejected it (text lists: names and ids never hold a comma).
_FULL = """SELECT j.*, ro.id AS recipient_id, so.name AS submitter,
    (SELECT group_concat(d.owner_id) FROM json_each(j.spec, '$.inputs') AS i
        JOIN datasets AS d ON d.name = json_extract(i.value, '$.dataset')) AS owner_ids,
    r.id AS r_id, r.job_id AS r_job_id, r.recipient_id AS r_recipient_id, r.review_by AS r_review_by,
    r.created_at AS r_created_at,
    (SELECT group_concat(dataset) FROM release_approvals WHERE release_id = r.id) AS r_approved,
    (SELECT group_concat(dataset) FROM release_rejections WHERE release_id = r.id) AS r_rejected
    FROM jobs AS j JOIN orgs AS so ON so.id = j.org_id
    LEFT JOIN orgs AS ro ON ro.name = json_extract(j.spec, '$.recipient')
    LEFT JOIN releases AS r ON r.job_id = j.id"""

# The jobs a viewer may see (the per-job check in Python stays the rule; this only narrows what it is
# asked about, so that paging counts only those).
VISIBLE = """(j.org_id = :me OR json_extract(j.spec, '$.recipient') = :my_name OR EXISTS (
    SELECT 1 FROM json_each(j.spec, '$.inputs') AS i
    JOIN datasets AS d ON d.name = json_extract(i.value, '$.dataset') WHERE d.owner_id = :me))"""


@functools.lru_cache(maxsize=8192)
def _document(text: str) -> Any:
    """A job's spec or effective policy, decoded once: both are written at submission and never change, and
    decoding them was most of a job list's time. Callers treat the result as read-only."""
    return json.loads(text)


def _row(row: Any) -> dict[str, Any]:
    job = dict(row)
    job["spec"], job["effective_policy"] = _document(job["spec"]), _document(job["effective_policy"])
    return job


def _split(text: str | None) -> list[str]:
    return text.split(",") if text else []


def _listed(row: Any) -> Listed:
    job: Listed = _row(row)  # type: ignore[assignment]
    job["owner_ids"] = set(_split(row["owner_ids"]))
    job["release"] = (
        None
        if row["r_id"] is None
        else {
            "id": row["r_id"],
            "job_id": row["r_job_id"],
            "recipient_id": row["r_recipient_id"],
            "review_by": json.loads(row["r_review_by"]),
            "created_at": row["r_created_at"],
            "approved": set(_split(row["r_approved"])),
            "rejected": set(_split(row["r_rejected"])),
        }
    )
    for key in [k for k in job if k.startswith("r_")]:
        job.pop(key, None)  # type: ignore[misc]
    return job


def get(conn: Any, *, job_id: str) -> Job | None:
    row = conn.execute(
        "SELECT j.*, ro.id AS recipient_id FROM jobs AS j"
        " LEFT JOIN orgs AS ro ON ro.name = json_extract(j.spec, '$.recipient') WHERE j.id = ?",
        (job_id,),
    ).fetchone()
    return _row(row) if row else None  # type: ignore[return-value]


def load(conn: Any, *, job_id: str) -> Job:
    job = get(conn, job_id=job_id)
    if job is None:
        raise NotFound("job not found")
    return job


def load_listed(conn: Any, *, job_id: str) -> Listed:
    """One job as the list reads it."""
    row = conn.execute(_FULL + " WHERE j.id = :id", {"id": job_id}).fetchone()
    if row is None:
        raise NotFound("job not found")
    return _listed(row)


def page(
    conn: Any,
    *,
    viewer_id: str,
    viewer_name: str,
    everything: bool,
    status: str | None,
    after: tuple[float, str] | None,
    limit: int | None,
) -> list[Listed]:
    """Jobs newest first after the cursor `after` (created_at, id), at most `limit` (None: all), in one
    query. Without `everything` only the viewer's (submitted, over its datasets, released to it); `status`
    filters on the stored status."""
    where = ["TRUE" if everything else VISIBLE]
    if status:
        where.append("j.status = :status")
    if after:
        where.append("(j.created_at < :c OR j.created_at = :c AND j.id > :id)")
    rows = conn.execute(
        _FULL
        + f" WHERE {' AND '.join(where)} ORDER BY j.created_at DESC, j.id"
        + (" LIMIT :limit" if limit is not None else ""),
        {
            "me": viewer_id,
            "my_name": viewer_name,
            "status": status,
            "limit": limit,
            "c": after[0] if after else None,
            "id": after[1] if after else None,
        },
    ).fetchall()
    return [_listed(r) for r in rows]


def input_owner_ids(conn: Any, *, job: Job) -> set[str]:
    names = [i["dataset"] for i in job["spec"].get("inputs", [])]
    rows = (
        conn.execute(f"SELECT owner_id FROM datasets WHERE name IN ({','.join('?' * len(names))})", names).fetchall()
        if names
        else []
    )
    return {r[0] for r in rows}


def active_count(conn: Any, *, org_id: str) -> int:
    """Jobs of an org that are queued or running."""
    return int(
        conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE org_id = ? AND status IN ('queued', 'running')", (org_id,)
        ).fetchone()[0]
    )


def submitted_since(conn: Any, *, org_id: str, dataset: str, since: float) -> list[float]:
    """When an org submitted jobs over a dataset after `since`, oldest first."""
    rows = conn.execute(
        "SELECT j.created_at FROM jobs AS j, json_each(j.spec, '$.inputs') AS i"
        " WHERE j.org_id = ? AND json_extract(i.value, '$.dataset') = ? AND j.created_at > ?"
        " ORDER BY j.created_at",
        (org_id, dataset, since),
    ).fetchall()
    return [r[0] for r in rows]


def active_over(conn: Any, *, dataset: str) -> list[tuple[str, str]]:
    """(id, status) of the queued and running jobs that read a dataset."""
    return [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT DISTINCT j.id, j.status FROM jobs AS j, json_each(j.spec, '$.inputs') AS i"
            " WHERE json_extract(i.value, '$.dataset') = ? AND j.status IN ('queued', 'running') ORDER BY j.id",
            (dataset,),
        )
    ]


def create(
    conn: Any,
    *,
    job_id: str,
    org_id: str,
    name: str,
    spec: dict[str, Any],
    effective_policy: dict[str, Any],
    created_at: float,
) -> None:
    conn.execute(
        "INSERT INTO jobs (id, org_id, name, spec, effective_policy, status, phase, created_at)"
        " VALUES (?,?,?,?,?,?,?,?)",
        (job_id, org_id, name, dumps(spec), dumps(effective_policy), "queued", None, created_at),
    )


def cancel(conn: Any, *, job_id: str, reason: str, at: float) -> None:
    conn.execute("UPDATE jobs SET status = 'cancelled', finished_at = ?, reason = ? WHERE id = ?", (at, reason, job_id))


def withdraw(conn: Any, *, job_id: str, at: float) -> None:
    """Its analyst withdrew a job that ended before its outcome was out: nothing is released."""
    conn.execute("UPDATE jobs SET withdrawn_at = ? WHERE id = ?", (at, job_id))


def finish(conn: Any, *, job_id: str, status: str, reason: str, error_class: str | None, at: float) -> None:
    conn.execute(
        "UPDATE jobs SET status = ?, reason = ?, error_class = ?, finished_at = ?, phase = NULL WHERE id = ?",
        (status, reason, error_class, at, job_id),
    )


def set_phase(conn: Any, *, job_id: str, phase: str) -> None:
    conn.execute("UPDATE jobs SET phase = ? WHERE id = ?", (phase, job_id))


def set_log(conn: Any, *, job_id: str, blob: str) -> None:
    conn.execute("UPDATE jobs SET log_blob = ? WHERE id = ?", (blob, job_id))


def requeue(conn: Any, *, job_id: str, reason: str) -> None:
    conn.execute("UPDATE jobs SET status = 'queued', phase = NULL, reason = ? WHERE id = ?", (reason, job_id))


def running(conn: Any) -> list[dict[str, Any]]:
    """id, attempts and runner_id of every running job."""
    return [dict(r) for r in conn.execute("SELECT id, attempts, runner_id FROM jobs WHERE status = 'running'")]


def oldest_queued(conn: Any) -> str | None:
    row = conn.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at LIMIT 1").fetchone()
    return str(row[0]) if row else None


def start(conn: Any, *, job_id: str, runner: str, at: float, reveal_at: float) -> None:
    """A runner claimed the job. The start and the outcome time are the first start's: a job re-queued after a
    runner restart keeps them."""
    conn.execute(
        "UPDATE jobs SET status = 'running', phase = 'verifying', started_at = COALESCE(started_at, ?),"
        " runner_id = ?, attempts = attempts + 1, reveal_at = COALESCE(reveal_at, ?) WHERE id = ?",
        (at, runner, reveal_at, job_id),
    )


# held audit events ------------------------------------------------------------------------------


def hold_state(conn: Any, *, job_id: str) -> tuple[float | None, list[dict[str, Any]]] | None:
    """A job's reveal time and the events held until then (None when there is no such job)."""
    row = conn.execute("SELECT reveal_at, held_events FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else (row["reveal_at"], json.loads(row["held_events"] or "[]"))


def set_held(conn: Any, *, job_id: str, events: list[dict[str, Any]] | None) -> None:
    conn.execute("UPDATE jobs SET held_events = ? WHERE id = ?", (None if events is None else dumps(events), job_id))


def held_due(conn: Any, *, at: float) -> list[tuple[str, list[dict[str, Any]]]]:
    """(job id, held events) of every job whose reveal time has passed, in reveal-time order."""
    rows = conn.execute(
        "SELECT id, held_events FROM jobs WHERE held_events IS NOT NULL AND reveal_at <= ? ORDER BY reveal_at, id",
        (at,),
    ).fetchall()
    return [(r["id"], json.loads(r["held_events"])) for r in rows]


def any_held_due(conn: Any, *, at: float) -> bool:
    return (
        conn.execute("SELECT 1 FROM jobs WHERE held_events IS NOT NULL AND reveal_at <= ? LIMIT 1", (at,)).fetchone()
        is not None
    )
