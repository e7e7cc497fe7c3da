"""Request context: the store, the settings and the authenticated caller."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from cleanroom import audit
from cleanroom.api.authz import Caller, check_route
from cleanroom.errors import AuthenticationError, NotFound
from cleanroom.settings import Settings
from cleanroom.store import Store, now

TOKEN_PREFIX = "crt_"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(conn: Any, org_id: str) -> str:
    """Create a token for `org_id` inside the caller's transaction; return it (shown once)."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    conn.execute("INSERT INTO tokens (id, org_id, hash, created_at) VALUES (?,?,?,?)",
                 (token_id, org_id, hash_secret(secret), now()))
    return f"{TOKEN_PREFIX}{token_id}.{secret}"


def authenticate(store: Store, header: str | None) -> Caller | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX) or "." not in token:
        raise AuthenticationError("the token is not valid", hint="check CLEANROOM_TOKEN or your profile")
    token_id, _, secret = token[len(TOKEN_PREFIX):].partition(".")
    with store.read() as conn:
        row = conn.execute(
            "SELECT t.hash, t.revoked_at, o.id, o.name, o.roles FROM tokens t JOIN orgs o ON o.id = t.org_id"
            " WHERE t.id = ?", (token_id,)).fetchone()
    expected = row["hash"] if row else hash_secret("no such token")
    valid = hmac.compare_digest(expected, hash_secret(secret))
    if not row or not valid or row["revoked_at"] is not None:
        raise AuthenticationError("the token is not valid", hint="check CLEANROOM_TOKEN or your profile")
    import json

    return Caller(org_id=row["id"], name=row["name"], roles=tuple(json.loads(row["roles"])))


@dataclass
class Ctx:
    store: Store
    settings: Settings
    caller: Caller

    def audit(self, conn: Any, action: str, object_type: str, object_id: str,
              details: dict[str, Any] | None = None) -> dict[str, Any]:
        return audit.append(conn, actor=self.caller.name, action=action, object_type=object_type,
                            object_id=object_id, details=details, ts=now())

    def org_by_name(self, conn: Any, name: str) -> dict[str, Any]:
        row = conn.execute("SELECT * FROM orgs WHERE name = ?", (name,)).fetchone()
        if not row:
            raise NotFound(f"no org named {name!r}")
        return dict(row)


async def authorize(request: Request) -> None:
    """App-wide dependency: authenticate, then apply the route's rule from `authz.RULES`."""
    route = request.scope.get("route")
    name = getattr(route, "name", None) or "unknown"
    store: Store = request.app.state.store
    header = request.headers.get("authorization")
    caller = authenticate(store, header)
    check_route(name, caller)
    request.state.caller = caller


def get_ctx(request: Request) -> Ctx:
    return Ctx(store=request.app.state.store, settings=request.app.state.settings,
               caller=request.state.caller)
