"""Pieces shared by the benchmarks: the machine, memory samplers, a room in child processes, tables.

Run as a script it is the benchmark's runner process:

    python benchmarks/_harness.py runner      # settings from CLEANROOM_* like `cleanroom runner`

It is `cleanroom runner` except that it never removes sandbox containers it did not start
(`RunnerService.start` removes every container labelled `cleanroom.job` on the engine, which would
kill the jobs of any other runner or test using the same Docker engine).
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# --- the machine -------------------------------------------------------------------------------------


def load_images_env() -> dict[str, str]:
    """containers/.build/images.env (written by `make images`), without overriding the environment."""
    out: dict[str, str] = {}
    path = REPO / "containers" / ".build" / "images.env"
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() and value.strip() and not key.startswith("#"):
                out[key.strip()] = value.strip()
    return {k: os.environ.get(k, v) for k, v in out.items()}


def sandbox_image() -> str:
    return os.environ.get("CLEANROOM_SANDBOX_IMAGE") or load_images_env().get(
        "CLEANROOM_SANDBOX_IMAGE", "cleanroom-sandbox:latest"
    )


def machine_info(docker_client: Any = None) -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}
    try:
        meminfo = Path("/proc/meminfo").read_text()
        info["memory"] = int(re.search(r"MemTotal:\s+(\d+) kB", meminfo).group(1)) * 1024  # type: ignore[union-attr]
    except (OSError, AttributeError):
        info["memory"] = None
    try:
        model = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        info["cpu_model"] = model.group(1).strip() if model else None
    except OSError:
        info["cpu_model"] = None
    if docker_client is not None:
        d = docker_client.info()
        info.update(
            docker_server=d.get("ServerVersion"),
            docker_cpus=d.get("NCPU"),
            docker_memory=d.get("MemTotal"),
            storage_driver=d.get("Driver"),
            cgroup=f"v{d.get('CgroupVersion', '1')} ({d.get('CgroupDriver')})",
            docker_runtime=d.get("DefaultRuntime"),
        )
    return info


def human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return (
                f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}" if unit == "GiB" else f"{n:.0f} {unit}"
            )
        n /= 1024
    return str(n)


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A plain text table; `align` is one letter per column (l/r), right by default."""
    cells = [header] + rows
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    align = align or "l" + "r" * (len(header) - 1)

    def line(r: list[str]) -> str:
        return " | ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align, strict=True))

    out = [line(header), "-+-".join("-" * w for w in widths)] + [line(r) for r in rows]
    return "\n".join(out)


# --- memory samplers ---------------------------------------------------------------------------------


def proc_status(pid: int, key: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM) in bytes."""
    try:
        found = re.search(rf"{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


class RssSampler(threading.Thread):
    """Samples a process's resident memory; `label()` returns the current label (per-label peaks)."""

    def __init__(self, pid: int, label: Any = None, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.label, self.interval = pid, label, interval
        self.peak = 0
        self.by_label: dict[str, int] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = proc_status(self.pid, "VmRSS")
            if rss is None:
                return
            self.peak = max(self.peak, rss)
            if self.label is not None:
                key = str(self.label())
                self.by_label[key] = max(self.by_label.get(key, 0), rss)
            time.sleep(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


def cgroup_peak_files(container_id: str) -> list[Path]:
    """Where the engine keeps a container's peak memory, cgroup v1 or v2, cgroupfs or systemd."""
    root = Path("/sys/fs/cgroup")
    return [
        root / "memory" / "docker" / container_id / "memory.max_usage_in_bytes",  # v1 cgroupfs
        root / "memory" / "system.slice" / f"docker-{container_id}.scope" / "memory.max_usage_in_bytes",
        root / "system.slice" / f"docker-{container_id}.scope" / "memory.peak",  # v2 systemd
        root / "docker" / container_id / "memory.peak",
    ]  # v2 cgroupfs


def _cpu_seconds(container_id: str) -> float | None:
    """CPU time a container has used so far, from its cgroup (v1 or v2, cgroupfs or systemd)."""
    root = Path("/sys/fs/cgroup")
    for path, scale in (
        (root / "cpuacct" / "docker" / container_id / "cpuacct.usage", 1e-9),
        (root / "cpuacct" / "system.slice" / f"docker-{container_id}.scope" / "cpuacct.usage", 1e-9),
        (root / "docker" / container_id / "cpu.stat", 1e-6),
        (root / "system.slice" / f"docker-{container_id}.scope" / "cpu.stat", 1e-6),
    ):
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.name == "cpu.stat":
            text = next((line.split()[1] for line in text.splitlines() if line.startswith("usage_usec")), "")
        try:
            return int(text.strip()) * scale
        except ValueError:
            continue
    return None


def wait_for_warm_pool(docker_client: Any, runner_label: str, phases: int = 2, timeout: float = 90) -> float:
    """Wait until the runner's warm pool holds `phases` containers that have gone idle (done importing,
    waiting for a request): the refill after a job must not run alongside the next measurement.
    Returns the seconds waited; raises after `timeout`.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        warm = docker_client.containers.list(
            filters={"label": ["cleanroom.job=warm", runner_label], "status": "running"}
        )
        if len(warm) >= phases:
            before = [_cpu_seconds(c.id) for c in warm]
            time.sleep(0.5)
            after = [_cpu_seconds(c.id) for c in warm]
            if None in before or None in after:  # no cgroup files here: give the imports time instead
                time.sleep(8)
                return time.monotonic() - start
            if all(b - a < 0.02 for a, b in zip(before, after, strict=True)):  # type: ignore[operator]
                return time.monotonic() - start
        else:
            time.sleep(0.2)
    seen = [
        (c.name, c.status, c.labels.get("cleanroom.runner"))
        for c in docker_client.containers.list(all=True, filters={"label": "cleanroom.job=warm"})
    ]
    raise RuntimeError(
        f"the runner's warm pool ({runner_label}) did not fill within {timeout:.0f} s; warm "
        f"containers on the engine: {seen}"
    )


def job_containers(docker_client: Any, label: str, name: str | None = None) -> list[Any]:
    """Containers carrying `label` plus those whose name starts with `name` (none twice)."""
    found = {c.id: c for c in docker_client.containers.list(all=True, filters={"label": label})}
    if name:
        for c in docker_client.containers.list(all=True, filters={"name": f"^/?{name}"}):
            found.setdefault(c.id, c)
    return list(found.values())


class ContainerMemorySampler(threading.Thread):
    """Peak memory of a job's containers (carrying `label`, or named `name`...: the runner's warm-pool
    containers take the job's name when a job takes them), read from their memory cgroup while they run.

    The runner removes each sandbox container right after its phase, so this polls: it lists the
    labelled containers every `list_every` seconds and re-reads each one's peak-usage file until the
    cgroup disappears. Where the cgroup file is not visible it falls back to `docker stats`.
    """

    def __init__(
        self, docker_client: Any, label: str, interval: float = 0.05, list_every: float = 0.2, name: str | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.docker, self.label, self.job_name = docker_client, label, name
        self.interval, self.list_every = interval, list_every
        self.peaks: dict[str, int] = {}  # container id -> peak bytes
        self.phases: dict[str, str] = {}  # container id -> phase label
        self.seen_at: dict[str, float] = {}
        self.source: dict[str, str] = {}
        self._files: dict[str, Path | None] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        last_list = 0.0
        while not self._halt.is_set():
            now = time.monotonic()
            if now - last_list >= self.list_every:
                last_list = now
                try:
                    for c in job_containers(self.docker, self.label, self.job_name):
                        if c.id not in self._files and c.id not in self.phases:
                            self.phases[c.id] = c.labels.get("cleanroom.phase", "?")
                            self.seen_at[c.id] = now
                            self._files[c.id] = None
                except Exception:  # noqa: BLE001 - the engine being busy must not stop the sampling
                    pass
            for cid, path in list(self._files.items()):
                if path is None:  # the cgroup appears when the container starts, not when it is created
                    path = next((p for p in cgroup_peak_files(cid) if p.exists()), None)
                    if path is None:
                        if now - self.seen_at[cid] > 2.0:
                            self._stats(cid)
                        continue
                    self._files[cid] = path
                try:
                    value = int(path.read_text())
                except (OSError, ValueError):
                    self._files.pop(cid)  # the container is gone: its last reading is its peak
                    continue
                self.peaks[cid] = max(self.peaks.get(cid, 0), value)
                self.source[cid] = "cgroup"
            time.sleep(self.interval)

    def _stats(self, cid: str) -> None:
        try:
            stats = self.docker.api.stats(cid, stream=False)
        except Exception:  # noqa: BLE001 - gone
            self._files.pop(cid, None)
            return
        mem = stats.get("memory_stats") or {}
        value = mem.get("max_usage") or mem.get("usage") or 0
        if value:
            self.peaks[cid] = max(self.peaks.get(cid, 0), int(value))
            self.source[cid] = "docker stats"

    def stop(self) -> dict[str, int]:
        """Peak bytes per phase label (the largest container of each phase)."""
        self._halt.set()
        self.join()
        out: dict[str, int] = {}
        for cid, peak in self.peaks.items():
            phase = self.phases.get(cid, "?")
            out[phase] = max(out.get(phase, 0), peak)
        return out


# --- a room in child processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without CLEANROOM_* (a developer's profile must not leak in), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEANROOM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra)
    return env


class Services:
    """`cleanroom serve` and the benchmark runner as child processes over a temporary directory."""

    def __init__(
        self,
        workdir: Path,
        *,
        runner_env: dict[str, str],
        python: str = sys.executable,
        runner_prefix: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data = workdir / "api-data"
        data.mkdir(parents=True, exist_ok=True)
        self.token_file = data / "runner-token"
        self.api_log = open(workdir / "api.log", "wb")  # noqa: SIM115 - closed in stop()
        self.runner_log = open(workdir / "runner.log", "wb")  # noqa: SIM115
        self.api = subprocess.Popen(
            [python, "-c", "from cleanroom.cli import main; main()", "serve"],
            env=clean_env(
                CLEANROOM_DATA_DIR=str(data),
                CLEANROOM_PORT=str(self.port),
                CLEANROOM_RUNNER_TOKEN_FILE=str(self.token_file),
            ),
            stdout=self.api_log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        self.admin_token = self._wait_for_token()
        self.runner: subprocess.Popen[bytes] | None = None
        self.runner_env = clean_env(
            CLEANROOM_URL=self.url,
            CLEANROOM_TOKEN_FILE=str(self.token_file),
            CLEANROOM_RUNNER_HOME=str(workdir / "runner-home"),
            CLEANROOM_SANDBOX_IMAGE=sandbox_image(),
            **runner_env,
        )
        self.runner = subprocess.Popen(
            [*(runner_prefix or [python]), str(Path(__file__).resolve()), "runner"],
            env=self.runner_env,
            stdout=self.runner_log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )

    def _wait_for_token(self) -> str:
        import httpx

        deadline = time.time() + 60
        log = self.workdir / "api.log"
        token = None
        while time.time() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError(f"the API exited:\n{log.read_text()[-2000:]}")
            found = re.search(r"bootstrap admin token \(shown once\): (\S+)", log.read_text())
            token = token or (found.group(1) if found else None)
            if token and self.token_file.exists():
                try:
                    if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                        return token
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("the API did not start in 60 s")

    def wait_ready(self, admin: Any, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while not admin.room().get("ready"):
            if self.runner is not None and self.runner.poll() is not None:
                raise RuntimeError("the runner exited:\n" + (self.workdir / "runner.log").read_text()[-3000:])
            if time.time() > deadline:
                raise RuntimeError("the runner did not register the room key")
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in (self.runner, self.api):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in (self.runner, self.api):
            if proc is None:
                continue
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.api_log.close()
        self.runner_log.close()


# --- the runner child ----------------------------------------------------------------------------------


def _runner_main() -> int:
    from cleanroom.runner.launcher import Sandbox
    from cleanroom.runner.service import RunnerService
    from cleanroom.settings import Settings

    class OwnContainersOnly(Sandbox):
        def remove_orphans(self, live: object = None) -> int:  # other runners' and tests' are not ours
            return 0

    settings = Settings.from_env()
    service = RunnerService(settings, sandbox=OwnContainersOnly(settings))
    service.sandbox.runner_id = service.runner_id  # its containers carry the runner's label, as in production
    signal.signal(signal.SIGTERM, lambda *_: service.stop.set())
    signal.signal(signal.SIGINT, lambda *_: service.stop.set())
    service.run()
    print(json.dumps({"peak_rss": proc_status(os.getpid(), "VmHWM")}), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["runner"]:
        sys.exit(_runner_main())
    print(__doc__, file=sys.stderr)
    sys.exit(2)
