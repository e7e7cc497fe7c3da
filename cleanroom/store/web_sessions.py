"""Review-page sessions: their own secrets (stored hashed), bound to the org token that made them."""

from __future__ import annotations

from typing import Any, TypedDict

from cleanroom.store.db import row_dict

PURGE_AFTER = 86400  # seconds an expired or revoked session row is kept


class Session(TypedDict):
    hash: str
    expires_at: float
    revoked_at: float | None
    token_revoked: float | None
    org_id: str
    name: str
    roles: list[str]


def create(
    conn: Any, *, session_id: str, org_id: str, token_id: str, secret_hash: str, created_at: float, expires_at: float
) -> None:
    """Record a new session (and drop the rows of sessions that ended more than a day ago)."""
    old = created_at - PURGE_AFTER
    conn.execute("DELETE FROM web_sessions WHERE expires_at < ? OR revoked_at < ?", (old, old))
    conn.execute(
        "INSERT INTO web_sessions (id, org_id, token_id, hash, created_at, expires_at) VALUES (?,?,?,?,?,?)",
        (session_id, org_id, token_id, secret_hash, created_at, expires_at),
    )


def get(conn: Any, *, session_id: str) -> Session | None:
    """A session with its token's state and its org."""
    row = conn.execute(
        "SELECT s.hash, s.expires_at, s.revoked_at, t.revoked_at AS token_revoked, o.id AS org_id, o.name, o.roles"
        " FROM web_sessions s JOIN tokens t ON t.id = s.token_id AND t.org_id = s.org_id"
        " JOIN orgs o ON o.id = s.org_id WHERE s.id = ?",
        (session_id,),
    ).fetchone()
    return row_dict(row, "roles") if row else None  # type: ignore[return-value]


def live_hash(conn: Any, *, session_id: str) -> str | None:
    row = conn.execute("SELECT hash FROM web_sessions WHERE id = ? AND revoked_at IS NULL", (session_id,)).fetchone()
    return str(row[0]) if row else None


def revoke(conn: Any, *, session_id: str, at: float) -> None:
    conn.execute("UPDATE web_sessions SET revoked_at = ? WHERE id = ?", (at, session_id))
