"""The checks every signed statement the API accepts shares: exact keys, type, signer, freshness and the
signature by the org's registered key; and the public keys a statement may introduce.

Statements: a plugin approval (`routes_plugins`), a release approval or rejection (`routes_jobs`) and a
key rotation (`routes_room`).
"""

from __future__ import annotations

import base64
import time
from typing import Any

from cleanroom.api.authz import Caller
from cleanroom.crypto import verify
from cleanroom.errors import PermissionDenied, ValidationError
from cleanroom.store import orgs

CLOCK_SKEW = 600  # seconds a signed statement may be old (or ahead)

APPROVAL_KEYS = frozenset(
    {
        "type",
        "plugin_id",
        "dataset",
        "policy_version",
        "policy_sha256",
        "dataset_sha256",
        "decision",
        "reason",
        "org",
        "issued_at",
    }
)
RELEASE_DECISION_KEYS = frozenset({"type", "release_id", "dataset", "manifest_sha256", "org", "issued_at"})
RELEASE_REJECTION_KEYS = RELEASE_DECISION_KEYS | {"reason"}
ROTATION_KEYS = frozenset({"type", "org", "old_sign_public", "new_enc_public", "new_sign_public", "issued_at"})


def check_keys(payload: dict[str, Any], keys: frozenset[str], kind: str) -> None:
    if set(payload) != keys:
        raise ValidationError(f"a {kind} payload has exactly the keys {sorted(keys)}")


def check_fresh(issued: Any, what: str = "signed payload") -> None:
    if isinstance(issued, bool) or not isinstance(issued, int | float) or abs(time.time() - issued) > CLOCK_SKEW:
        raise ValidationError(
            f"the {what} is stale or from the future (replay?)",
            hint="sign a fresh decision; check this machine's clock",
        )


def check_public_keys(enc_public: str, sign_public: str, what: str = "public keys") -> None:
    """An age X25519 recipient and a base64 Ed25519 public key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from pyrage import x25519

    try:
        x25519.Recipient.from_str(enc_public)
        Ed25519PublicKey.from_public_bytes(base64.b64decode(sign_public, validate=True))
    except Exception as exc:
        raise ValidationError(f"the {what} are not valid (age X25519 and base64 Ed25519)") from exc


def check_signed(conn: Any, caller: Caller, payload: dict[str, Any], signature: str, kind: str) -> None:
    """Type, signer (the caller), freshness, and the signature by the caller's registered signing key."""
    if payload.get("type") != kind:
        raise ValidationError(f"payload type must be {kind!r}")
    if payload.get("org") != caller.name:
        raise PermissionDenied("the payload names another org than the caller")
    check_fresh(payload.get("issued_at"))
    org = orgs.by_id(conn, org_id=caller.org_id)
    if not org or not org["sign_public"]:
        raise ValidationError(
            "this org has registered no signing key",
            hint="run any cleanroom command with your profile once: it registers the keys",
        )
    verify(org["sign_public"], payload, signature)
