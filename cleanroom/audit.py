"""The tamper-evident audit log: every state change is an event hash-chained to the previous one.

`hash = digest({seq, ts, actor, action, object_type, object_id, details, prev_hash})` (`cleanroom.crypto`).
Anyone holding the rows can check the chain with `verify_events`; a client that remembers the head
it last saw also notices a chain that was cut short.

An org reads in full only the events about itself, its datasets and plugins, and the jobs it may see
(`redact` keeps the others as `{seq, prev_hash, hash, redacted: true}`): the links between entries
still verify, a changed or dropped entry still breaks them, and the org learns nothing of the rest.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from cleanroom.crypto import digest

GENESIS = "0" * 64


def event_hash(event: dict[str, Any]) -> str:
    body = {k: event[k] for k in ("seq", "ts", "actor", "action", "object_type", "object_id", "details", "prev_hash")}
    return digest(body)


def row_to_event(row: sqlite3.Row) -> dict[str, Any]:
    event = dict(row)
    event["details"] = json.loads(event["details"])
    return event


def redact(event: dict[str, Any]) -> dict[str, Any]:
    """What an org that may not read an event sees of it: its place and its links in the chain."""
    return {"seq": event["seq"], "prev_hash": event["prev_hash"], "hash": event["hash"], "redacted": True}


def verify_events(events: list[dict[str, Any]], *, pinned: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check the chain; a redacted entry is checked for its place and links (its content is not
    shown, so its own hash cannot be recomputed). Returns {"ok", "count", "redacted", "head",
    "broken_at", "reason"}."""
    prev = GENESIS
    redacted = 0
    for index, event in enumerate(events, start=1):
        if event.get("seq") != index:
            return _broken(events, index, f"event {index} is missing or out of order (found seq {event.get('seq')})")
        if event.get("prev_hash") != prev:
            return _broken(events, index, f"event {index} does not link to event {index - 1}")
        if event.get("redacted") is True:
            if set(event) != {"seq", "prev_hash", "hash", "redacted"} or not _is_hash(event.get("hash")):
                return _broken(events, index, f"event {index} is not a well-formed redacted entry")
            redacted += 1
        elif _hash_or_none(event) != event.get("hash"):
            return _broken(events, index, f"event {index} was changed after it was written")
        prev = event["hash"]
    if pinned:
        seq = int(pinned.get("seq", 0))
        if seq > len(events) or (seq and events[seq - 1]["hash"] != pinned.get("hash")):
            return _broken(events, seq, f"the log no longer holds event {seq} as last seen by this client")
    head = {"seq": len(events), "hash": prev}
    return {"ok": True, "count": len(events), "redacted": redacted, "head": head, "broken_at": None, "reason": None}


def _hash_or_none(event: dict[str, Any]) -> str | None:
    try:
        return event_hash(event)
    except (KeyError, TypeError, ValueError):  # a malformed entry: it fails the check, never crashes it
        return None


def _is_hash(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _broken(events: list[dict[str, Any]], seq: int, reason: str) -> dict[str, Any]:
    return {"ok": False, "count": len(events), "redacted": None, "head": None, "broken_at": seq, "reason": reason}
