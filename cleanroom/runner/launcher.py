"""Launching one sandbox phase: a fresh, locked-down container fed and read through pipes.

The request goes to the container's stdin and the response comes back on its stdout over the
Docker attach stream; nothing touches disk (the log driver is `none`). Every isolation control is
read back from the engine before the container starts; one that did not apply fails the phase
closed unless the operator waived it in settings (and the runner audits the waiver).

Seccomp: the runner passes its own profile, `seccomp.json` next to this module (package data), as
JSON text in `security_opt` (what `docker run --security-opt seccomp=<file>` sends), so the filter does
not depend on the engine's version. It is Docker's current default profile (github.com/moby/profiles):
no `io_uring_*` (engines < 25 allow them), `socket` only for the families moby allows, so never
AF_VSOCK (engines < 23 allow it) nor AF_ALG; plus one change of ours, the native ABI only, because the
32-bit `socketcall` hides the address family from seccomp. Its `_comment` key says the same. The
read-back checks that the engine holds exactly that profile, not merely that seccomp is not
`unconfined`; the `seccomp` control fails closed otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import docker
from docker.types import LogConfig, Ulimit

from cleanroom.errors import IsolationUnavailable, SandboxError
from cleanroom.settings import Settings

log = logging.getLogger("cleanroom.runner")

LABEL = "cleanroom.job"
RUNNER_LABEL = "cleanroom.runner"  # the room (its key's fingerprint): shared by every runner of the room
INSTANCE_LABEL = "cleanroom.instance"  # the runner process that started the container (random per process)
NAME_LABEL = "cleanroom.runner-name"  # that runner's name (CLEANROOM_RUNNER_NAME), for the operator
WARM_JOB = "warm"  # the job label of a warm-pool container until a job takes it
WARM_PHASES = ("compute", "release")
CONTROLS = ("network", "read_only", "user", "cap_drop", "no_new_privileges", "seccomp", "pids", "memory",
            "swap", "cpu", "tmpfs", "ipc", "mounts", "privileged", "runtime")
SECCOMP_FILE = "seccomp.json"  # package data of cleanroom.runner (pyproject.toml)


@dataclass
class PhaseResult:
    stdout: bytes
    stderr: bytes
    exit_code: int | None
    oom_killed: bool = False
    timed_out: bool = False
    output_overflow: bool = False
    seconds: float = 0.0
    isolation: dict[str, Any] = field(default_factory=dict)


@functools.cache
def _seccomp() -> tuple[str, Any]:
    """Our seccomp profile, read once: (compact JSON text for the engine, the parsed profile)."""
    try:
        profile = json.loads(resources.files(__name__.rpartition(".")[0]).joinpath(SECCOMP_FILE).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise IsolationUnavailable(f"cannot load the sandbox seccomp profile: {exc}",
                                   hint="reinstall cleanroom: cleanroom/runner/seccomp.json ships with it") from exc
    return json.dumps(profile, separators=(",", ":")), profile


def seccomp_profile() -> str:
    """The seccomp profile as compact JSON text, as `security_opt` carries it (`seccomp=<text>`)."""
    return _seccomp()[0]


def _is_our_seccomp(text: str) -> bool:
    if text == _seccomp()[0]:
        return True
    try:
        return bool(json.loads(text) == _seccomp()[1])  # the same profile, re-encoded by the engine
    except ValueError:
        return False


def _seccomp_read_back(sec: list[str]) -> tuple[bool, str | None]:
    """Whether the engine holds our profile (at least one seccomp option, each one ours), and its sha256."""
    profiles = [s[len("seccomp") + 1:] for s in sec if s.startswith(("seccomp=", "seccomp:"))]
    ours = bool(profiles) and all(_is_our_seccomp(p) for p in profiles)
    digest = "sha256:" + hashlib.sha256(profiles[-1].encode()).hexdigest() if profiles else None
    return ours, digest


def _memory_bytes(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = text.strip().lower()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def container_config(settings: Settings, image: str, phase: str, job_id: str, runner_id: str = "",
                     instance: str = "", runner_name: str = "") -> dict[str, Any]:
    """The docker-py arguments of a sandbox container: the isolation baseline in one place."""
    memory = _memory_bytes(settings.job_memory)
    config: dict[str, Any] = dict(
        image=image,
        command=["python", "-I", "-m", f"cleanroom.sandbox.{phase}"],
        stdin_open=True, tty=False, detach=False,  # detach=False makes docker-py set StdinOnce
        user="65534:65534",
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true", "seccomp=" + seccomp_profile()],
        pids_limit=max(16, int(settings.job_pids)),
        mem_limit=memory, memswap_limit=memory,
        nano_cpus=max(int(settings.job_cpus * 1e9), 100_000_000),
        ipc_mode="none",
        tmpfs={"/tmp": f"rw,noexec,nosuid,nodev,size={int(settings.job_tmpfs_bytes)}"},
        ulimits=[Ulimit(name="nofile", soft=256, hard=256), Ulimit(name="core", soft=0, hard=0),
                 Ulimit(name="fsize", soft=int(settings.job_tmpfs_bytes), hard=int(settings.job_tmpfs_bytes))],
        environment={"HOME": "/tmp"},
        working_dir="/tmp",
        hostname="sandbox",
        init=True,
        log_config=LogConfig(type="none"),
        labels={LABEL: job_id, "cleanroom.phase": phase, RUNNER_LABEL: runner_id, INSTANCE_LABEL: instance,
                NAME_LABEL: runner_name},
    )
    if settings.sandbox_runtime:
        config["runtime"] = settings.sandbox_runtime
    return config


def container_name(job_id: str, phase: str) -> str:
    """`cleanroom-<job>-<phase>`: the name a warm container takes when a job takes it (its label stays
    `warm`). A job's containers are those labelled with its id plus those of that name."""
    return f"cleanroom-{re.sub(r'[^A-Za-z0-9_.-]', '-', job_id)[:100]}-{phase}"


def read_back(attrs: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """What the engine actually applied, control by control (True = enforced)."""
    hc = attrs.get("HostConfig", {})
    cfg = attrs.get("Config", {})
    sec = hc.get("SecurityOpt") or []
    tmpfs = hc.get("Tmpfs") or {}
    seccomp_ours, seccomp_digest = _seccomp_read_back(sec)
    applied = {
        "network": hc.get("NetworkMode") == "none",
        "read_only": hc.get("ReadonlyRootfs") is True,
        "user": cfg.get("User") == "65534:65534",
        "cap_drop": [c.upper() for c in (hc.get("CapDrop") or [])] in (["ALL"], ["CAP_ALL"]) and not hc.get("CapAdd"),
        "no_new_privileges": any(s in ("no-new-privileges", "no-new-privileges:true", "no-new-privileges=true")
                                 for s in sec) and not any(s.endswith(("false", "False")) and "new-privileges" in s
                                                           for s in sec),
        "seccomp": seccomp_ours,  # our profile, not the engine's default (nor unconfined)
        "pids": (hc.get("PidsLimit") or 0) == config["pids_limit"],
        "memory": hc.get("Memory") == config["mem_limit"],
        "swap": hc.get("MemorySwap") == config["mem_limit"],
        "cpu": hc.get("NanoCpus") == config["nano_cpus"],
        "tmpfs": "noexec" in tmpfs.get("/tmp", "") and "size=" in tmpfs.get("/tmp", ""),
        "ipc": hc.get("IpcMode") in ("none", "private"),
        "mounts": not (hc.get("Binds") or hc.get("Mounts")) and not attrs.get("Mounts"),
        "privileged": hc.get("Privileged") is False and hc.get("PidMode", "") in ("", "private")
        and not hc.get("Devices"),
        "runtime": (hc.get("Runtime") == config["runtime"]) if "runtime" in config else True,
        "environment": sorted(k.split("=")[0] for k in cfg.get("Env") or []),
        "seccomp_profile": seccomp_digest,
    }
    return applied


def check_isolation(applied: dict[str, Any], waived: list[str]) -> list[str]:
    """Fail closed: raise unless every control is enforced or explicitly waived. Returns waivers used."""
    missing = [c for c in CONTROLS if applied.get(c) is not True]
    used = [c for c in missing if c in waived]
    refused = [c for c in missing if c not in waived]
    if refused:
        raise IsolationUnavailable(f"the Docker engine did not apply: {', '.join(refused)}",
                                   hint="fix the engine, or waive a control with CLEANROOM_ALLOW_UNENFORCED "
                                        "(audited)")
    return used


def tightened(settings: Settings, limits: dict[str, Any]) -> Settings:
    """The room's sandbox settings with a job's policy limits applied; a limit can only lower one."""
    changes: dict[str, Any] = {}
    if "memory_mb" in limits:
        mb = min(_memory_bytes(settings.job_memory) // 2**20, int(limits["memory_mb"]))
        changes["job_memory"] = f"{mb}m"
    if "cpus" in limits:
        changes["job_cpus"] = min(float(settings.job_cpus), float(limits["cpus"]))
    if "pids" in limits:
        changes["job_pids"] = min(int(settings.job_pids), int(limits["pids"]))
    if "timeout_seconds" in limits:
        changes["job_timeout_seconds"] = min(int(settings.job_timeout_seconds), int(limits["timeout_seconds"]))
    return dataclasses.replace(settings, **changes) if changes else settings


class Sandbox:
    """Runs sandbox phases on a Docker engine."""

    def __init__(self, settings: Settings, client: docker.DockerClient | None = None, runner_id: str = "",
                 instance: str = "", runner_name: str = "") -> None:
        self.settings = settings
        self.runner_id = runner_id  # the room: containers carry it, so a runner never touches another room's
        self.instance = instance  # this runner process: its containers carry it, other runners leave them be
        self.runner_name = runner_name
        self._pool: dict[str, StartedPhase] = {}
        self._pool_lock = threading.Lock()
        self._pool_closed = False
        self._refills: list[threading.Thread] = []
        try:
            self.docker = client or docker.from_env(timeout=120)
            self.docker.ping()
        except docker.errors.DockerException as exc:
            raise SandboxError(f"cannot reach the Docker engine: {exc}",
                               hint="start Docker, or mount /var/run/docker.sock into the runner") from exc

    def image_id(self, image: str) -> str:
        try:
            return str(self.docker.images.get(image).id)
        except docker.errors.ImageNotFound as exc:
            raise SandboxError(f"sandbox image {image} is missing", hint="run: make images") from exc

    def start(self, phase: str, job_id: str, *, image: str | None = None,
              limits: dict[str, Any] | None = None, pool: bool = True) -> StartedPhase:
        """Create, check and start a phase's container; it imports its code and waits for the request.

        Starting the release phase while the compute phase runs hides its start-up (mostly imports);
        it is still a fresh container that has seen no data until `run` feeds it. `limits` are the
        job's policy limits (`memory_mb`, `cpus`, `timeout_seconds`, `pids`): they only tighten.
        With `warm_pool` on, a job whose limits are the room's takes the phase's warm container
        (`warm`) when one is ready: created the same way before the job was claimed, never fed.
        `pool=False` always starts a fresh one (the mock run: the warm one is for the real run).
        """
        settings = tightened(self.settings, limits or {})
        image = image or settings.sandbox_image
        if pool and settings == self.settings and image == settings.sandbox_image:
            warm = self._take_warm(phase, job_id)
            if warm is not None:
                return warm
        return self._create(phase, job_id, settings, image)

    def _create(self, phase: str, job_id: str, settings: Settings, image: str) -> StartedPhase:
        config = container_config(settings, image, phase, job_id, self.runner_id, self.instance, self.runner_name)
        try:
            container = self.docker.containers.create(**config)
        except docker.errors.APIError as exc:
            raise IsolationUnavailable(f"the engine refused the sandbox configuration: {exc.explanation}") from exc
        try:
            container.reload()
            applied = read_back(container.attrs, config)
            waivers = check_isolation(applied, self.settings.allow_unenforced)
            sock = self.docker.api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stderr": 1,
                                                                       "stream": 1})
            container.start()
        except BaseException:
            _remove(container)
            raise
        isolation = {**applied, "waived": waivers, "image": container.attrs.get("Image"),
                     "limits": {"memory": settings.job_memory, "cpus": settings.job_cpus,
                                "pids": settings.job_pids, "timeout_seconds": settings.job_timeout_seconds},
                     "warm": False}
        return StartedPhase(self, container, sock._sock, isolation, settings)

    # --- the warm pool: one started, never-fed container per phase, made between jobs ---------------

    def warm(self) -> int:
        """Start the missing warm containers (at most one per phase); how many were started.

        They carry the job label `warm` and no name until a job takes one (`_take_warm` renames it
        `cleanroom-<job>-<phase>`). A failure here is logged by the caller and costs only speed: the
        next job then starts its containers itself, and fails there if the engine refuses them.
        """
        if not self.settings.warm_pool:
            return 0
        started = 0
        for phase in WARM_PHASES:
            with self._pool_lock:
                if phase in self._pool or self._pool_closed:
                    continue
            box = self._create(phase, WARM_JOB, self.settings, self.settings.sandbox_image)
            with self._pool_lock:
                if self._pool_closed or phase in self._pool:
                    box.close()
                    continue
                self._pool[phase] = box
            started += 1
        return started

    def warm_in_background(self) -> threading.Thread:
        def refill() -> None:
            try:
                began = time.monotonic()
                started = self.warm()
                if started:
                    log.info("warm pool: started %d container(s) in %.1f s", started, time.monotonic() - began)
            except Exception as exc:  # noqa: BLE001 - only speed is lost; the next job starts its own
                log.warning("could not refill the warm pool: %s", exc)

        thread = threading.Thread(target=refill, name="warm-pool", daemon=True)
        with self._pool_lock:
            self._refills = [t for t in self._refills if t.is_alive()] + [thread]
        thread.start()
        return thread

    def _take_warm(self, phase: str, job_id: str) -> StartedPhase | None:
        with self._pool_lock:
            box = self._pool.pop(phase, None)
        if box is None:
            return None
        try:
            box.container.reload()
            alive = box.container.status == "running"
            if alive:
                box.container.rename(container_name(job_id, phase))
        except docker.errors.APIError:
            alive = False
        if not alive:  # its process died while waiting (or the engine lost it): start a fresh one
            box.close()
            return None
        box.isolation = {**box.isolation, "warm": True}
        return box

    def drain(self) -> None:
        """Remove the warm containers and stop refilling (the runner is stopping)."""
        with self._pool_lock:
            self._pool_closed = True
            boxes, self._pool = list(self._pool.values()), {}
            refills = list(self._refills)
        for box in boxes:
            box.close()
        for thread in refills:  # a refill under way removes what it started once it sees the pool closed
            thread.join(timeout=60)

    def run_phase(self, phase: str, job_id: str, request: bytes | memoryview, *, image: str | None = None,
                  timeout: float | None = None, max_output: int | None = None,
                  cancelled: Any = None) -> PhaseResult:
        started = time.monotonic()
        result = self.start(phase, job_id, image=image).run(request, timeout=timeout, max_output=max_output,
                                                            cancelled=cancelled)
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
            _kill(c)
            try:
                c.remove(force=True)
                count += 1
            except docker.errors.APIError:
                pass
        return count


class StartedPhase:
    """A running phase container waiting for its request on stdin."""

    def __init__(self, sandbox: Sandbox, container: Any, raw: socket.socket, isolation: dict[str, Any],
                 settings: Settings | None = None) -> None:
        self.sandbox = sandbox
        self.settings = settings or sandbox.settings
        self.container = container
        self.raw = raw
        self.isolation = isolation
        self.closed = False

    def close(self) -> None:
        """Kill and remove the container (also when it was never fed)."""
        if not self.closed:
            self.closed = True
            try:
                self.raw.close()
            except OSError:
                pass
            _remove(self.container)

    def run(self, request: bytes | memoryview, *, timeout: float | None = None, max_output: int | None = None,
            cancelled: Any = None) -> PhaseResult:
        settings = self.settings
        started = time.monotonic()
        try:
            result = _feed_and_collect(self.container, self.raw, request, timeout or settings.job_timeout_seconds,
                                       max_output or settings.job_max_output_bytes, settings.job_log_bytes,
                                       cancelled)
            result.isolation = self.isolation
            result.seconds = round(time.monotonic() - started, 3)
            return result
        finally:
            self.close()


def _feed_and_collect(container: Any, raw: socket.socket, request: bytes | memoryview, timeout: float,
                      max_output: int, log_cap: int, cancelled: Any) -> PhaseResult:
    state = {"timed_out": False, "overflow": False, "done": False}

    def feed() -> None:
        try:
            view = memoryview(request)
            for offset in range(0, len(view), 1 << 16):
                raw.sendall(view[offset:offset + (1 << 16)])
            raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the container exited early; its exit code tells why

    def watchdog() -> None:
        deadline = time.monotonic() + timeout
        while not state["done"]:
            if time.monotonic() > deadline or (cancelled is not None and cancelled()):
                state["timed_out"] = time.monotonic() > deadline
                _shutdown(raw)
                _kill(container)
                return
            time.sleep(0.2)

    writer = threading.Thread(target=feed, daemon=True)
    guard = threading.Thread(target=watchdog, daemon=True)
    writer.start()
    guard.start()
    stdout, stderr = bytearray(), bytearray()
    try:
        for stream, data in _frames(raw):
            if stream == 1:
                if len(stdout) + len(data) > max_output:
                    state["overflow"] = True
                    _shutdown(raw)  # an unread attach stream would block the engine's kill
                    _kill(container)
                    break
                stdout.extend(data)
            elif len(stderr) < log_cap:
                stderr.extend(data[: log_cap - len(stderr)])
    finally:
        state["done"] = True
        try:
            raw.close()
        except OSError:
            pass
    try:
        status = container.wait(timeout=30)
        code = status.get("StatusCode")
    except Exception:  # noqa: BLE001 - an engine that will not answer: kill and report
        _kill(container)
        code = None
    container.reload()
    oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
    return PhaseResult(stdout=bytes(stdout), stderr=bytes(stderr), exit_code=code, oom_killed=oom,
                       timed_out=state["timed_out"], output_overflow=state["overflow"])


def _remove(container: Any) -> None:
    try:
        container.remove(force=True)
    except docker.errors.APIError:
        pass


def _shutdown(raw: socket.socket) -> None:
    try:
        raw.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _kill(container: Any) -> None:
    try:
        container.kill()
    except Exception:  # noqa: BLE001 - APIError, or a read timeout from a busy engine: removal follows
        pass


def _frames(raw: socket.socket):  # type: ignore[no-untyped-def]
    """Demultiplex Docker's attach stream: 8-byte headers (stream, size) then payload."""
    buf = bytearray()

    def read_exact(n: int) -> bytes | None:
        while len(buf) < n:
            try:
                chunk = raw.recv(max(65536, n - len(buf)))
            except OSError:
                return None
            if not chunk:
                return None
            buf.extend(chunk)
        data = bytes(buf[:n])
        del buf[:n]
        return data

    while True:
        header = read_exact(8)
        if header is None:
            return
        stream, size = header[0], struct.unpack(">I", header[4:8])[0]
        payload = read_exact(size)
        if payload is None:
            return
        yield stream, payload
