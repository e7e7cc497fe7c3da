"""Releases (encrypted outputs of a succeeded job), their artifacts and the owners' review decisions."""

from __future__ import annotations

import json
from typing import Any, TypedDict

from cleanroom.errors import NotFound
from cleanroom.store.db import dumps, row_dict


class Release(TypedDict):
    id: str
    job_id: str
    recipient_id: str
    manifest: dict[str, Any]
    receipt: dict[str, Any]
    review_by: list[str]
    created_at: float


class Decisions(TypedDict):
    approved: set[str]
    rejected: dict[str, str]  # dataset -> reason


def _release(row: Any) -> Release:
    return row_dict(row, "manifest", "receipt", "review_by")  # type: ignore[return-value]


def load(conn: Any, *, ref: str) -> Release:
    """A release by its id or its job's id."""
    row = conn.execute("SELECT * FROM releases WHERE id = ? OR job_id = ?", (ref, ref)).fetchone()
    if not row:
        raise NotFound("release not found")
    return _release(row)


def of_job(conn: Any, *, job_id: str) -> Release | None:
    row = conn.execute("SELECT * FROM releases WHERE job_id = ?", (job_id,)).fetchone()
    return _release(row) if row else None


def job_of(conn: Any, *, release_id: str) -> str | None:
    row = conn.execute("SELECT job_id FROM releases WHERE id = ?", (release_id,)).fetchone()
    return str(row[0]) if row else None


def decisions(conn: Any, *, release_id: str) -> Decisions:
    return {
        "approved": {
            r[0] for r in conn.execute("SELECT dataset FROM release_approvals WHERE release_id = ?", (release_id,))
        },
        "rejected": {
            r[0]: r[1]
            for r in conn.execute("SELECT dataset, reason FROM release_rejections WHERE release_id = ?", (release_id,))
        },
    }


def artifacts(conn: Any, *, release_id: str) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in conn.execute(
            "SELECT name, blob, size FROM release_artifacts WHERE release_id = ? ORDER BY name", (release_id,)
        )
    ]


def artifact_blob(conn: Any, *, release_id: str, name: str) -> str | None:
    row = conn.execute(
        "SELECT blob FROM release_artifacts WHERE release_id = ? AND name = ?", (release_id, name)
    ).fetchone()
    return str(row[0]) if row else None


def decided(conn: Any, *, release_id: str, dataset: str) -> str | None:
    """'approved' or 'rejected' when the dataset's owner decided about this release already, else None."""
    for table, done in (("release_approvals", "approved"), ("release_rejections", "rejected")):
        if conn.execute(
            f"SELECT 1 FROM {table} WHERE release_id = ? AND dataset = ?", (release_id, dataset)
        ).fetchone():
            return done
    return None


def approve(
    conn: Any, *, release_id: str, dataset: str, org_id: str, payload: dict[str, Any], signature: str, at: float
) -> None:
    conn.execute(
        "INSERT INTO release_approvals (release_id, dataset, org_id, payload, signature, created_at)"
        " VALUES (?,?,?,?,?,?)",
        (release_id, dataset, org_id, json.dumps(payload), signature, at),
    )


def reject(
    conn: Any,
    *,
    release_id: str,
    dataset: str,
    org_id: str,
    reason: str,
    payload: dict[str, Any],
    signature: str,
    at: float,
) -> None:
    conn.execute(
        "INSERT INTO release_rejections (release_id, dataset, org_id, reason, payload, signature,"
        " created_at) VALUES (?,?,?,?,?,?,?)",
        (release_id, dataset, org_id, reason, json.dumps(payload), signature, at),
    )


def create(
    conn: Any,
    *,
    release_id: str,
    job_id: str,
    recipient_id: str,
    manifest: dict[str, Any],
    receipt: dict[str, Any],
    review_by: list[str],
    at: float,
) -> None:
    conn.execute(
        "INSERT INTO releases (id, job_id, recipient_id, manifest, receipt, review_by, created_at)"
        " VALUES (?,?,?,?,?,?,?)",
        (release_id, job_id, recipient_id, dumps(manifest), dumps(receipt), dumps(sorted(review_by)), at),
    )


def add_artifact(conn: Any, *, release_id: str, name: str, blob: str, size: int) -> None:
    conn.execute(
        "INSERT INTO release_artifacts (release_id, name, blob, size) VALUES (?,?,?,?)", (release_id, name, blob, size)
    )


class Listed(TypedDict):
    """A release as lists show it, with its recipient's name, artifacts and review decisions, and its job
    (as `jobs.Listed` has it, without the job's own release)."""

    release: Release
    recipient: str
    artifacts: list[dict[str, Any]]
    decisions: Decisions
    job: dict[str, Any]


def page(
    conn: Any, *, viewer_id: str, viewer_name: str, everything: bool, after: tuple[float, str] | None, limit: int
) -> list[Listed]:
    """Releases newest first after the cursor (created_at, id), at most `limit`, of the jobs the viewer may
    see (every job with `everything`), with their artifacts, decisions and jobs: one query."""
    from cleanroom.store.jobs import VISIBLE

    where = ["TRUE" if everything else VISIBLE]
    if after:
        where.append("(r.created_at < :c OR r.created_at = :c AND r.id > :id)")
    rows = conn.execute(
        f"""SELECT r.*, o.name AS recipient, ar.name AS a_name, ar.blob AS a_blob, ar.size AS a_size,
               (SELECT group_concat(dataset) FROM release_approvals WHERE release_id = r.id) AS approved,
               (SELECT json_group_object(dataset, reason) FROM release_rejections WHERE release_id = r.id)
                   AS rejected,
               j.org_id AS j_org_id, j.spec AS j_spec, j.status AS j_status, j.started_at AS j_started_at,
               j.reveal_at AS j_reveal_at, j.withdrawn_at AS j_withdrawn_at,
               (SELECT group_concat(d.owner_id) FROM json_each(j.spec, '$.inputs') AS i
                   JOIN datasets AS d ON d.name = json_extract(i.value, '$.dataset')) AS j_owner_ids
           FROM (SELECT r.* FROM releases AS r JOIN jobs AS j ON j.id = r.job_id WHERE {" AND ".join(where)}
                 ORDER BY r.created_at DESC, r.id LIMIT :limit) AS r
           JOIN jobs AS j ON j.id = r.job_id
           JOIN orgs AS o ON o.id = r.recipient_id
           LEFT JOIN release_artifacts AS ar ON ar.release_id = r.id
           ORDER BY r.created_at DESC, r.id, ar.name""",
        {
            "me": viewer_id,
            "my_name": viewer_name,
            "limit": limit,
            "c": after[0] if after else None,
            "id": after[1] if after else None,
        },
    ).fetchall()
    out: list[Listed] = []
    for r in rows:
        if not out or out[-1]["release"]["id"] != r["id"]:
            release = _release(
                {k: r[k] for k in ("id", "job_id", "recipient_id", "manifest", "receipt", "review_by", "created_at")}
            )
            job = {
                "id": r["job_id"],
                "org_id": r["j_org_id"],
                "spec": json.loads(r["j_spec"]),
                "status": r["j_status"],
                "started_at": r["j_started_at"],
                "reveal_at": r["j_reveal_at"],
                "withdrawn_at": r["j_withdrawn_at"],
                "recipient_id": r["recipient_id"],
                "owner_ids": set(r["j_owner_ids"].split(",")) if r["j_owner_ids"] else set(),
            }
            out.append(
                {
                    "release": release,
                    "recipient": r["recipient"],
                    "artifacts": [],
                    "job": job,
                    "decisions": {
                        "approved": set(r["approved"].split(",")) if r["approved"] else set(),
                        "rejected": json.loads(r["rejected"] or "{}"),
                    },
                }
            )
        if r["a_name"] is not None:
            out[-1]["artifacts"].append({"name": r["a_name"], "blob": r["a_blob"], "size": r["a_size"]})
    return out
