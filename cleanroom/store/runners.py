"""Runner instances: one per runner process, alive while it heartbeats within its ttl."""

from __future__ import annotations

from typing import Any

KEEP_ENDED = 7 * 86400  # seconds an ended instance's row is kept


def known(conn: Any, *, instance: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT ended_at, ended_reason FROM runner_instances WHERE id = ?", (instance,)).fetchone()
    return dict(row) if row else None


def announce(conn: Any, *, instance: str, name: str, ttl: float, at: float) -> None:
    """A new instance: the earlier live instance of the same name is ended (that runner restarted)."""
    conn.execute(
        "UPDATE runner_instances SET ended_at = ?, ended_reason = 'restarted' WHERE name = ? AND ended_at IS NULL",
        (at, name),
    )
    conn.execute("DELETE FROM runner_instances WHERE ended_at < ?", (at - KEEP_ENDED,))
    conn.execute(
        "INSERT INTO runner_instances (id, name, started_at, last_seen, ttl) VALUES (?,?,?,?,?)",
        (instance, name, at, at, ttl),
    )


def seen(conn: Any, *, instance: str, at: float, ttl: float | None = None) -> None:
    if ttl is None:
        conn.execute("UPDATE runner_instances SET last_seen = ? WHERE id = ?", (at, instance))
    else:
        conn.execute("UPDATE runner_instances SET last_seen = ?, ttl = ? WHERE id = ?", (at, ttl, instance))


def live(conn: Any, *, at: float, since: float = 0.0) -> set[str]:
    """Instances not ended whose last heartbeat, or `since` (the API's start), is within their ttl."""
    return {
        r[0]
        for r in conn.execute(
            "SELECT id FROM runner_instances WHERE ended_at IS NULL AND (last_seen + ttl >= ? OR ? + ttl >= ?)",
            (at, since, at),
        )
    }


def end_lapsed(conn: Any, *, at: float, since: float = 0.0) -> None:
    conn.execute(
        "UPDATE runner_instances SET ended_at = ?, ended_reason = 'lapsed' WHERE ended_at IS NULL"
        " AND last_seen + ttl < ? AND ? + ttl < ?",
        (at, at, since, at),
    )
