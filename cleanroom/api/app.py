"""The API service: `create_app(settings)` builds the FastAPI app; errors map to JSON here only."""

from __future__ import annotations

import errno
import logging
import re
import secrets
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cleanroom import __version__
from cleanroom.api import openapi
from cleanroom.api.deps import authorize, hash_secret, new_token
from cleanroom.api.guard import Guard
from cleanroom.errors import CleanroomError
from cleanroom.settings import Settings
from cleanroom.store import audit, orgs
from cleanroom.store.db import Store, new_id, now

log = logging.getLogger("cleanroom.api")


def create_app(settings: Settings, store: Store | None = None) -> FastAPI:
    check_bootstrap_token(settings.bootstrap_token)  # before anything is written
    store = store or Store(settings.data_dir, settings.database_url)
    # No Swagger UI or ReDoc: they load scripts from a public CDN, and the room runs offline.
    app = FastAPI(
        title="cleanroom",
        version=__version__,
        dependencies=[Depends(authorize)],
        docs_url=None,
        redoc_url=None,
        description="A plugin-based data clean room. Every route needs a bearer token "
        "except /health, /room and the review page's login.",
    )
    app.add_middleware(Guard)
    app.state.store = store
    app.state.settings = settings
    app.state.bootstrap_token = ensure_admin(store, settings)
    ensure_runner(store, settings)

    from cleanroom.api import (
        routes_admin,
        routes_budget,
        routes_datasets,
        routes_jobs,
        routes_plugins,
        routes_room,
        routes_runner,
        web,
    )

    for module in (
        routes_room,
        routes_budget,
        routes_datasets,
        routes_plugins,
        routes_jobs,
        routes_runner,
        routes_admin,
        web,
    ):
        app.include_router(module.router)

    @app.exception_handler(CleanroomError)
    async def _cleanroom_error(request: Request, exc: CleanroomError) -> JSONResponse:
        return JSONResponse(
            exc.to_dict(),
            status_code=exc.status_code,
            headers={"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg")} for e in exc.errors()
        ]
        return JSONResponse(
            {"error": "invalid_input", "message": "the request is not valid", "details": problems}, status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "message": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno == errno.ENOSPC:
            log.error("disk full on %s %s", request.method, request.url.path)
            return JSONResponse(
                {
                    "error": "insufficient_storage",
                    "message": "the room's disk is full; nothing was stored",
                    "hint": "ask the operator to free space, then retry",
                },
                status_code=507,
            )
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        incident = secrets.token_hex(6)
        log.exception("unexpected error %s on %s %s", incident, request.method, request.url.path)
        return JSONResponse(
            {
                "error": "internal_error",
                "message": f"internal error (incident {incident}); the operator's log has the details",
            },
            status_code=500,
        )

    app.openapi = lambda: openapi.build(app)  # type: ignore[method-assign]
    if settings.api_docs:
        app.router.add_route("/docs", lambda request: _docs(app), include_in_schema=False, name="swagger_ui_html")
    return app


def _docs(app: FastAPI) -> Any:
    """The API reference as a plain page made here from the OpenAPI schema: no scripts, no CDN."""
    from fastapi.responses import HTMLResponse

    from cleanroom.api.web import SECURITY_HEADERS
    from cleanroom.api.web_pages import api_docs_page

    return HTMLResponse(api_docs_page(app.openapi()), headers=SECURITY_HEADERS)


def ensure_admin(store: Store, settings: Settings) -> str | None:
    """Create the bootstrap admin org on first start. Returns its token once (else None)."""
    with store.tx() as conn:
        if orgs.by_name(conn, name="admin"):
            return None
        org_id = new_id("org")
        orgs.create(conn, org_id=org_id, name="admin", roles=["admin"], created_at=now())
        if settings.bootstrap_token:
            token_id, _, secret = settings.bootstrap_token.removeprefix("crt_").partition(".")
            orgs.add_token(conn, token_id=token_id, org_id=org_id, secret_hash=hash_secret(secret), created_at=now())
            token = None  # the operator chose it: never echo it into logs
        else:
            token = new_token(conn, org_id)
        audit.append(
            conn,
            actor="system",
            action="org.created",
            object_type="org",
            object_id="admin",
            details={"roles": ["admin"]},
            ts=now(),
        )
    return token


BOOTSTRAP_TOKEN = re.compile(r"crt_[0-9a-f]{16}\.[A-Za-z0-9_-]{16,}")


def check_bootstrap_token(token: str | None) -> None:
    """A preset admin token has the shape of a made one (`crt_` + 16 hex + `.` + a long random secret):
    `changeme` would otherwise become an admin token with an empty secret."""
    if token is not None and not BOOTSTRAP_TOKEN.fullmatch(token):
        from cleanroom.errors import ValidationError

        raise ValidationError(
            "CLEANROOM_BOOTSTRAP_TOKEN is not a cleanroom token (crt_ + 16 hex digits + '.' + at least 16 random "
            "characters); the API did not start and nothing was stored",
            hint="make one with: python -c \"import secrets; print('crt_' + secrets.token_hex(8) + '.' + "
            'secrets.token_urlsafe(32))", or unset it to have a new admin token printed on first start',
        )


def rotate_admin_token(store: Store) -> str:
    """Revoke the admin org's tokens and return a fresh one (run on the API host by the operator)."""
    with store.tx() as conn:
        admin = orgs.by_name(conn, name="admin")
        if not admin:
            raise CleanroomError("the room has no admin org yet: start the API once first")
        orgs.revoke_tokens(conn, org_id=admin["id"], at=now())
        token = new_token(conn, admin["id"])
        audit.append(
            conn, actor="operator", action="token.rotated", object_type="org", object_id="admin", details={}, ts=now()
        )
    return token


def ensure_runner(store: Store, settings: Settings) -> None:
    """When CLEANROOM_RUNNER_TOKEN_FILE is set, make sure the runner org exists with that token."""
    if not settings.runner_token_file:
        return
    path = Path(settings.runner_token_file)
    token = path.read_text().strip() if path.exists() else None
    with store.tx() as conn:
        runner = orgs.by_name(conn, name="runner")
        if runner is None:
            org_id = new_id("org")
            orgs.create(conn, org_id=org_id, name="runner", roles=["runner"], created_at=now())
            audit.append(
                conn,
                actor="system",
                action="org.created",
                object_type="org",
                object_id="runner",
                details={"roles": ["runner"]},
                ts=now(),
            )
        else:
            org_id = runner["id"]
        if token:
            token_id, _, secret = token.removeprefix("crt_").partition(".")
            known = orgs.live_token_hash(conn, token_id=token_id, org_id=org_id)
            if known and known == hash_secret(secret):
                return
        token = new_token(conn, org_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(token + "\n")
    tmp.chmod(0o640)
    tmp.replace(path)
