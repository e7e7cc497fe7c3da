"""Owners' signing keys, pinned by the runner on first sight (trust on first use).

The runner re-verifies every approval's signature before it decrypts a byte, but the public keys
come from the API. Without a pin, an operator who swaps an owner's registered key in the API's
database could sign approvals as that owner. The runner therefore keeps, in its own home, the
first signing key it saw for each org and refuses jobs whose context names another one, unless
the context also carries the org's key rotations: statements signed by the old key (the org
speaks) and the new one (it holds it), which the runner follows from the key it pinned. Without
such a chain, only the runner's operator can drop a pin (`cleanroom runner --forget-key ORG`), a
deliberate step on the runner host that the log records.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cleanroom.crypto import fingerprint, verify
from cleanroom.errors import IntegrityError, ValidationError

FILE = "owner-keys.json"
log = logging.getLogger("cleanroom.runner")
_lock = threading.Lock()  # jobs run in threads of one runner process


def follow(start: str, rotations: list[dict[str, Any]], org: str) -> str:
    """The signing key reached from `start` through `rotations` that each name the current key as the old
    one and carry valid signatures by both keys; statements that do not chain are skipped."""
    current = start
    for item in rotations:
        p = item.get("payload") if isinstance(item, dict) else None
        if not isinstance(p, dict) or p.get("type") != "key-rotation" or p.get("org") != org:
            continue
        if p.get("old_sign_public") != current or not isinstance(p.get("new_sign_public"), str):
            continue
        try:
            verify(current, p, str(item.get("old_signature")))
            verify(p["new_sign_public"], p, str(item.get("new_signature")))
        except IntegrityError:
            continue
        current = p["new_sign_public"]
    return current


class KeyPins:
    def __init__(self, home: Path) -> None:
        self.path = Path(home) / FILE

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"the runner's key pins ({self.path.name}) cannot be read: {exc}") from exc
        if not isinstance(data, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("sign_public"), str) for v in data.values()
        ):
            raise IntegrityError(f"the runner's key pins ({self.path.name}) are malformed")
        return data

    def _save(self, pins: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".pins-")
        with os.fdopen(fd, "w") as fh:
            json.dump(pins, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def check(self, owners: dict[str, dict[str, Any]]) -> None:
        """Pin keys seen for the first time; raise IntegrityError when a pinned org's key changed."""
        with _lock:
            pins = self._load()
            new = {}
            for org, keys in sorted(owners.items()):
                key = keys.get("sign_public")
                if not key:
                    continue
                pinned = pins.get(org)
                if pinned is None:
                    new[org] = {"sign_public": key, "pinned_at": time.time()}
                elif (
                    pinned["sign_public"] != key
                    and follow(pinned["sign_public"], keys.get("rotations") or [], org) == key
                ):
                    new[org] = {"sign_public": key, "pinned_at": time.time(), "rotated_from": pinned["sign_public"]}
                elif pinned["sign_public"] != key:
                    raise IntegrityError(
                        f"the room reports another signing key for {org} ({fingerprint(key)}) than the one this "
                        f"runner pinned ({fingerprint(pinned['sign_public'])}); approvals under it are not "
                        f"trusted",
                        hint=f"if {org} really changed its key, the runner's operator drops the "
                        f"pin with `cleanroom runner --forget-key {org}`",
                    )
            if new:
                self._save({**pins, **new})
                for org in new:
                    log.info("pinned the signing key of %s (%s)", org, fingerprint(new[org]["sign_public"]))

    def forget(self, org: str) -> None:
        with _lock:
            pins = self._load()
            if org not in pins:
                raise ValidationError(
                    f"this runner has no pinned key for {org!r}", hint=f"pinned: {', '.join(sorted(pins)) or 'none'}"
                )
            del pins[org]
            self._save(pins)
        log.warning("dropped the pinned signing key of %s; the next job pins the key the room reports", org)

    def pinned(self) -> dict[str, str]:
        with _lock:
            return {org: fingerprint(v["sign_public"]) for org, v in sorted(self._load().items())}
