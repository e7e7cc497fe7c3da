"""The Docker `PhaseRunner`: each phase a fresh, locked-down container fed and read through pipes.

The request goes to the container's stdin and the response comes back on its stdout over the
Docker attach stream (`cleanroom.runner.streams`); nothing touches disk (the log driver is `none`).
Every isolation control (`cleanroom.runner.isolation`) is read back from the engine before the
container starts; one that did not apply fails the phase closed unless the operator waived it in
settings (and the runner audits the waiver). With `warm_pool` on, the job's compute and release
phases may come from the pool (`cleanroom.runner.pool`).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import docker

from cleanroom.errors import IsolationUnavailable, SandboxError
from cleanroom.runner import isolation, streams
from cleanroom.runner.isolation import INSTANCE_LABEL, LABEL, NAME_LABEL, RUNNER_LABEL, WARM_JOB, container_name
from cleanroom.runner.phases import CancelCheck, Phase, PhaseResult
from cleanroom.runner.pool import WARM_PHASES, WarmPool
from cleanroom.settings import Settings

__all__ = [
    "INSTANCE_LABEL",
    "LABEL",
    "NAME_LABEL",
    "RUNNER_LABEL",
    "WARM_JOB",
    "WARM_PHASES",
    "DockerPhase",
    "Sandbox",
    "container_name",
]


class DockerPhase:
    """A running phase container waiting for its request on stdin (a `StartedPhase`)."""

    def __init__(
        self, module: str, container: Any, raw: socket.socket, isolation: dict[str, Any], settings: Settings
    ) -> None:
        self.module = module
        self.settings = settings
        self.container = container
        self.raw = raw
        self.isolation = isolation
        self.closed = False

    @property
    def timeout_seconds(self) -> float:
        return float(self.settings.job_timeout_seconds)

    def adopt(self, job_id: str) -> bool:
        """A warm container becomes the job's (renamed `cleanroom-<job>-<phase>`); False if it died waiting."""
        try:
            self.container.reload()
            alive = self.container.status == "running"
            if alive:
                self.container.rename(container_name(job_id, self.module))
        except docker.errors.APIError:
            alive = False
        if not alive:  # its process died while waiting (or the engine lost it): the job starts a fresh one
            self.close()
            return False
        self.isolation = {**self.isolation, "warm": True}
        return True

    def close(self) -> None:
        """Kill and remove the container (also when it was never fed)."""
        if not self.closed:
            self.closed = True
            try:
                self.raw.close()
            except OSError:
                pass
            streams.remove(self.container)

    def run(
        self,
        request: bytes | memoryview,
        *,
        timeout: float | None = None,
        max_output: int | None = None,
        cancelled: CancelCheck | None = None,
    ) -> PhaseResult:
        settings = self.settings
        started = time.monotonic()
        try:
            result = streams.feed_and_collect(
                self.container,
                self.raw,
                request,
                timeout or settings.job_timeout_seconds,
                max_output or settings.job_max_output_bytes,
                settings.job_log_bytes,
                cancelled,
            )
            result.isolation = self.isolation
            result.seconds = round(time.monotonic() - started, 3)
            return result
        finally:
            self.close()


class Sandbox:
    """Runs sandbox phases on a Docker engine (the production `PhaseRunner`)."""

    def __init__(
        self,
        settings: Settings,
        client: docker.DockerClient | None = None,
        runner_id: str = "",
        instance: str = "",
        runner_name: str = "",
    ) -> None:
        self.settings = settings
        self.runner_id = runner_id  # the room: containers carry it, so a runner never touches another room's
        self.instance = instance  # this runner process: its containers carry it, other runners leave them be
        self.runner_name = runner_name
        self.pool = WarmPool(
            lambda module: self._create(module, WARM_JOB, self.settings, self.settings.sandbox_image),
            enabled=settings.warm_pool,
        )
        try:
            self.docker = client or docker.from_env(timeout=120)
            self.docker.ping()
        except docker.errors.DockerException as exc:
            raise SandboxError(
                f"cannot reach the Docker engine: {exc}",
                hint="start Docker, or mount /var/run/docker.sock into the runner",
            ) from exc

    def image_id(self, image: str) -> str:
        try:
            return str(self.docker.images.get(image).id)
        except docker.errors.ImageNotFound as exc:
            raise SandboxError(f"sandbox image {image} is missing", hint="run: make images") from exc

    def start(
        self, phase: Phase | str, job_id: str, *, limits: Mapping[str, Any] | None = None, image: str | None = None
    ) -> DockerPhase:
        """Create, check and start a phase's container; it imports its code and waits for the request.

        Starting the release phase while the compute phase runs hides its start-up (mostly imports);
        it is still a fresh container that has seen no data until `run` feeds it. `limits` are the
        job's policy limits (`memory_mb`, `cpus`, `timeout_seconds`, `pids`): they only tighten.
        A job's compute or release phase whose limits are the room's takes the pool's warm container
        when one is ready: created the same way before the job was claimed, never fed. The mock run
        and sample-and-aggregate blocks always start a fresh one.
        """
        phase = Phase(phase)
        settings = isolation.tightened(self.settings, limits or {})
        image = image or settings.sandbox_image
        if phase in (Phase.COMPUTE, Phase.RELEASE) and settings == self.settings and image == settings.sandbox_image:
            warm = self.pool.take(phase.module, job_id)
            if warm is not None:
                return warm
        return self._create(phase.module, job_id, settings, image)

    def _create(self, module: str, job_id: str, settings: Settings, image: str) -> DockerPhase:
        config = isolation.container_config(
            settings, image, module, job_id, self.runner_id, self.instance, self.runner_name
        )
        try:
            container = self.docker.containers.create(**config)
        except docker.errors.APIError as exc:
            raise IsolationUnavailable(f"the engine refused the sandbox configuration: {exc.explanation}") from exc
        try:
            container.reload()
            applied = isolation.read_back(container.attrs, config)
            waivers = isolation.check_isolation(applied, self.settings.allow_unenforced)
            sock = self.docker.api.attach_socket(
                container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            container.start()
        except BaseException:
            streams.remove(container)
            raise
        controls = {
            **applied,
            "waived": waivers,
            "image": container.attrs.get("Image"),
            "limits": {
                "memory": settings.job_memory,
                "cpus": settings.job_cpus,
                "pids": settings.job_pids,
                "timeout_seconds": settings.job_timeout_seconds,
            },
            "warm": False,
        }
        return DockerPhase(module, container, sock._sock, controls, settings)

    def warm(self) -> int:
        """Start the missing warm containers (at most one per phase, label `cleanroom.job=warm`)."""
        return self.pool.fill()

    def warm_in_background(self) -> threading.Thread:
        return self.pool.fill_in_background()

    def drain(self) -> None:
        """Remove the warm containers and stop refilling (the runner is stopping)."""
        self.pool.drain()

    def run_phase(
        self,
        phase: Phase | str,
        job_id: str,
        request: bytes | memoryview,
        *,
        image: str | None = None,
        timeout: float | None = None,
        max_output: int | None = None,
        cancelled: CancelCheck | None = None,
    ) -> PhaseResult:
        """Start a phase and run it at once; `seconds` counts the start too."""
        started = time.monotonic()
        result = self.start(phase, job_id, image=image).run(
            request, timeout=timeout, max_output=max_output, cancelled=cancelled
        )
        result.seconds = round(time.monotonic() - started, 3)
        return result

    def remove_orphans(self, live: Callable[[], Collection[str]] | None = None) -> int:
        """Remove this room's sandbox containers whose runner instance is gone (a job's or a warm one).

        `live` answers the runner instances that are alive (the API's view: `POST /runner/heartbeat`).
        It is asked *after* the containers are listed: a container listed was created by an instance
        that had announced itself before it created anything, so a runner that starts meanwhile is in the
        answer. This instance's own containers always stay. Without `live`, every container of the room
        goes (a single runner, or a test's teardown). Containers without an instance label come from a
        runner version before instances: gone too.
        """
        count = 0
        mine = {"label": f"{RUNNER_LABEL}={self.runner_id}"}
        found = self.docker.containers.list(all=True, filters=mine, ignore_removed=True)
        keep = set(live()) | {self.instance} if live is not None and found else set()
        for c in found:
            if (c.labels or {}).get(INSTANCE_LABEL) in keep - {""}:
                continue
            streams.kill(c)
            try:
                c.remove(force=True)
                count += 1
            except docker.errors.APIError:
                pass
        return count
