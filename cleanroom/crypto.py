"""Keys, streaming encryption (age, through pyrage), signatures (Ed25519) and hashes.

No cipher is written here: data files and releases use the age format (X25519 + ChaCha20-Poly1305
in 64 KiB chunks, the STREAM construction), signatures use Ed25519 from `cryptography`. Hashes are
`digest` and signatures are over `canonical_json`, both from `cleanroom.sandbox.hashing` (stdlib only,
so the sandbox hashes the same way) and re-exported here.
"""

from __future__ import annotations

import base64
import io
from typing import Any, BinaryIO

import pyrage
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pyrage import x25519

from cleanroom.errors import IntegrityError, ValidationError
from cleanroom.sandbox.hashing import canonical_json, digest

__all__ = [
    "KeyPair",
    "canonical_json",
    "decrypt_bytes",
    "decrypt_stream",
    "digest",
    "encrypt_bytes",
    "encrypt_stream",
    "fingerprint",
    "generate_keypair",
    "verify",
]


def fingerprint(public: str) -> str:
    """Short, comparable fingerprint of a public key string."""
    return "SHA256:" + digest(public.strip().encode())[:32]


class KeyPair:
    """An encryption (age X25519) and a signing (Ed25519) key pair, as text."""

    def __init__(self, enc_secret: str, sign_secret: str, previous_enc_secrets: list[str] | None = None) -> None:
        """`previous_enc_secrets`: decryption keys of pairs this one replaced (key rotation), so that
        what was encrypted to them stays readable; never used to encrypt or sign."""
        try:
            self._identity = x25519.Identity.from_str(enc_secret.strip())
            raw = base64.b64decode(sign_secret.strip(), validate=True)
            self._signing = Ed25519PrivateKey.from_private_bytes(raw)
            self._previous = [x25519.Identity.from_str(s.strip()) for s in previous_enc_secrets or []]
        except Exception as exc:  # malformed key files
            raise ValidationError("the key file is not a valid cleanroom key pair") from exc
        self.enc_secret = enc_secret.strip()
        self.sign_secret = sign_secret.strip()
        self.previous_enc_secrets = [s.strip() for s in previous_enc_secrets or []]

    @property
    def enc_public(self) -> str:
        return str(self._identity.to_public())

    @property
    def sign_public(self) -> str:
        raw = self._signing.public_key().public_bytes_raw()
        return base64.b64encode(raw).decode()

    @property
    def identity(self) -> x25519.Identity:
        return self._identity

    @property
    def identities(self) -> list[x25519.Identity]:
        """The current decryption key first, then the ones it replaced."""
        return [self._identity, *self._previous]

    def sign(self, payload: Any) -> str:
        return base64.b64encode(self._signing.sign(canonical_json(payload))).decode()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "enc_secret": self.enc_secret,
            "sign_secret": self.sign_secret,
            "enc_public": self.enc_public,
            "sign_public": self.sign_public,
        }
        if self.previous_enc_secrets:
            out["previous_enc_secrets"] = self.previous_enc_secrets
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyPair:
        return cls(data["enc_secret"], data["sign_secret"], data.get("previous_enc_secrets"))


def generate_keypair() -> KeyPair:
    signing = Ed25519PrivateKey.generate()
    return KeyPair(str(x25519.Identity.generate()), base64.b64encode(signing.private_bytes_raw()).decode())


def verify(sign_public: str, payload: Any, signature: str) -> None:
    """Raise IntegrityError unless `signature` is `sign_public`'s signature of `payload`."""
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(sign_public, validate=True))
        key.verify(base64.b64decode(signature, validate=True), canonical_json(payload))
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise IntegrityError("signature does not verify") from exc


def _recipients(publics: list[str]) -> list[x25519.Recipient]:
    if not publics:
        raise ValidationError("encryption needs at least one recipient")
    try:
        return [x25519.Recipient.from_str(p.strip()) for p in publics]
    except Exception as exc:
        raise ValidationError("a recipient is not a valid age public key") from exc


def encrypt_stream(src: BinaryIO, dst: BinaryIO, recipients: list[str]) -> None:
    """Encrypt `src` to every recipient, streaming in chunks (memory stays flat)."""
    pyrage.encrypt_io(src, dst, _recipients(recipients))


def decrypt_stream(src: BinaryIO, dst: BinaryIO, identity: KeyPair) -> None:
    """Decrypt `src` into `dst`. Tampering, truncation or a wrong key is an IntegrityError.

    `dst` may have received part of the plaintext when this raises: callers decrypt into
    memory they throw away on error.
    """
    try:
        pyrage.decrypt_io(src, dst, identity.identities)
    except (pyrage.DecryptError, OSError, ValueError) as exc:
        msg = str(exc)
        if "No matching keys" in msg:
            raise IntegrityError(
                "the ciphertext was not encrypted to this key",
                hint="check that the data was encrypted to this room's key",
            ) from exc
        raise IntegrityError(f"ciphertext is corrupt or truncated ({msg})") from exc


def encrypt_bytes(data: bytes, recipients: list[str]) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, recipients)
    return out.getvalue()


def decrypt_bytes(data: bytes, identity: KeyPair) -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(data), out, identity)
    return out.getvalue()
