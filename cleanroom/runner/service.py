"""The runner service: holds the room key, claims jobs over HTTP and runs them in sandboxes."""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cleanroom.crypto import KeyPair, fingerprint, generate_keypair
from cleanroom.errors import CleanroomError, Conflict, ConnectionFailed, ValidationError
from cleanroom.runner.api_client import RunnerAPI
from cleanroom.runner.execute import JobRun
from cleanroom.runner.identity import NameLock, runner_name
from cleanroom.runner.launcher import Sandbox
from cleanroom.settings import Settings

log = logging.getLogger("cleanroom.runner")


def load_room_key(home: Path) -> KeyPair:
    """The room's key pair, generated on the runner's first start and kept only in its volume."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = home / "room-key.json"
    if path.exists():
        return KeyPair.from_dict(json.loads(path.read_text()))
    pair = generate_keypair()
    tmp = home / "room-key.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(pair.to_dict(), f)
    os.replace(tmp, path)
    log.info("generated the room key pair")
    return pair


def heartbeat(home: Path, name: str | None = None) -> None:
    """The heartbeat files the health check reads: the home's (any runner of it is alive) and this runner's."""
    beat = str(time.time())
    (home / "heartbeat").write_text(beat)
    if name:
        (home / "runners" / f"{name}.heartbeat").write_text(beat)


def wait_for_token(settings: Settings, seconds: float = 120) -> str:
    """The runner's token; under compose the API writes the token file on its first start."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return settings.runner_token()
        except ValidationError:
            if time.monotonic() > deadline or not settings.token_file:
                raise
            log.info("waiting for the runner token file %s", settings.token_file)
            time.sleep(1)


class RunnerService:
    def __init__(self, settings: Settings, api: RunnerAPI | None = None, sandbox: Sandbox | None = None) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s runner %(levelname)s %(message)s")
        self.settings = settings
        self.keys = load_room_key(settings.runner_home)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll would flood the log
        self.api = api or RunnerAPI(settings.url, wait_for_token(settings), ca_file=settings.ca_file)
        self.runner_id = fingerprint(self.keys.enc_public + self.keys.sign_public).removeprefix("SHA256:")[:16]
        self.name = runner_name(settings)
        self.instance = f"{self.name[:40]}.{secrets.token_hex(6)}"  # this process; a restart is a new one
        self.beat_seconds = max(float(settings.poll_seconds), 1.0)
        self.ttl = max(30.0, 10 * self.beat_seconds)  # silent this long: the API counts this instance as gone
        self.sandbox = sandbox or Sandbox(settings)
        self.sandbox.runner_id, self.sandbox.instance, self.sandbox.runner_name = (
            self.runner_id,
            self.instance,
            self.name,
        )
        self.stop = threading.Event()
        self._name_lock: NameLock | None = None
        self._sweep_at = 0.0
        self._beating = threading.Event()  # set: the heartbeat thread ends

    def beat(self) -> set[str]:
        """Heartbeat to the API (the first one announces this instance); the live instances."""
        return set(self.api.heartbeat(self.instance, self.name, self.ttl)["live"])

    def _beat_until_done(self) -> None:
        """Heartbeats in their own thread: also while a slow claim waits, and while running jobs end after a
        stop (the API must not count this instance as gone and re-queue jobs that still run here)."""
        while not self._beating.wait(self.beat_seconds):
            try:
                self.beat()
            except Conflict as exc:  # silent too long, or another runner took this name: its jobs were re-queued
                log.error("stopping: %s", exc.message)
                self.stop.set()
                return
            except CleanroomError as exc:
                log.warning("heartbeat failed: %s", exc.message)

    def sweep(self) -> None:
        """Remove the containers of runner instances that are gone, then re-queue their jobs."""
        self._sweep_at = time.monotonic()
        removed = self.sandbox.remove_orphans(live=self.beat)
        if removed:
            log.info("removed %d sandbox containers of runners that are gone", removed)
        recovered = self.api.recover(self.instance)
        if recovered["requeued"] or recovered["failed"]:
            log.info("recovered jobs: %s", recovered)

    def start(self) -> None:
        """Register the room key, announce this instance, clean up after a crash, re-queue interrupted jobs."""
        self._name_lock = self._name_lock or NameLock(self.settings.runner_home, self.name)
        for attempt in range(60):
            try:
                self.api.register(self.keys.enc_public, self.keys.sign_public, self.settings.allow_unenforced)
                break
            except ConnectionFailed:
                if attempt == 59:
                    raise
                time.sleep(1)
        self.beat()  # before any container of ours exists: other runners' sweeps then keep them
        log.info("runner %s, instance %s", self.name, self.instance)
        self._beating.clear()
        threading.Thread(target=self._beat_until_done, name="runner-heartbeat", daemon=True).start()
        self.sweep()
        self.sandbox.image_id(self.settings.sandbox_image)
        self.sandbox.warm_in_background()  # the first job finds its containers started and imported

    def run_job(self, job_id: str) -> None:
        log.info("running job %s", job_id)
        try:
            JobRun(self.api, self.sandbox, self.keys, job_id, self.settings).run()
        finally:
            # between jobs, not during one: the refill's imports would compete with the job for CPU
            self.sandbox.warm_in_background()
        log.info("job %s done", job_id)

    def run(self, *, once: bool = False) -> None:
        try:
            self._loop(once=once)
        finally:
            self._beating.set()  # the job pool has ended: no job of this instance runs any more
            self.sandbox.drain()
            if self._name_lock is not None:
                self._name_lock.release()
                self._name_lock = None

    def _loop(self, *, once: bool) -> None:
        self.start()
        running: dict[str, Future[None]] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.settings.max_concurrent_jobs)) as pool:
            while not self.stop.is_set():
                heartbeat(self.settings.runner_home, self.name)
                if not self._keep_up():
                    return
                for job_id, fut in list(running.items()):
                    if fut.done():
                        running.pop(job_id)
                claimed = False
                while len(running) < self.settings.max_concurrent_jobs:
                    try:
                        claim = self.api.claim(self.instance)
                    except CleanroomError as exc:
                        log.warning("claim failed: %s", exc.message)
                        break
                    if not claim:
                        break
                    claimed = True
                    running[claim] = pool.submit(self.run_job, claim)
                if once and not claimed and not running:
                    return
                self.stop.wait(self.settings.poll_seconds)

    def _keep_up(self) -> bool:
        """Sweep every `ttl`; False when this instance must stop (the API declared it gone)."""
        if time.monotonic() - self._sweep_at >= self.ttl:
            try:
                self.sweep()
            except Conflict as exc:
                log.error("stopping: %s", exc.message)
                self.stop.set()
            except CleanroomError as exc:
                log.warning("sweep failed: %s", exc.message)
            except Exception as exc:  # noqa: BLE001 - a busy engine: the next sweep tries again
                log.warning("sweep failed: %s", exc)
        return not self.stop.is_set()
