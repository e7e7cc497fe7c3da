"""Plugins (bundles by hash, with their review report) and the orgs that submitted the same bytes later."""

from __future__ import annotations

import json
from typing import Any, TypedDict

from cleanroom.errors import NotFound
from cleanroom.store.db import dumps, row_dict


class Plugin(TypedDict):
    id: str
    name: str
    version: str
    kind: str
    manifest: dict[str, Any]
    review: dict[str, Any]
    size: int
    submitted_by: str
    created_at: float
    users: dict[str, float]  # org id -> when it submitted the same bytes after the first submitter


def _with_users(conn: Any, rows: list[Any]) -> list[Plugin]:
    plugins: list[Plugin] = [row_dict(r, "manifest", "review") for r in rows]  # type: ignore[misc]
    ids = [p["id"] for p in plugins]
    users: dict[str, dict[str, float]] = {i: {} for i in ids}
    if ids:
        for r in conn.execute(
            f"SELECT plugin_id, org_id, created_at FROM plugin_users WHERE plugin_id IN ({','.join('?' * len(ids))})",
            ids,
        ):
            users[r[0]][r[1]] = r[2]
    for p in plugins:
        p["users"] = users[p["id"]]
    return plugins


def get(conn: Any, *, plugin_id: str) -> Plugin | None:
    rows = conn.execute("SELECT * FROM plugins WHERE id = ?", (plugin_id,)).fetchall()
    return _with_users(conn, rows)[0] if rows else None


def load(conn: Any, *, plugin_id: str) -> Plugin:
    plugin = get(conn, plugin_id=plugin_id)
    if plugin is None:
        raise NotFound(f"no plugin with id {plugin_id[:16]}")
    return plugin


def many(conn: Any, *, plugin_ids: list[str]) -> dict[str, Plugin]:
    rows = (
        conn.execute(f"SELECT * FROM plugins WHERE id IN ({','.join('?' * len(plugin_ids))})", plugin_ids).fetchall()
        if plugin_ids
        else []
    )
    return {p["id"]: p for p in _with_users(conn, rows)}


def by_name_version(conn: Any, *, name: str, version: str) -> list[Plugin]:
    return _with_users(
        conn, conn.execute("SELECT * FROM plugins WHERE name = ? AND version = ?", (name, version)).fetchall()
    )


def by_id_prefix(conn: Any, *, prefix: str) -> list[Plugin]:
    """Plugins whose id starts with `prefix` (an exact comparison of the first characters: no LIKE)."""
    return _with_users(
        conn,
        conn.execute("SELECT * FROM plugins WHERE substr(id, 1, ?) = ? ORDER BY id", (len(prefix), prefix)).fetchall(),
    )


def submitted_by(conn: Any, *, org_id: str) -> set[str]:
    return {r[0] for r in conn.execute("SELECT id FROM plugins WHERE submitted_by = ?", (org_id,))}


def name_taken_by_other(conn: Any, *, name: str, org_id: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM plugins WHERE name = ? AND submitted_by != ?", (name, org_id)).fetchone()
        is not None
    )


def names(conn: Any) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT name FROM plugins")]


def versions(conn: Any, *, name: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT version FROM plugins WHERE name = ?", (name,))]


def replaced_version(conn: Any, *, plugin: Plugin) -> Plugin | None:
    """The version this plugin replaces: the latest approved one of the same name *by the same org*
    (another org's plugin of that name is never its previous version), or None."""
    rows = conn.execute(
        "SELECT p.* FROM plugins p JOIN approvals a ON a.plugin_id = p.id"
        " WHERE p.name = ? AND p.submitted_by = ? AND p.id != ? AND p.created_at <= ?"
        " AND a.decision = 'approve' AND a.revoked_at IS NULL"
        " ORDER BY p.created_at DESC LIMIT 1",
        (plugin["name"], plugin["submitted_by"], plugin["id"], plugin["created_at"]),
    ).fetchall()
    return _with_users(conn, rows)[0] if rows else None


def create(
    conn: Any,
    *,
    plugin_id: str,
    manifest: dict[str, Any],
    review: dict[str, Any],
    size: int,
    submitted_by: str,
    created_at: float,
) -> None:
    conn.execute(
        "INSERT INTO plugins (id, name, version, kind, manifest, review, size, submitted_by,"
        " created_at) VALUES (?,?,?,?,?,?,?,?,?)",
        (
            plugin_id,
            manifest["name"],
            manifest["version"],
            manifest["kind"],
            dumps(manifest),
            dumps(review),
            size,
            submitted_by,
            created_at,
        ),
    )


def add_user(conn: Any, *, plugin_id: str, org_id: str, created_at: float) -> None:
    conn.execute(
        "INSERT INTO plugin_users (plugin_id, org_id, created_at) VALUES (?,?,?)", (plugin_id, org_id, created_at)
    )


class Listed(TypedDict):
    """A plugin as lists show it: no manifest, with its submitter's name, the viewer's own submission
    time (`since`: when the viewer submitted the same bytes after the first submitter, else None) and
    every approval of it, oldest first."""

    id: str
    name: str
    version: str
    kind: str
    review: dict[str, Any]
    size: int
    submitted_by: str
    submitter: str
    created_at: float
    since: float | None
    approvals: list[dict[str, Any]]


def page(
    conn: Any, *, viewer_id: str, all_plugins: bool, after: tuple[str, float, str] | None, limit: int
) -> list[Listed]:
    """The plugins the viewer may see (every one with `all_plugins`, else those it submitted, first or
    again), by name and submission time after `after`, at most `limit`, with their approvals: one query."""
    name, created, pid = after or ("", -1.0, "")
    rows = conn.execute(
        """SELECT p.*, s.name AS submitter, a.id AS a_id, a.dataset AS a_dataset, ao.name AS a_org,
               a.decision AS a_decision, a.reason AS a_reason, a.policy_version AS a_policy_version,
               a.dataset_sha256 AS a_dataset_sha256, a.created_at AS a_created_at, a.revoked_at AS a_revoked_at
           FROM (SELECT p.id, p.name, p.version, p.kind, p.review, p.size, p.submitted_by, p.created_at,
                        u.created_at AS since
                 FROM plugins AS p LEFT JOIN plugin_users AS u ON u.plugin_id = p.id AND u.org_id = :me
                 WHERE (:all OR p.submitted_by = :me OR u.org_id IS NOT NULL)
                   AND (p.name, p.created_at, p.id) > (:name, :created, :id)
                 ORDER BY p.name, p.created_at, p.id LIMIT :limit) AS p
           JOIN orgs AS s ON s.id = p.submitted_by
           LEFT JOIN approvals AS a ON a.plugin_id = p.id LEFT JOIN orgs AS ao ON ao.id = a.org_id
           ORDER BY p.name, p.created_at, p.id, a.created_at, a.rowid""",
        {"me": viewer_id, "all": all_plugins, "name": name, "created": created, "id": pid, "limit": limit},
    ).fetchall()
    out: list[Listed] = []
    for r in rows:
        if not out or out[-1]["id"] != r["id"]:
            out.append(
                {
                    "id": r["id"],
                    "name": r["name"],
                    "version": r["version"],
                    "kind": r["kind"],
                    "review": json.loads(r["review"]),
                    "size": r["size"],
                    "submitted_by": r["submitted_by"],
                    "submitter": r["submitter"],
                    "created_at": r["created_at"],
                    "since": r["since"],
                    "approvals": [],
                }
            )
        if r["a_id"] is not None:
            out[-1]["approvals"].append({k[2:]: r[k] for k in r.keys() if k.startswith("a_")})
    return out
