"""The guard in front of every route (an ASGI middleware): who is asking, and how much they may send,
settled before a byte of the body is read.

FastAPI reads and parses a JSON body before it runs the route's dependencies, so without this a
caller with no token could make the API read and parse a body of any size before its 401. The guard
matches the route, authenticates the bearer token and applies the route's rule from `authz.RULES`
(401/403 without reading the body), refuses a declared `Content-Length` over the route's cap (413),
and counts the bytes of a body that does not declare its length (413 once past the cap). The
caller it found is left in the scope for the `authorize` dependency, which re-applies the rule.

Caps: `max_json_bytes` for every route without its own; the streaming routes keep theirs (dataset
ciphertext, plugin bundle, release artifact), as do the dataset declaration and the runner's finish
report. Every answer gets `Cache-Control: no-store` unless the route set its own.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cleanroom.api.authz import PUBLIC, RULES, check_route, iter_routes
from cleanroom.api.deps import CALLER_KEY, authenticate
from cleanroom.errors import CleanroomError, TooLarge, ValidationError
from cleanroom.settings import Settings

# route name -> the setting that caps its request body (every other route: max_json_bytes)
BODY_CAPS = {
    "put_upload": "max_upload_bytes",
    "submit_plugin": "max_bundle_bytes",
    "runner_artifact": "max_release_bytes",
    "create_upload": "max_upload_meta_bytes",
    "runner_finish": "max_runner_json_bytes",
}
EXTRA_HEADERS = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))


def body_cap(route_name: str | None, settings: Settings) -> int:
    return int(getattr(settings, BODY_CAPS.get(route_name or "", "max_json_bytes")))


def _route_name(app: Any, scope: Scope) -> str | None:
    """The name of the route that will answer this request (method and path), if any."""
    table = getattr(app.state, "guard_routes", None)
    if table is None:
        table = [
            (route.path_regex, route.methods, route.name)
            for route in iter_routes(app.routes)
            if getattr(route, "path_regex", None) is not None
        ]
        app.state.guard_routes = table
    path, method = scope.get("path", ""), scope.get("method", "GET")
    for regex, methods, name in table:
        if regex.match(path) and (methods is None or method in methods):
            return str(name)
    return None


async def _answer(send: Send, exc: CleanroomError, close: bool) -> None:
    import json

    body = json.dumps(exc.to_dict()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *EXTRA_HEADERS]
    if exc.status_code == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if close:  # the body was not read: the connection cannot carry another request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        app = scope["app"]
        settings: Settings = app.state.settings
        name = _route_name(app, scope)
        cap = body_cap(name, settings)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        declared = headers.get(b"content-length")
        has_body = declared not in (None, b"0") or b"transfer-encoding" in headers

        send = _with_headers(send)
        if name in RULES and RULES[name] != PUBLIC:
            try:
                auth = headers.get(b"authorization")
                caller = await run_in_threadpool(
                    authenticate, app.state.store, auth.decode("latin-1") if auth is not None else None
                )
                check_route(name, caller)
            except CleanroomError as exc:
                await _answer(send, exc, has_body)
                return
            scope[CALLER_KEY] = caller

        if declared is not None:
            if not declared.isdigit() or len(declared) > 18:
                await _answer(send, ValidationError("the Content-Length header is not a number"), True)
                return
            if int(declared) > cap:
                await _answer(send, _too_large(cap), True)
                return

        state = {"received": 0, "over": False, "answered": False}

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > cap:
                    state["over"] = True
                    raise _too_large(cap)
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:  # whatever the app answers to the cut body, the caller gets the 413
                if not state["answered"] and message["type"] == "http.response.start":
                    state["answered"] = True
                    await _answer(send, _too_large(cap), True)
                return
            await send(message)

        await self.app(scope, counted_receive, guarded_send)


def _too_large(cap: int) -> TooLarge:
    return TooLarge(f"the request body is larger than this route's limit of {cap} bytes")


def _with_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in EXTRA_HEADERS if k not in present]
            if extra:
                message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped
