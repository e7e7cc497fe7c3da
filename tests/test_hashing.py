"""One `digest()` for everything the room hashes (`cleanroom.sandbox.hashing`, re-exported by `crypto`).

Hashes are over values, not over whatever text a value was stored as: a manifest kept by the API as
ASCII-escaped JSON and the same manifest held by the runner hash alike. Stored and signed hashes keep
their meaning: the pinned values below were computed before `digest()` existed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from cleanroom import crypto
from cleanroom.audit import event_hash
from cleanroom.policy import parse_policy
from cleanroom.sandbox import hashing
from cleanroom.sandbox.bundles import bundle_id
from cleanroom.sandbox.hashing import canonical_json, digest

ROOT = Path(__file__).resolve().parents[1]

# A release manifest whose check detail names a non-ASCII column, as the release phase writes it.
MANIFEST = {
    "job_id": "j1",
    "outputs": {"by_region.csv": {"sha256": "ab" * 32, "bytes": 120}},
    "checks": [{"name": "k_anonymity", "ok": True, "detail": "grouped by ålder and 地域"}],
}


def test_bytes_are_hashed_as_they_are() -> None:
    data = b"\x00plugin archive\xff"
    assert digest(data) == digest(bytearray(data)) == digest(memoryview(data)) == hashlib.sha256(data).hexdigest()
    assert bundle_id(data) == digest(data)


def test_json_values_are_hashed_in_one_canonical_form() -> None:
    assert canonical_json({"b": [1, 2.5], "a": "å"}) == '{"a":"å","b":[1,2.5]}'.encode()
    assert digest({"b": 1, "a": 2}) == digest({"a": 2, "b": 1}) == hashlib.sha256(b'{"a":2,"b":1}').hexdigest()
    # A str is a JSON value: its quotes are hashed; text's own bytes are hashed as bytes.
    assert digest("a") == hashlib.sha256(b'"a"').hexdigest() != digest(b"a")


def test_crypto_hashes_and_signs_the_same_way() -> None:
    assert crypto.digest is hashing.digest and crypto.canonical_json is hashing.canonical_json
    pair = crypto.generate_keypair()
    crypto.verify(pair.sign_public, MANIFEST, pair.sign(json.loads(json.dumps(MANIFEST))))


def test_a_non_ascii_check_detail_hashes_the_same_for_the_receipt_and_the_release_decision() -> None:
    """The receipt's `manifest_sha256` (the runner hashes the manifest it made) and a release
    decision's (the owner hashes the manifest the API returns, which the API stored as ASCII-escaped
    JSON) are the same digest of the same value."""
    receipt_side = digest(MANIFEST)
    stored = json.dumps(MANIFEST, sort_keys=True, separators=(",", ":"))  # how the API keeps it
    assert "\\u00e5" in stored and "å" not in stored
    decision_side = digest(json.loads(stored))
    assert receipt_side == decision_side
    # Control: hashing the stored ASCII text itself, as the API and the client did for release
    # decisions before digest(), gives another hash whenever the manifest holds non-ASCII text...
    assert hashlib.sha256(stored.encode()).hexdigest() != receipt_side
    # ...and the same one for ASCII-only manifests, so no decision on those changes meaning.
    ascii_only = {**MANIFEST, "checks": [{"name": "k_anonymity", "ok": True, "detail": "grouped by age"}]}
    assert hashlib.sha256(json.dumps(ascii_only, sort_keys=True, separators=(",", ":")).encode()).hexdigest() == digest(
        ascii_only
    )


def test_policy_hashes_keep_their_stored_and_signed_form() -> None:
    """Policy hashes are stored and signed by owners, so they keep the ASCII-escaped form they had."""
    policy = parse_policy('[columns."ålder"]\nbounds = [18, 100]\n')
    escaped = json.dumps(policy.to_dict(), sort_keys=True, separators=(",", ":"))
    assert (
        policy.sha256()
        == hashlib.sha256(escaped.encode()).hexdigest()
        == digest(policy.to_dict(), escape_non_ascii=True)
    )
    assert policy.sha256() == "5360b80cd313ea341f14ee0c583772fddbbcdcf59dbd4e0732c3af9ed744cf02"
    assert policy.sha256() != digest(policy.to_dict())  # the UTF-8 form would orphan stored approvals


def test_audit_event_hashes_keep_their_chained_form() -> None:
    event = {
        "seq": 1,
        "ts": 1.5,
        "actor": "acme",
        "action": "dataset.created",
        "object_type": "dataset",
        "object_id": "acme.kunder",
        "details": {"column": "ålder"},
        "prev_hash": "0" * 64,
    }
    assert event_hash(event) == "194717b647fadc785368f8fb29060b8e3d89e3b6ea1742a521592b408a74b5da"


# JSON hashed outside digest(): sha256 over dumps()/canonical_json()/an encoded canonical text.
_INLINE_JSON_HASH = re.compile(r"sha256\(\s*(?:json\.)?(?:dumps|canonical_json)\(|sha256\(\s*canonical\.encode")


def _inline_json_hashes() -> list[str]:
    found = []
    for path in sorted((ROOT / "cleanroom").rglob("*.py")):
        if path == Path(hashing.__file__):
            continue  # digest() itself
        text = path.read_text()
        for match in _INLINE_JSON_HASH.finditer(text):
            found.append(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}")
    return found


def test_the_sandbox_prepare_and_shared_modules_hash_json_only_through_digest() -> None:
    owned = (
        "cleanroom/sandbox/",
        "cleanroom/prepare/",
        "cleanroom/crypto.py",
        "cleanroom/policy.py",
        "cleanroom/audit.py",
        "cleanroom/bundle.py",
        "cleanroom/jobspec.py",
        "cleanroom/review.py",
        "cleanroom/release_rules.py",
        "cleanroom/published.py",
        "cleanroom/modelio.py",
    )
    assert [site for site in _inline_json_hashes() if site.startswith(owned)] == []


def test_no_module_hashes_json_outside_digest() -> None:
    assert _inline_json_hashes() == []
