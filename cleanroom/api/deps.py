"""Request context: the store, the settings and the authenticated caller."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from cleanroom.api.authz import Caller, check_route
from cleanroom.crypto import digest
from cleanroom.errors import AuthenticationError, NotFound
from cleanroom.settings import Settings
from cleanroom.store import audit, orgs, web_sessions
from cleanroom.store.db import Store, now

TOKEN_PREFIX = "crt_"
SESSION_PREFIX = "crs_"
CALLER_KEY = "cleanroom.caller"  # where the guard middleware leaves the authenticated caller in the scope


def hash_secret(secret: str) -> str:
    return digest(secret.encode())


def new_token(conn: Any, org_id: str) -> str:
    """Create a token for `org_id` inside the caller's transaction; return it (shown once)."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    orgs.add_token(conn, token_id=token_id, org_id=org_id, secret_hash=hash_secret(secret), created_at=now())
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
        row = orgs.token_owner(conn, token_id=token_id)
    expected = row["hash"] if row else hash_secret("no such token")
    valid = hmac.compare_digest(expected, hash_secret(secret))
    if not token.startswith(TOKEN_PREFIX) or not row or not valid or row["revoked_at"] is not None:
        raise AuthenticationError("the token is not valid", hint="check CLEANROOM_TOKEN or your profile")
    return Caller(org_id=row["org_id"], name=row["name"], roles=tuple(row["roles"])), token_id


# Review-page sessions ---------------------------------------------------------------------------
# The page never keeps the org token: a login trades it for a session secret of its own, stored
# hashed, valid for `web_session_seconds`, revoked at logout, and void as soon as the org token that
# made it is revoked (token rotation). A new login always makes a new session.


def new_session(store: Store, caller: Caller, token_id: str, lifetime: float) -> str:
    session_id, secret = secrets.token_hex(12), secrets.token_urlsafe(32)
    with store.tx() as conn:
        t = now()
        web_sessions.create(
            conn,
            session_id=session_id,
            org_id=caller.org_id,
            token_id=token_id,
            secret_hash=hash_secret(secret),
            created_at=t,
            expires_at=t + lifetime,
        )
    return f"{SESSION_PREFIX}{session_id}.{secret}"


def session_caller(store: Store, cookie: str) -> Caller:
    """The org behind a review-page session cookie; AuthenticationError when it is not (or no more) valid."""
    session_id, _, secret = cookie.removeprefix(SESSION_PREFIX).partition(".")
    with store.read() as conn:
        row = web_sessions.get(conn, session_id=session_id)
    expected = row["hash"] if row else hash_secret("no such session")
    valid = hmac.compare_digest(expected, hash_secret(secret))
    if (
        not cookie.startswith(SESSION_PREFIX)
        or not row
        or not valid
        or row["revoked_at"] is not None
        or row["token_revoked"] is not None
        or row["expires_at"] < now()
    ):
        raise AuthenticationError("the session is not valid (any more)", hint="log in again")
    return Caller(org_id=row["org_id"], name=row["name"], roles=tuple(row["roles"]))


def end_session(store: Store, cookie: str) -> None:
    """Revoke a session (logout, or a new login in the same browser); unknown cookies change nothing."""
    session_id, _, secret = cookie.removeprefix(SESSION_PREFIX).partition(".")
    with store.tx() as conn:
        known = web_sessions.live_hash(conn, session_id=session_id)
        if known and hmac.compare_digest(known, hash_secret(secret)):
            web_sessions.revoke(conn, session_id=session_id, at=now())


@dataclass
class Ctx:
    store: Store
    settings: Settings
    caller: Caller

    def audit(
        self, conn: Any, action: str, object_type: str, object_id: str, details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return audit.append(
            conn,
            actor=self.caller.name,
            action=action,
            object_type=object_type,
            object_id=object_id,
            details=details,
            ts=now(),
        )

    def org_by_name(self, conn: Any, name: str) -> orgs.Org:
        org = orgs.by_name(conn, name=name)
        if not org:
            raise NotFound(f"no org named {name!r}")
        return org


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
    return Ctx(store=request.app.state.store, settings=request.app.state.settings, caller=request.state.caller)
