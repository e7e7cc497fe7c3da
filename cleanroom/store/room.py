"""The room's own records: its public keys (published by the runner) and public counts."""

from __future__ import annotations

import json
from typing import Any

from cleanroom.store.db import dumps

COUNTED = ("orgs", "datasets", "plugins", "jobs")  # no count of releases: it would tell when a job succeeded


def ping(conn: Any) -> None:
    conn.execute("SELECT 1").fetchone()


def keys(conn: Any) -> dict[str, Any] | None:
    row = conn.execute("SELECT value FROM room WHERE key = 'keys'").fetchone()
    return json.loads(row["value"]) if row else None


def set_keys(conn: Any, *, keys: dict[str, Any]) -> None:
    conn.execute("INSERT INTO room (key, value) VALUES ('keys', ?)", (dumps(keys),))


def counts(conn: Any) -> dict[str, int]:
    return {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in COUNTED}
