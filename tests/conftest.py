"""Shared fixtures: a real API over HTTP on loopback, orgs with their own key homes, a real runner."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from cleanroom.api.app import create_app
from cleanroom.client import Client
from cleanroom.profile import Profile
from cleanroom.settings import Settings
from cleanroom.store.db import Store

REPO = Path(__file__).resolve().parent.parent


def _load_images_env() -> None:
    env_file = REPO / "containers" / ".build" / "images.env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key and value and key not in os.environ:
                os.environ[key.strip()] = value.strip()


_load_images_env()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Room:
    """A running API service (uvicorn in a thread) with its data directory."""

    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = Settings(
            data_dir=data_dir, port=self.port, runner_token_file=str(data_dir / "runner-token"), **overrides
        )
        self.store = Store(data_dir, self.settings.database_url)
        self.app = create_app(self.settings, self.store)
        self.admin_token: str = self.app.state.bootstrap_token
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("API did not start")
            time.sleep(0.05)
        self.admin = Client(self.url, self.admin_token, profile=Profile(name="admin-test"))
        self.clients = [self.admin]  # closed by stop()
        self._n = 0

    @property
    def runner_token(self) -> str:
        return Path(self.settings.runner_token_file or "").read_text().strip()

    def org(self, name: str, *roles: str) -> Client:
        created = self.admin.create_org(name, list(roles))
        client = Client(self.url, created["token"], profile=Profile(name=f"{name}-{self.port}"))
        self.clients.append(client)
        client.keys()  # generate and register this org's key pair, as the CLI does on first use
        return client

    def end_time_budget(self, job_id: str, timeout: float = 300) -> dict[str, Any]:
        """Wait (as the admin, who sees the real status) until the job ended, then move its outcome time
        to now, as if its time budget had run out: its analyst sees the outcome without waiting for it.
        For tests that are not about that wait; returns the admin's (full) view of the job."""
        self.admin.wait_job(job_id, timeout=timeout, interval=0.3)
        with self.store.tx() as conn:
            t = time.time()
            conn.execute("UPDATE jobs SET reveal_at = ? WHERE id = ? AND reveal_at > ?", (t, job_id, t))
        return self.admin.get_job(job_id)

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(autouse=True)
def cleanroom_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own CLEANROOM_HOME (profiles and org keys)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("CLEANROOM_HOME", str(home))
    for var in ("CLEANROOM_URL", "CLEANROOM_TOKEN", "CLEANROOM_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def room(tmp_path: Path) -> Iterator[Room]:
    r = Room(tmp_path / "api-data")
    yield r
    r.stop()


class RunnerThread:
    """A real runner service (room key, Docker sandboxes) in a thread, talking HTTP to the room."""

    def __init__(self, room: Room, home: Path, **overrides: Any) -> None:
        from cleanroom.runner.service import RunnerService

        image = os.environ.get("CLEANROOM_SANDBOX_IMAGE", "cleanroom-sandbox:latest")
        self.settings = Settings(
            url=room.url,
            token=room.runner_token,
            runner_home=home,
            sandbox_image=image,
            poll_seconds=0.2,
            job_timeout_seconds=overrides.pop("job_timeout_seconds", 120),
            **overrides,
        )
        self.service = RunnerService(self.settings)
        self.thread = threading.Thread(target=self.service.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not room.admin.room().get("ready"):
            if time.time() > deadline:
                raise RuntimeError("runner did not register the room key")
            time.sleep(0.1)

    def stop(self) -> None:
        self.service.stop.set()
        self.thread.join(timeout=60)
        self.service.api.close()


@pytest.fixture
def runner(room: Room, tmp_path: Path) -> Iterator[RunnerThread]:
    from tests.dockerutil import require_docker, require_image

    client = require_docker()
    require_image(client, "CLEANROOM_SANDBOX_IMAGE")
    r = RunnerThread(room, tmp_path / "runner-home")
    yield r
    r.stop()
