"""Profiles (connection + identity) and org key files under CLEANROOM_HOME (default ~/.cleanroom).

`CLEANROOM_URL` and `CLEANROOM_TOKEN` override the profile, so one shell can act as several orgs
with `--profile NAME` / `CLEANROOM_PROFILE`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cleanroom.crypto import KeyPair, generate_keypair
from cleanroom.errors import ValidationError

PROFILE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def home() -> Path:
    return Path(os.environ.get("CLEANROOM_HOME") or Path.home() / ".cleanroom")


def write_private(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


@dataclass
class Profile:
    name: str
    url: str = "http://127.0.0.1:8000"
    token: str | None = None
    ca_file: str | None = None
    org: str | None = None
    room_fingerprint: str | None = None
    audit_head: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return home() / "profiles" / f"{self.name}.json"

    def save(self) -> None:
        write_private(self.path, asdict(self))

    @classmethod
    def load(cls, name: str | None = None, *, must_exist: bool = False) -> Profile:
        name = name or os.environ.get("CLEANROOM_PROFILE") or "default"
        if not PROFILE_NAME.fullmatch(name):
            raise ValidationError(f"bad profile name {name!r}")
        path = home() / "profiles" / f"{name}.json"
        if path.exists():
            try:
                data = json.loads(path.read_text())
                profile = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
            except (ValueError, TypeError) as exc:
                raise ValidationError(f"profile file {path} is damaged: {exc}") from exc
        elif must_exist:
            import difflib

            saved = sorted(p.stem for p in (home() / "profiles").glob("*.json"))
            close = difflib.get_close_matches(name, saved, n=1)
            raise ValidationError(
                f"no profile named {name!r} (in {home() / 'profiles'})",
                hint=(f"did you mean --profile {close[0]}? " if close else "")
                + (f"The saved profiles are: {', '.join(saved)}. " if saved else "No profile is saved yet. ")
                + f"Create it with: cleanroom profile save {name} --url URL --token-stdin",
            )
        else:
            profile = cls(name=name)
        profile.url = os.environ.get("CLEANROOM_URL") or profile.url
        profile.token = os.environ.get("CLEANROOM_TOKEN") or profile.token
        profile.ca_file = os.environ.get("CLEANROOM_CA_FILE") or profile.ca_file
        return profile


def key_path(org: str) -> Path:
    return home() / "keys" / f"{org}.json"


def load_or_create_keys(org: str) -> tuple[KeyPair, bool]:
    """The org's key pair on this machine; generated (and saved 0600) on first use."""
    path = key_path(org)
    if path.exists():
        try:
            return KeyPair.from_dict(json.loads(path.read_text())), False
        except (ValueError, KeyError) as exc:
            raise ValidationError(f"key file {path} is damaged") from exc
    pair = generate_keypair()
    write_private(path, pair.to_dict())
    return pair, True
