"""The audit table: append an event to the hash chain (inside the caller's transaction) and read it back.

The chain's rules (what is hashed, how it verifies, what a redacted entry keeps) are `cleanroom.audit`'s.
"""

from __future__ import annotations

import json
from typing import Any

from cleanroom.audit import GENESIS, event_hash, row_to_event

Event = dict[str, Any]


def append(
    conn: Any,
    *,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    details: dict[str, Any] | None = None,
    ts: float,
) -> Event:
    """Append one event inside the caller's write transaction and return it."""
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (row["seq"] + 1, row["hash"]) if row else (1, GENESIS)
    event = {
        "seq": seq,
        "ts": ts,
        "actor": actor,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "details": details or {},
        "prev_hash": prev,
    }
    event["hash"] = event_hash(event)
    conn.execute(
        "INSERT INTO audit (seq, ts, actor, action, object_type, object_id, details, prev_hash, hash)"
        " VALUES (?,?,?,?,?,?,?,?,?)",
        (
            seq,
            ts,
            actor,
            action,
            object_type,
            object_id,
            json.dumps(event["details"], sort_keys=True),
            prev,
            event["hash"],
        ),
    )
    return event


def events_after(conn: Any, *, after: int, limit: int) -> list[Event]:
    """Events with a sequence number above `after`, oldest first, at most `limit`."""
    rows = conn.execute("SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)).fetchall()
    return [row_to_event(r) for r in rows]


def count(conn: Any) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0])


def all_events(conn: Any) -> list[Event]:
    return [row_to_event(r) for r in conn.execute("SELECT * FROM audit ORDER BY seq")]


def last(conn: Any, *, action: str) -> Event | None:
    """The latest event of one kind, or None."""
    row = conn.execute("SELECT * FROM audit WHERE action = ? ORDER BY seq DESC LIMIT 1", (action,)).fetchone()
    return row_to_event(row) if row else None
