"""Owners' signed decisions about plugins, one dataset at a time."""

from __future__ import annotations

import json
from typing import Any, TypedDict

from cleanroom.store.db import row_dict


class Approval(TypedDict):
    id: str
    plugin_id: str
    dataset: str
    policy_version: int
    dataset_sha256: str
    org_id: str
    org: str
    decision: str
    reason: str
    payload: dict[str, Any]
    signature: str
    created_at: float
    revoked_at: float | None


def of_plugin(conn: Any, *, plugin_id: str) -> list[Approval]:
    rows = conn.execute(
        "SELECT a.*, o.name AS org FROM approvals a JOIN orgs o ON o.id = a.org_id"
        " WHERE plugin_id = ? ORDER BY created_at",
        (plugin_id,),
    ).fetchall()
    return [row_dict(r, "payload") for r in rows]  # type: ignore[misc]


def in_force(conn: Any, *, datasets: list[str]) -> list[Approval]:
    """Approvals (not rejections) not revoked, for these datasets."""
    rows = (
        conn.execute(
            f"SELECT a.*, o.name AS org FROM approvals a JOIN orgs o ON o.id = a.org_id WHERE a.decision = 'approve'"
            f" AND a.revoked_at IS NULL AND a.dataset IN ({','.join('?' * len(datasets))})",
            datasets,
        ).fetchall()
        if datasets
        else []
    )
    return [row_dict(r, "payload") for r in rows]  # type: ignore[misc]


def owners_in_force(conn: Any, *, datasets: list[str]) -> set[tuple[str, str, int, str]]:
    """(plugin id, dataset, policy version, dataset sha256) of the approvals in force that each named
    dataset's owner gave."""
    if not datasets:
        return set()
    rows = conn.execute(
        "SELECT a.plugin_id, a.dataset, a.policy_version, a.dataset_sha256 FROM approvals a"
        " JOIN datasets d ON d.name = a.dataset"
        " WHERE a.decision = 'approve' AND a.revoked_at IS NULL AND a.org_id = d.owner_id"
        f" AND a.dataset IN ({','.join('?' * len(datasets))})",
        datasets,
    )
    return {(r[0], r[1], r[2], r[3]) for r in rows}


def get(conn: Any, *, approval_id: str, plugin_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM approvals WHERE id = ? AND plugin_id = ?", (approval_id, plugin_id)).fetchone()
    return dict(row) if row else None


def last_revoked(conn: Any, *, plugin_id: str, dataset: str) -> float | None:
    row = conn.execute(
        "SELECT MAX(revoked_at) FROM approvals WHERE plugin_id = ? AND dataset = ?", (plugin_id, dataset)
    ).fetchone()
    return float(row[0]) if row[0] is not None else None


def signature_known(conn: Any, *, signature: str) -> bool:
    return conn.execute("SELECT 1 FROM approvals WHERE signature = ?", (signature,)).fetchone() is not None


def record(
    conn: Any,
    *,
    approval_id: str,
    plugin_id: str,
    dataset: str,
    org_id: str,
    payload: dict[str, Any],
    signature: str,
    at: float,
) -> None:
    """Record a decision; it replaces the decisions in force of the same plugin and dataset."""
    conn.execute(
        "UPDATE approvals SET revoked_at = ? WHERE plugin_id = ? AND dataset = ? AND revoked_at IS NULL",
        (at, plugin_id, dataset),
    )
    conn.execute(
        "INSERT INTO approvals (id, plugin_id, dataset, policy_version, dataset_sha256, org_id, decision,"
        " reason, payload, signature, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            approval_id,
            plugin_id,
            dataset,
            payload["policy_version"],
            payload["dataset_sha256"],
            org_id,
            payload["decision"],
            str(payload["reason"])[:2000],
            json.dumps(payload),
            signature,
            at,
        ),
    )


def revoke(conn: Any, *, approval_id: str, at: float) -> None:
    conn.execute("UPDATE approvals SET revoked_at = ? WHERE id = ?", (at, approval_id))


def revoke_all_of(conn: Any, *, org_id: str, at: float) -> int:
    """Revoke every approval in force of an org (its key changed); returns how many."""
    return int(
        conn.execute(
            "UPDATE approvals SET revoked_at = ? WHERE org_id = ? AND revoked_at IS NULL", (at, org_id)
        ).rowcount
    )
