"""Who a runner is among the room's runners: its name (stable) and the lock that keeps the name unique."""

from __future__ import annotations

import fcntl
import os
import re
import socket
from pathlib import Path

from cleanroom.errors import ValidationError
from cleanroom.settings import Settings


def runner_name(settings: Settings) -> str:
    """This runner's name among the room's runners: CLEANROOM_RUNNER_NAME, else the host name (under compose
    the container id: `--scale` replicas differ, a restarted replica keeps its name)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", settings.runner_name or socket.gethostname() or "runner")[:64]
    return name.strip(".") or "runner"


class NameLock:
    """An exclusive lock on this runner's name in the runner home (which runners on one host share with the
    room key): a second runner under the same name would take the first for a restart of itself and
    remove its containers. The kernel drops the lock when the process ends, kill -9 included."""

    def __init__(self, home: Path, name: str) -> None:
        folder = home / "runners"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            raise ValidationError(
                f"another runner named {name!r} is running with this runner home",
                hint="give each runner its own CLEANROOM_RUNNER_NAME",
            ) from exc

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
