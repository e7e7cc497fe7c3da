"""The review page: server-rendered HTML for reviewers and data owners, no JavaScript.

The routes are public for the app-wide bearer check and do their own login: the org token is traded
at login for a session secret of its own (short-lived, stored hashed, revoked at logout and when the
org token is rotated), kept in an HttpOnly, SameSite=Strict cookie. The org token is never stored
in the browser. Each page checks the rule of the JSON route it mirrors (`authz.RULES`) and is built from
the same store queries and views (`views`, `job_views`, `audit_views`), so the page can never show more
than the API would. POST forms carry a double-submit CSRF token and are refused when the browser says
they come from another site.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from cleanroom.api import audit_views, job_views, views
from cleanroom.api import web_pages as pages
from cleanroom.api.authz import Caller, check_route
from cleanroom.api.deps import Ctx, check_token, end_session, new_session, session_caller
from cleanroom.audit import verify_events
from cleanroom.errors import AuthenticationError, CleanroomError, NotFound, PermissionDenied, ValidationError
from cleanroom.store import approvals, audit, datasets, plugins

router = APIRouter(include_in_schema=False)

SESSION_COOKIE = "cleanroom_session"
CSRF_COOKIE = "cleanroom_csrf"
CSRF_FIELD = "csrf"
MAX_FORM_BYTES = 4096
AUDIT_EVENTS_SHOWN = 200
PAGE = 200  # items on a list page
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


# Responses, cookies and CSRF -------------------------------------------------------------------


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _set_cookie(response: Response, request: Request, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(
        name, value, path="/ui", httponly=True, samesite="strict", secure=_secure(request), max_age=max_age
    )


def _csrf_token(request: Request) -> tuple[str, bool]:
    """The browser's CSRF token, or a new one (then True: the response must set the cookie)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if len(token) == 43 and token.replace("-", "").replace("_", "").isalnum():
        return token, False
    return secrets.token_urlsafe(32), True


def _html(request: Request, body: str, status: int = 200) -> HTMLResponse:
    token, new = _csrf_token(request)
    response = HTMLResponse(body.replace(pages.CSRF_PLACEHOLDER, token), status_code=status, headers=SECURITY_HEADERS)
    if new:
        _set_cookie(response, request, CSRF_COOKIE, token)
    return response


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def _login_page(request: Request, error: str | None, status: int) -> HTMLResponse:
    response = _html(request, pages.login_page(error), status)
    if request.cookies.get(SESSION_COOKIE) and status == 401:
        response.delete_cookie(SESSION_COOKIE, path="/ui", httponly=True, samesite="strict", secure=_secure(request))
    return response


def _same_site_post(request: Request, form: dict[str, str]) -> bool:
    """Refuse cross-site POSTs: Fetch metadata, Origin (when the browser sends one) and the token."""
    own = f"{request.url.scheme}://{request.url.netloc}"
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("origin")
    # With Referrer-Policy no-referrer, browsers send "Origin: null" on our own form posts.
    if origin not in (None, "null") and origin != own:
        return False
    cookie, sent = request.cookies.get(CSRF_COOKIE, ""), form.get(CSRF_FIELD, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), sent.encode())


async def _read_form(request: Request) -> dict[str, str]:
    """A small urlencoded form, read with a cap (no multipart, no files)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return {}
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_FORM_BYTES:
            return {}
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    except ValueError:  # too many fields
        return {}
    return {k: v[0] for k, v in fields.items()}


# Login and logout --------------------------------------------------------------------------------


@router.get("/ui/login")
def web_login(request: Request) -> Response:
    """The login form."""
    return _login_page(request, None, 200)


@router.post("/ui/login")
async def web_login_post(request: Request) -> Response:
    """Check the org token and start a new session (its own secret in an HttpOnly cookie)."""
    form = await _read_form(request)
    if not _same_site_post(request, form):
        message = "refused: this form was not sent from this page (cross-site?). Reload it and try again."
        return _html(request, pages.error_page(None, 403, message), 403)
    token = form.get("token", "").strip()
    store = request.app.state.store
    try:
        if not token or len(token) > 300:
            raise AuthenticationError("the token is not valid")
        caller, token_id = await run_in_threadpool(check_token, store, token)
        check_route("list_datasets", caller)
    except AuthenticationError:
        return _login_page(
            request, "That token is not valid. Paste the org token you were given (it starts with crt_).", 401
        )
    except PermissionDenied:
        return _login_page(request, "This token cannot be used on the review page.", 403)
    old = request.cookies.get(SESSION_COOKIE)
    if old:  # a login rotates the session: the one this browser had ends
        await run_in_threadpool(end_session, store, old)
    lifetime = request.app.state.settings.web_session_seconds
    session = await run_in_threadpool(new_session, store, caller, token_id, lifetime)
    response = _redirect("/ui/datasets")
    _set_cookie(response, request, SESSION_COOKIE, session, max_age=lifetime)
    return response


@router.post("/ui/logout")
async def web_logout(request: Request) -> Response:
    """End the session: revoked on the server, forgotten by this browser."""
    form = await _read_form(request)
    if not _same_site_post(request, form):
        return _html(request, pages.error_page(None, 403, "refused: cross-site request"), 403)
    session = request.cookies.get(SESSION_COOKIE)
    if session:
        await run_in_threadpool(end_session, request.app.state.store, session)
    response = _redirect("/ui/login")
    response.delete_cookie(SESSION_COOKIE, path="/ui", httponly=True, samesite="strict", secure=_secure(request))
    return response


# Pages ------------------------------------------------------------------------------------------


@router.get("/ui")
@router.get("/ui/{path:path}")
def web_page(request: Request, path: str = "") -> Response:
    """Datasets, plugins, jobs, releases and the audit log, as the logged-in org may see them."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return _redirect("/ui/datasets")
    token = request.cookies.get(SESSION_COOKIE)
    caller: Caller | None = None
    try:
        if not token or len(token) > 300:
            raise AuthenticationError("log in first")
        caller = session_caller(request.app.state.store, token)
        ctx = Ctx(store=request.app.state.store, settings=request.app.state.settings, caller=caller)
        return _html(request, render(ctx, parts))
    except AuthenticationError:
        message = (
            "Log in with your org token to see this page."
            if not token
            else "Your session has ended (logged out, expired, or the org token was rotated). Log in again."
        )
        return _login_page(request, message, 401)
    except CleanroomError as exc:
        return _html(request, pages.error_page(caller, exc.status_code, exc.message), exc.status_code)


def render(ctx: Ctx, parts: list[str]) -> str:
    """The page for a path, built from the store and the views the JSON routes use (same rules)."""
    caller = ctx.caller
    match parts:
        case ["datasets"]:
            check_route("list_datasets", caller)
            return pages.datasets_page(caller, views.dataset_page(ctx, limit=PAGE, after=None)["items"])
        case ["datasets", name]:
            check_route("get_dataset", caller)
            with ctx.store.read() as conn:
                view = views.dataset_detail(conn, caller, name)
                return pages.dataset_page(caller, view, _budget(conn, ctx, name), _dataset_approvals(conn, ctx, name))
        case ["plugins"]:
            check_route("list_plugins", caller)
            listed = views.plugin_page(ctx, limit=PAGE, after=None)["items"]
            with ctx.store.read() as conn:
                current = _current(conn, listed)
            return pages.plugins_page(caller, listed, current)
        case ["plugins", ref]:
            check_route("get_plugin", caller)
            with ctx.store.read() as conn:
                view = views.plugin_detail(conn, ctx.store.blobs, caller, ref)
                current = _current(conn, [view])
            return pages.plugin_page(caller, view, _own_datasets(ctx), current)
        case ["jobs"]:
            check_route("list_jobs", caller)
            return pages.jobs_page(caller, job_views.job_page(ctx, limit=PAGE, after=None, status=None)["items"])
        case ["releases"]:
            check_route("list_releases", caller)
            return pages.releases_page(caller, job_views.release_page(ctx, limit=PAGE, after=None)["items"])
        case ["releases", release_id]:
            check_route("get_release", caller)
            with ctx.store.read() as conn:
                return pages.release_page(caller, job_views.one_release(conn, caller, release_id)[2])
        case ["audit"]:
            check_route("list_audit", caller)
            check_route("verify_audit", caller)
            with ctx.store.read() as conn:
                total = audit.count(conn)
                check = verify_events(audit.all_events(conn))
            latest = audit_views.audit_page(ctx, after=max(0, total - AUDIT_EVENTS_SHOWN), limit=AUDIT_EVENTS_SHOWN)
            return pages.audit_page(caller, latest["events"], latest["total"], check)
    raise NotFound("there is no such page")


def _own_datasets(ctx: Ctx) -> list[str]:
    """Datasets the caller owns: the plugin page shows a ready approve command for each."""
    if not ctx.caller.has("owner"):
        return []
    with ctx.store.read() as conn:
        return sorted(
            d["name"]
            for d in datasets.page(conn, viewer_id=ctx.caller.org_id, all_withdrawn=False, after=None, limit=-1)
            if d["owner_id"] == ctx.caller.org_id and not d.get("withdrawn_at")
        )


def _current(conn: Any, plugins: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The current policy version and data hash of each dataset the plugins' approvals name (withdrawn
    datasets left out): approvals are shown against them, never as `current` when given for older ones."""
    out = {}
    for name in sorted({a["dataset"] for p in plugins for a in p["approvals"]}):
        ds = datasets.get(conn, name=name)
        if ds is not None and ds.get("withdrawn_at") is None:
            out[name] = {"policy_version": ds["policy_version"], "sha256": ds["sha256"]}
    return out


def _dataset_approvals(conn: Any, ctx: Ctx, name: str) -> list[dict[str, Any]]:
    """The plugin approvals in force on a dataset, of the plugins the caller may see (an analyst: its own)."""
    given = approvals.in_force(conn, datasets=[name])
    found = plugins.many(conn, plugin_ids=sorted({a["plugin_id"] for a in given}))
    seen = {pid: p for pid, p in found.items() if views.can_see_plugin(ctx.caller, p)}  # type: ignore[arg-type]
    return [
        {
            "plugin": a["plugin_id"],
            "plugin_name": seen[a["plugin_id"]]["name"],
            "plugin_version": seen[a["plugin_id"]]["version"],
            "org": a["org"],
            "policy_version": a["policy_version"],
            "dataset_sha256": a["dataset_sha256"],
            "created_at": a["created_at"],
            "revoked_at": a["revoked_at"],
        }
        for a in sorted(given, key=lambda a: (a["created_at"], a["id"]))
        if a["plugin_id"] in seen
    ]


def _budget(conn: object, ctx: Ctx, name: str) -> dict[str, object] | None:
    """The dataset's privacy budget for the page, when the caller may see it (owner, recipients, staff)."""
    try:
        return views.budget_view(conn, ctx.caller, name)
    except (PermissionDenied, ValidationError):  # not the caller's to see, or a stored policy that no longer parses
        return None
