"""Datasets, their policy versions and the pending uploads that declare them."""

from __future__ import annotations

import json
from typing import Any, TypedDict

from cleanroom.errors import NotFound
from cleanroom.store.db import dumps, row_dict


class Dataset(TypedDict):
    name: str
    owner_id: str
    sha256: str
    size: int
    row_count: int
    schema: dict[str, Any]
    mock: list[dict[str, Any]]
    dropped: list[str]
    description: str
    policy_version: int
    created_at: float
    withdrawn_at: float | None


class PolicyVersion(TypedDict):
    dataset: str
    version: int
    text: str
    policy: dict[str, Any]
    sha256: str
    created_at: float


class Listed(TypedDict):
    """A dataset as lists show it: its row without the mock sample, with its owner's name and policy hash."""

    name: str
    owner_id: str
    owner: str
    sha256: str
    size: int
    row_count: int
    schema: dict[str, Any]
    description: str
    policy_version: int
    policy_sha256: str
    created_at: float
    withdrawn_at: float | None


def get(conn: Any, *, name: str) -> Dataset | None:
    row = conn.execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone()
    return row_dict(row, "schema", "mock", "dropped") if row else None  # type: ignore[return-value]


def load(conn: Any, *, name: str) -> Dataset:
    ds = get(conn, name=name)
    if ds is None:
        raise NotFound(f"no dataset named {name!r}")
    return ds


def policy(conn: Any, *, name: str, version: int) -> PolicyVersion:
    row = conn.execute("SELECT * FROM policies WHERE dataset = ? AND version = ?", (name, version)).fetchone()
    return row_dict(row, "policy")  # type: ignore[return-value]


def names(conn: Any) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM datasets")]


def named_by_sha256(conn: Any, *, sha256: str) -> str | None:
    row = conn.execute("SELECT name FROM datasets WHERE sha256 = ?", (sha256,)).fetchone()
    return str(row[0]) if row else None


def exists(conn: Any, *, name: str, sha256: str) -> bool:
    """Whether a dataset has this name or these bytes."""
    return conn.execute("SELECT 1 FROM datasets WHERE name = ? OR sha256 = ?", (name, sha256)).fetchone() is not None


def owned_by(conn: Any, *, org_id: str) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM datasets WHERE owner_id = ?", (org_id,))}


def schemas(conn: Any, *, names: list[str]) -> dict[str, dict[str, Any]]:
    rows = (
        conn.execute(
            f"SELECT name, schema FROM datasets WHERE name IN ({','.join('?' * len(names))})", names
        ).fetchall()
        if names
        else []
    )
    return {r[0]: json.loads(r[1]) for r in rows}


_LISTED = """SELECT d.name, d.owner_id, o.name AS owner, d.sha256, d.size, d.row_count, d.schema, d.description,
    d.policy_version, p.sha256 AS policy_sha256, d.created_at, d.withdrawn_at
    FROM datasets AS d JOIN orgs AS o ON o.id = d.owner_id
    JOIN policies AS p ON p.dataset = d.name AND p.version = d.policy_version"""


def page(conn: Any, *, viewer_id: str, all_withdrawn: bool, after: str | None, limit: int) -> list[Listed]:
    """Datasets by name after `after`, at most `limit`, in one query: withdrawn ones only for their owner
    (or every withdrawn one with `all_withdrawn`)."""
    rows = conn.execute(
        _LISTED + " WHERE (d.withdrawn_at IS NULL OR d.owner_id = ? OR ?) AND d.name > ? ORDER BY d.name LIMIT ?",
        (viewer_id, all_withdrawn, after or "", limit),
    ).fetchall()
    return [row_dict(r, "schema") for r in rows]  # type: ignore[misc]


def listed(conn: Any, *, name: str) -> Listed:
    row = conn.execute(_LISTED + " WHERE d.name = ?", (name,)).fetchone()
    if not row:
        raise NotFound(f"no dataset named {name!r}")
    return row_dict(row, "schema")  # type: ignore[return-value]


def owner_names(conn: Any, *, names: list[str]) -> dict[str, tuple[str, str]]:
    """dataset -> (owner id, owner name) for the named datasets that exist."""
    rows = (
        conn.execute(
            f"SELECT d.name, d.owner_id, o.name FROM datasets AS d JOIN orgs AS o ON o.id = d.owner_id"
            f" WHERE d.name IN ({','.join('?' * len(names))})",
            names,
        ).fetchall()
        if names
        else []
    )
    return {r[0]: (r[1], r[2]) for r in rows}


def create(
    conn: Any,
    *,
    name: str,
    owner_id: str,
    sha256: str,
    size: int,
    row_count: int,
    schema: Any,
    mock: Any,
    dropped: list[str],
    description: str,
    created_at: float,
) -> None:
    conn.execute(
        "INSERT INTO datasets (name, owner_id, sha256, size, row_count, schema, mock, dropped,"
        " description, policy_version, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            name,
            owner_id,
            sha256,
            size,
            row_count,
            dumps(schema),
            dumps(mock),
            dumps(dropped),
            description,
            1,
            created_at,
        ),
    )


def add_policy(
    conn: Any, *, name: str, version: int, text: str, policy: dict[str, Any], sha256: str, created_at: float
) -> None:
    """Store a policy version and make it the dataset's current one."""
    conn.execute(
        "INSERT INTO policies (dataset, version, text, policy, sha256, created_at) VALUES (?,?,?,?,?,?)",
        (name, version, text, dumps(policy), sha256, created_at),
    )
    conn.execute("UPDATE datasets SET policy_version = ? WHERE name = ?", (version, name))


def withdraw(conn: Any, *, name: str, at: float) -> None:
    conn.execute("UPDATE datasets SET withdrawn_at = ? WHERE name = ?", (at, name))


# uploads ----------------------------------------------------------------------------------------


class Upload(TypedDict):
    id: str
    org_id: str
    meta: dict[str, Any]
    created_at: float
    name: str
    sha256: str
    done_at: float | None


def upload(conn: Any, *, upload_id: str, org_id: str | None = None) -> Upload | None:
    """An upload (of `org_id`, when given)."""
    if org_id is None:
        row = conn.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
    else:
        row = conn.execute("SELECT * FROM uploads WHERE id = ? AND org_id = ?", (upload_id, org_id)).fetchone()
    return row_dict(row, "meta") if row else None  # type: ignore[return-value]


def pending_uploads(conn: Any, *, name: str, sha256: str, since: float) -> list[Upload]:
    """Uploads not done, declared since `since`, of this name or these bytes, oldest first."""
    rows = conn.execute(
        "SELECT * FROM uploads WHERE done_at IS NULL AND created_at >= ? AND (name = ? OR sha256 = ?)"
        " ORDER BY created_at",
        (since, name, sha256),
    ).fetchall()
    return [row_dict(r, "meta") for r in rows]  # type: ignore[misc]


def add_upload(conn: Any, *, upload_id: str, org_id: str, meta: dict[str, Any], created_at: float) -> None:
    conn.execute(
        "INSERT INTO uploads (id, org_id, meta, created_at, name, sha256) VALUES (?,?,?,?,?,?)",
        (upload_id, org_id, json.dumps(meta), created_at, meta["name"], meta["sha256"]),
    )


def finish_upload(conn: Any, *, upload_id: str, at: float) -> None:
    conn.execute("UPDATE uploads SET done_at = ? WHERE id = ?", (at, upload_id))


def delete_upload(conn: Any, *, upload_id: str) -> None:
    conn.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))
