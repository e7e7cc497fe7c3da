"""One way to hash anything the room hashes: `digest(value)`, and one byte form of JSON for it.

Standard library only and shipped in the sandbox image, so the owner's machine, the API, the runner
and both sandbox phases compute the same digest of the same value (`cleanroom.crypto` re-exports both
functions; signatures are computed over `canonical_json` too).

- bytes (a plugin archive, a dataset's ciphertext, an artifact) are hashed as they are;
- any other value is a JSON value (a manifest, a job spec, a receipt body, an audit event, a policy)
  and is hashed in its canonical form: keys sorted, no whitespace, UTF-8 text. A str is a JSON value
  too: `digest("a")` hashes the three bytes `"a"`; hash text's own bytes with `digest(text.encode())`.

Policy hashes are the one exception, kept in their first form (`escape_non_ascii=True`: non-ASCII
characters written as `\\uXXXX` escapes). Every policy hash is stored (the dataset's policy version,
the privacy charges) and signed by owners (plugin approvals name `policy_sha256`), so computing it over
UTF-8 would orphan every stored approval of a policy that names a non-ASCII column. For ASCII-only
values the two forms are the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_json", "digest"]


def canonical_json(value: Any, *, escape_non_ascii: bool = False) -> bytes:
    """The one byte form of a JSON value that hashes and signatures are computed over."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=escape_non_ascii)
    return text.encode("utf-8")


def digest(value: Any, *, escape_non_ascii: bool = False) -> str:
    """The sha256 hex of `value`: of bytes as they are, of anything else in its canonical JSON form."""
    if isinstance(value, bytes | bytearray | memoryview):
        return hashlib.sha256(value).hexdigest()
    return hashlib.sha256(canonical_json(value, escape_non_ascii=escape_non_ascii)).hexdigest()
