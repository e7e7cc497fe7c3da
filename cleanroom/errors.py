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
    ├── ConnectionFailed                503  client side: the room could not be reached
    └── JobFailed                       500  runner side: a job stopped; never sent as an HTTP error
        ├── IntegrityFailure                 a hash, signature or pinned key that does not match
        ├── RecheckRefused                   the runner's own policy and approval re-check refused the job
        ├── PluginFailed                     a plugin step raised in the compute phase (its message: the log)
        ├── MockRunFailed                    the pipeline failed on the inputs' public mock data
        ├── ReleaseRefused                   the release phase's checks refused the outputs
        ├── RecipientHasNoKey                the recipient registered no encryption key
        └── PhaseFailed                      a phase ended without a valid answer: `phase`, `reason`
                                             (`PhaseFailure`: timeout, out of memory, output too large,
                                             crash, protocol error)

The API maps these to status codes in one place (`cleanroom.api.app`); nothing below the API
raises an HTTP exception. A `JobFailed` becomes the job's outcome instead (`cleanroom.runner.execute`):
its `status` (failed or timed_out), its `error_class` and its message (the reason, which only the
input owners see) go to the API's finish call.
"""

from __future__ import annotations

from enum import StrEnum
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


class JobFailed(CleanroomError):
    """A job stopped on the runner. `error_class` and `status` are what the API records; each subclass
    fixes them, so the runner reports data, not strings it parses back."""

    code = "job_failed"
    error_class = "job_failed"
    status = "failed"  # the job's status: failed or timed_out

    def __init__(
        self, message: str, *, error_class: str | None = None, hint: str | None = None, details: Any = None
    ) -> None:
        super().__init__(message, hint=hint, details=details)
        if error_class is not None:
            self.error_class = error_class


class IntegrityFailure(JobFailed):
    error_class = "integrity_error"


class RecheckRefused(JobFailed):
    error_class = "approval_or_policy"


class PluginFailed(JobFailed):
    error_class = "plugin_error"


class MockRunFailed(JobFailed):
    """The pipeline failed on the mock data (nothing about the real data is in the message)."""

    error_class = "mock_run_failed"


class ReleaseRefused(JobFailed):
    error_class = "release_check_failed"


class RecipientHasNoKey(JobFailed):
    error_class = "recipient_has_no_key"


class PhaseFailure(StrEnum):
    """Why a sandbox phase gave no valid answer; the value is the job's `error_class`."""

    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    OUTPUT_TOO_LARGE = "output_too_large"
    CRASH = "sandbox_crash"
    PROTOCOL = "protocol_error"


class PhaseFailed(JobFailed):
    """A phase (`compute`, `release`, `mock`, `block`) ended without a valid answer, for `reason`."""

    def __init__(self, phase: str, reason: PhaseFailure, message: str | None = None) -> None:
        what = {
            PhaseFailure.TIMEOUT: "ran past the time limit",
            PhaseFailure.OUT_OF_MEMORY: "ran out of memory",
            PhaseFailure.OUTPUT_TOO_LARGE: "wrote more than the output limit",
            PhaseFailure.CRASH: "exited with an error",
            PhaseFailure.PROTOCOL: "answered an invalid message",
        }[reason]
        super().__init__(message or f"the {phase} phase {what}", error_class=reason.value)
        self.phase = phase
        self.reason = reason
        self.status = "timed_out" if reason is PhaseFailure.TIMEOUT else "failed"


_BY_CODE = {
    cls.code: cls
    for cls in (
        CleanroomError,
        ValidationError,
        PolicyError,
        BundleError,
        AuthenticationError,
        PermissionDenied,
        NotFound,
        Conflict,
        TooLarge,
        RateLimited,
        IntegrityError,
        SandboxError,
        IsolationUnavailable,
        ConnectionFailed,
    )
}


def from_response(status: int, body: dict[str, Any]) -> CleanroomError:
    """Rebuild the error an API response describes (used by the SDK)."""
    cls = _BY_CODE.get(str(body.get("error")), None)
    if cls is None:
        cls = next((c for c in _BY_CODE.values() if c.status_code == status), CleanroomError)
    return cls(str(body.get("message", "request failed")), hint=body.get("hint"), details=body.get("details"))
