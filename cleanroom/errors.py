"""One error tree for the whole project.

    CleanroomError                      500  (never shown raw to clients)
    ├── ValidationError                 400  bad input: names, schemas, TOML, JSON, bundles
    │   ├── PolicyError                 400  a policy file or a job that the policies refuse
    │   └── BundleError                 400  a plugin bundle that is malformed or unsafe
    ├── AuthenticationError             401  no token, or a token that is not valid
    ├── PermissionDenied                403  authenticated, but not allowed
    ├── NotFound                        404
    ├── Conflict                        409  duplicates, wrong state for the operation
    ├── TooLarge                        413  uploads and outputs over their caps
    ├── RateLimited                     429
    ├── IntegrityError                  422  tampered or truncated ciphertext, bad signature, broken chain
    ├── SandboxError                    500  the sandbox could not run or broke a limit
    │   └── IsolationUnavailable        500  the engine cannot enforce a required control
    └── ConnectionFailed                503  client side: the room could not be reached

The API maps these to status codes in one place (`cleanroom.api.app`); nothing below the API
raises an HTTP exception.
"""

from __future__ import annotations

from typing import Any


class CleanroomError(Exception):
    """Base of every error this project raises on purpose."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, hint: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        if self.details is not None:
            body["details"] = self.details
        return body


class ValidationError(CleanroomError):
    status_code = 400
    code = "invalid_input"


class PolicyError(ValidationError):
    code = "policy_violation"


class BundleError(ValidationError):
    code = "invalid_bundle"


class AuthenticationError(CleanroomError):
    status_code = 401
    code = "unauthenticated"


class PermissionDenied(CleanroomError):
    status_code = 403
    code = "forbidden"


class NotFound(CleanroomError):
    status_code = 404
    code = "not_found"


class Conflict(CleanroomError):
    status_code = 409
    code = "conflict"


class TooLarge(CleanroomError):
    status_code = 413
    code = "too_large"


class RateLimited(CleanroomError):
    status_code = 429
    code = "rate_limited"


class IntegrityError(CleanroomError):
    status_code = 422
    code = "integrity_error"


class SandboxError(CleanroomError):
    status_code = 500
    code = "sandbox_error"


class IsolationUnavailable(SandboxError):
    code = "isolation_unavailable"


class ConnectionFailed(CleanroomError):
    status_code = 503
    code = "connection_failed"


_BY_CODE = {
    cls.code: cls
    for cls in (
        CleanroomError, ValidationError, PolicyError, BundleError, AuthenticationError,
        PermissionDenied, NotFound, Conflict, TooLarge, RateLimited, IntegrityError,
        SandboxError, IsolationUnavailable, ConnectionFailed,
    )
}


def from_response(status: int, body: dict[str, Any]) -> CleanroomError:
    """Rebuild the error an API response describes (used by the SDK)."""
    cls = _BY_CODE.get(str(body.get("error")), None)
    if cls is None:
        cls = next((c for c in _BY_CODE.values() if c.status_code == status), CleanroomError)
    return cls(str(body.get("message", "request failed")), hint=body.get("hint"), details=body.get("details"))
