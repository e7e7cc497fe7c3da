"""The OpenAPI document, made to say what the API really does.

FastAPI derives most of it from the routes (`response_model=`, `operation_id=`, `responses=`,
`openapi_extra=`; the helpers below build the last two). `build` then adds what FastAPI cannot know:

- the bearer scheme (`HTTPBearer`), required by every route except the public ones of `authz.RULES`;
- 401 (with `WWW-Authenticate: Bearer`) and 403 on every route that needs a token;
- invalid input is a 400 with the one `Error` body (FastAPI would declare 422 and its own schema;
  422 is this API's status for a signature or ciphertext that does not verify);
- a 413 on every route that takes a body (the guard caps every body).

The helpers are for route decorators:

    @router.get("/plugins/{ref}/bundle", operation_id="get_plugin_bundle", response_class=Response,
                responses=binary("application/x-tar") | errors(404))
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from cleanroom.api.authz import PUBLIC, RULES, iter_routes
from cleanroom.api.schemas import Error

SCHEME = "HTTPBearer"
ERROR_REF = {"$ref": "#/components/schemas/Error"}
BINARY = {"type": "string", "format": "binary"}
SHA256_HEADER = {"x-sha256": {"description": "the sha256 of the body", "schema": {"type": "string"}}}
ERROR_TEXT = {
    400: "Invalid input: the request is malformed or a value is refused (error: invalid_input, "
    "policy_violation or invalid_bundle); nothing was changed",
    401: "No bearer token, or one that is not valid (error: unauthenticated)",
    403: "The token is valid but its org may not do this (error: forbidden)",
    404: "No such object, or one the caller may not see (error: not_found)",
    409: "The object is not in a state that allows this, or exists already (error: conflict)",
    413: "The request body is larger than the route's limit (error: too_large)",
    422: "A signature or ciphertext does not verify (error: integrity_error)",
    429: "A limit on the caller's rate was reached (error: rate_limited); see the hint",
    507: "The room's disk is full; nothing was stored (error: insufficient_storage)",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for error statuses, each with the one error body."""
    return {status: {"model": Error, "description": ERROR_TEXT[status]} for status in statuses}


def binary(
    *media_types: str, description: str = "The bytes, unchanged", headers: dict[str, Any] | None = None
) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that answers raw bytes (use with `response_class=Response`). A media type
    other than application/octet-stream is declared with it as well, so generic clients read bytes."""
    types = media_types or ("application/octet-stream",)
    if "application/octet-stream" not in types:
        types = (*types, "application/octet-stream")
    ok: dict[str, Any] = {"description": description, "content": {t: {"schema": BINARY} for t in types}}
    if headers:
        ok["headers"] = headers
    return {200: ok}


def raw_body(*media_types: str, description: str) -> dict[str, Any]:
    """`openapi_extra=` for a route that reads its body as raw bytes (a `Request` stream, which FastAPI
    does not declare). The route takes any of `media_types`; the Content-Type header is not checked."""
    types = media_types or ("application/octet-stream",)
    return {
        "requestBody": {"required": True, "description": description, "content": {t: {"schema": BINARY} for t in types}}
    }


def _public_operations(app: FastAPI) -> set[tuple[str, str]]:
    """(path, method) of every route that `authz.RULES` makes public."""
    public = set()
    for route in iter_routes(app.routes):
        if RULES.get(getattr(route, "name", "")) == PUBLIC:
            for method in getattr(route, "methods", None) or ():
                public.add((getattr(route, "path", ""), method.lower()))
    return public


def build(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document (made once, then cached on the app)."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = Error.model_json_schema(ref_template="#/components/schemas/{model}")
    components["securitySchemes"] = {
        SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "crt_<token id>.<secret>",
            "description": "An org's token, as `Authorization: Bearer crt_...` (admins create orgs and their tokens)",
        }
    }
    error = {"application/json": {"schema": ERROR_REF}}
    unauthorized = {
        "description": ERROR_TEXT[401],
        "content": error,
        "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    }
    public = _public_operations(app)
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            responses = operation.setdefault("responses", {})
            validation = responses.pop("422", None)
            if validation is not None and "HTTPValidationError" not in str(validation):
                responses["422"] = validation  # declared by the route: an integrity error
            if validation is not None or "requestBody" in operation:
                responses.setdefault("400", {"description": ERROR_TEXT[400], "content": error})
            if "requestBody" in operation:
                responses.setdefault("413", {"description": ERROR_TEXT[413], "content": error})
            if (path, method) in public:
                operation["security"] = []
                continue
            operation["security"] = [{SCHEME: []}]
            responses.setdefault("401", unauthorized)
            responses.setdefault("403", {"description": ERROR_TEXT[403], "content": error})
    app.openapi_schema = schema
    return schema
