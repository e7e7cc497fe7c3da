"""Orgs, their tokens (stored hashed) and their signed key rotations."""

from __future__ import annotations

import json
from typing import Any, TypedDict

from cleanroom.store.db import row_dict


class Org(TypedDict):
    id: str
    name: str
    roles: list[str]
    enc_public: str | None
    sign_public: str | None
    created_at: float


class TokenOwner(TypedDict):
    hash: str
    revoked_at: float | None
    org_id: str
    name: str
    roles: list[str]


def _org(row: Any) -> Org:
    return row_dict(row, "roles")  # type: ignore[return-value]


def by_name(conn: Any, *, name: str) -> Org | None:
    row = conn.execute("SELECT * FROM orgs WHERE name = ?", (name,)).fetchone()
    return _org(row) if row else None


def by_id(conn: Any, *, org_id: str) -> Org | None:
    row = conn.execute("SELECT * FROM orgs WHERE id = ?", (org_id,)).fetchone()
    return _org(row) if row else None


def names(conn: Any) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM orgs ORDER BY name")]


def page(conn: Any, *, after: str | None, limit: int) -> list[Org]:
    """Orgs by name after `after` (the runner's org is not listed), at most `limit`."""
    rows = conn.execute(
        "SELECT * FROM orgs WHERE name != 'runner' AND name > ? ORDER BY name LIMIT ?", (after or "", limit)
    ).fetchall()
    return [_org(r) for r in rows]


def create(conn: Any, *, org_id: str, name: str, roles: list[str], created_at: float) -> None:
    conn.execute(
        "INSERT INTO orgs (id, name, roles, created_at) VALUES (?,?,?,?)", (org_id, name, json.dumps(roles), created_at)
    )


def set_keys(conn: Any, *, org_id: str, enc_public: str, sign_public: str) -> None:
    conn.execute("UPDATE orgs SET enc_public = ?, sign_public = ? WHERE id = ?", (enc_public, sign_public, org_id))


# tokens -------------------------------------------------------------------------------------------


def add_token(conn: Any, *, token_id: str, org_id: str, secret_hash: str, created_at: float) -> None:
    conn.execute(
        "INSERT INTO tokens (id, org_id, hash, created_at) VALUES (?,?,?,?)",
        (token_id, org_id, secret_hash, created_at),
    )


def revoke_tokens(conn: Any, *, org_id: str, at: float) -> None:
    conn.execute("UPDATE tokens SET revoked_at = ? WHERE org_id = ? AND revoked_at IS NULL", (at, org_id))


def token_owner(conn: Any, *, token_id: str) -> TokenOwner | None:
    """A token's hash and state with the org it belongs to."""
    row = conn.execute(
        "SELECT t.hash, t.revoked_at, o.id AS org_id, o.name, o.roles FROM tokens t"
        " JOIN orgs o ON o.id = t.org_id WHERE t.id = ?",
        (token_id,),
    ).fetchone()
    return row_dict(row, "roles") if row else None  # type: ignore[return-value]


def live_token_hash(conn: Any, *, token_id: str, org_id: str) -> str | None:
    row = conn.execute(
        "SELECT hash FROM tokens WHERE id = ? AND org_id = ? AND revoked_at IS NULL", (token_id, org_id)
    ).fetchone()
    return str(row[0]) if row else None


# key rotations ------------------------------------------------------------------------------------


def add_key_rotation(
    conn: Any, *, org_id: str, payload: dict[str, Any], old_signature: str, new_signature: str, created_at: float
) -> None:
    conn.execute(
        "INSERT INTO key_rotations (org_id, payload, old_signature, new_signature, created_at) VALUES (?,?,?,?,?)",
        (org_id, json.dumps(payload), old_signature, new_signature, created_at),
    )


def key_rotations(conn: Any, *, org_id: str) -> list[dict[str, Any]]:
    """An org's signed key rotations, oldest first (the runner walks them from the key it pinned)."""
    return [
        {"payload": json.loads(r["payload"]), "old_signature": r["old_signature"], "new_signature": r["new_signature"]}
        for r in conn.execute("SELECT * FROM key_rotations WHERE org_id = ? ORDER BY seq", (org_id,))
    ]
