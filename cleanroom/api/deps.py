"""Request context: the store, the settings and the authenticated caller."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from cleanroom import audit
from cleanroom.api.authz import Caller, check_route
from cleanroom.errors import AuthenticationError, NotFound
from cleanroom.settings import Settings
from cleanroom.store.db import Store, now

TOKEN_PREFIX = "crt_"
SESSION_PREFIX = "crs_"
CALLER_KEY = "cleanroom.caller"  # where the guard middleware leaves the authenticated caller in the scope


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
    return check_token(store, token)[0]


def check_token(store: Store, token: str) -> tuple[Caller, str]:
    """The org behind an org token, and the token's id (a review-page session is bound to it)."""
    token_id, _, secret = token.removeprefix(TOKEN_PREFIX).partition(".")
    with store.read() as conn:
        row = conn.execute(
            "SELECT t.hash, t.revoked_at, o.id, o.name, o.roles FROM tokens t JOIN orgs o ON o.id = t.org_id"
            " WHERE t.id = ?", (token_id,)).fetchone()
    expected = row["hash"] if row else hash_secret("no such token")
    valid = hmac.compare_digest(expected, hash_secret(secret))
    if not token.startswith(TOKEN_PREFIX) or not row or not valid or row["revoked_at"] is not None:
        raise AuthenticationError("the token is not valid", hint="check CLEANROOM_TOKEN or your profile")
    return Caller(org_id=row["id"], name=row["name"], roles=tuple(json.loads(row["roles"]))), token_id


# Review-page sessions ---------------------------------------------------------------------------
# The page never keeps the org token: a login trades it for a session secret of its own, stored
# hashed, valid for `web_session_seconds`, revoked at logout, and void as soon as the org token that
# made it is revoked (token rotation). A new login always makes a new session.

def new_session(store: Store, caller: Caller, token_id: str, lifetime: float) -> str:
    session_id, secret = secrets.token_hex(12), secrets.token_urlsafe(32)
    with store.tx() as conn:
        t = now()
        conn.execute("DELETE FROM web_sessions WHERE expires_at < ? OR revoked_at < ?", (t - 86400, t - 86400))
        conn.execute("INSERT INTO web_sessions (id, org_id, token_id, hash, created_at, expires_at)"
                     " VALUES (?,?,?,?,?,?)", (session_id, caller.org_id, token_id, hash_secret(secret), t,
                                               t + lifetime))
    return f"{SESSION_PREFIX}{session_id}.{secret}"


def session_caller(store: Store, cookie: str) -> Caller:
    """The org behind a review-page session cookie; AuthenticationError when it is not (or no more) valid."""
    session_id, _, secret = cookie.removeprefix(SESSION_PREFIX).partition(".")
    with store.read() as conn:
        row = conn.execute(
            "SELECT s.hash, s.expires_at, s.revoked_at, t.revoked_at AS token_revoked, o.id, o.name, o.roles"
            " FROM web_sessions s JOIN tokens t ON t.id = s.token_id AND t.org_id = s.org_id"
            " JOIN orgs o ON o.id = s.org_id WHERE s.id = ?", (session_id,)).fetchone()
    expected = row["hash"] if row else hash_secret("no such session")
    valid = hmac.compare_digest(expected, hash_secret(secret))
    if (not cookie.startswith(SESSION_PREFIX) or not row or not valid or row["revoked_at"] is not None
            or row["token_revoked"] is not None or row["expires_at"] < now()):
        raise AuthenticationError("the session is not valid (any more)", hint="log in again")
    return Caller(org_id=row["id"], name=row["name"], roles=tuple(json.loads(row["roles"])))


def end_session(store: Store, cookie: str) -> None:
    """Revoke a session (logout, or a new login in the same browser); unknown cookies change nothing."""
    session_id, _, secret = cookie.removeprefix(SESSION_PREFIX).partition(".")
    with store.tx() as conn:
        row = conn.execute("SELECT hash FROM web_sessions WHERE id = ? AND revoked_at IS NULL",
                           (session_id,)).fetchone()
        if row and hmac.compare_digest(row["hash"], hash_secret(secret)):
            conn.execute("UPDATE web_sessions SET revoked_at = ? WHERE id = ?", (now(), session_id))


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
    """App-wide dependency: authenticate, then apply the route's rule from `authz.RULES`. The guard
    middleware (`cleanroom.api.guard`) did both before the body was read; this re-checks its answer."""
    route = request.scope.get("route")
    name = getattr(route, "name", None) or "unknown"
    if CALLER_KEY in request.scope:
        caller = request.scope[CALLER_KEY]
    else:
        store: Store = request.app.state.store
        caller = await run_in_threadpool(authenticate, store, request.headers.get("authorization"))
    check_route(name, caller)
    request.state.caller = caller


def get_ctx(request: Request) -> Ctx:
    return Ctx(store=request.app.state.store, settings=request.app.state.settings,
               caller=request.state.caller)
