"""Resource exhaustion and escaping the phase's lifetime (checklist C).

The limits are the runner's defaults (Settings): 128 pids, 2 GiB memory without swap, 256 MiB
/tmp, 256 open files, no core dumps, the phase's wall-clock timeout, 64 KiB of log.
"""

from __future__ import annotations

import errno
import gc
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.redteam.conftest import (
    REDTEAM_RUNNER_ID,
    containers_of,
    new_job_id,
    preprocess,
    run_compute,
    wait_until,
)

pytestmark = pytest.mark.docker


def test_fork_bomb_meets_the_pids_limit(sandbox: Any, docker_client: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "res-fork",
        """
        children = 0
        try:
            while children < 10_000:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                children += 1
            OBS["stopped"] = {"ok": True, "value": None}
        except OSError as exc:
            OBS["stopped"] = {"ok": False, "errno": exc.errno}
        OBS["children"] = {"ok": True, "value": children}
    """,
    )
    started = time.monotonic()
    out = run_compute(sandbox, plugin)
    assert out.errno("stopped") == errno.EAGAIN
    assert 0 < out.ok("children") < sandbox.settings.job_pids
    assert not out.phase.timed_out and time.monotonic() - started < 45  # the children died with the phase
    assert containers_of(docker_client, out.job_id) == []
    control = preprocess(
        tmp_path,
        "res-fork-control",
        """
        import subprocess
        attempt("four", lambda: [subprocess.run(["true"]).returncode for _ in range(4)])
    """,
    )
    assert run_compute(sandbox, control).ok("four") == [0, 0, 0, 0]


def test_thread_bomb_meets_the_pids_limit(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "res-threads",
        """
        import threading
        threads = []
        try:
            while len(threads) < 100_000:
                t = threading.Thread(target=time.sleep, args=(60,), daemon=True); t.start(); threads.append(t)
            OBS["stopped"] = {"ok": True, "value": None}
        except RuntimeError as exc:
            OBS["stopped"] = {"ok": False, "errno": None, "message": str(exc)}
        OBS["threads"] = {"ok": True, "value": len(threads)}
    """,
    )
    out = run_compute(sandbox, plugin)
    assert "can't start new thread" in out.entry("stopped")["message"]
    assert 0 < out.ok("threads") < sandbox.settings.job_pids
    assert not out.phase.timed_out
    control = preprocess(
        tmp_path,
        "res-threads-control",
        """
        import threading
        ts = [threading.Thread(target=time.sleep, args=(0.1,)) for _ in range(8)]
        [t.start() for t in ts]; [t.join() for t in ts]
        attempt("eight", lambda: len(ts))
    """,
    )
    assert run_compute(sandbox, control).ok("eight") == 8


@pytest.mark.slow
def test_memory_bomb_is_oom_killed(sandbox: Any, docker_client: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "res-memory",
        """
        hoard = []
        while True:
            hoard.append(b"x" * (64 * 2**20))
    """,
    )
    out = run_compute(sandbox, plugin)
    assert out.phase.oom_killed is True
    assert out.phase.exit_code == 137 and out.result is None
    assert containers_of(docker_client, out.job_id) == []
    control = preprocess(
        tmp_path,
        "res-memory-control",
        """
        attempt("hundred_mb", lambda: len(b"x" * (100 * 2**20)))
    """,
    )
    assert run_compute(sandbox, control).ok("hundred_mb") == 100 * 2**20


def test_filling_tmp_stops_at_the_tmpfs_cap(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "res-tmpfs",
        """
        written, block = 0, b"y" * 2**20
        try:
            with open("/tmp/fill", "wb") as fh:
                while written < 8 * 2**30:
                    fh.write(block); fh.flush(); written += len(block)
            OBS["stopped"] = {"ok": True, "value": None}
        except OSError as exc:
            OBS["stopped"] = {"ok": False, "errno": exc.errno}
        OBS["written"] = {"ok": True, "value": written}
        os.remove("/tmp/fill")
    """,
    )
    out = run_compute(sandbox, plugin)
    assert out.errno("stopped") in (errno.ENOSPC, errno.EFBIG)
    assert out.ok("written") <= sandbox.settings.job_tmpfs_bytes
    control = preprocess(
        tmp_path,
        "res-tmpfs-control",
        """
        attempt("one_mb", lambda: open("/tmp/one", "wb").write(b"z" * 2**20))
    """,
    )
    assert run_compute(sandbox, control).ok("one_mb") == 2**20


def test_cpu_spin_is_killed_at_the_wall_clock_limit(sandbox: Any, docker_client: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "res-spin",
        """
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            pass
    """,
    )
    started = time.monotonic()
    out = run_compute(sandbox, plugin, timeout=4)
    assert out.phase.timed_out is True and out.result is None
    assert time.monotonic() - started < 4 + 20
    assert containers_of(docker_client, out.job_id) == []
    control = preprocess(
        tmp_path,
        "res-spin-control",
        """
        attempt("short_spin", lambda: sum(range(10**6)))
    """,
    )
    assert run_compute(sandbox, control, timeout=30).ok("short_spin") == sum(range(10**6))


def test_background_processes_do_not_outlive_the_phase(sandbox: Any, docker_client: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "res-daemon",
        """
        import signal
        if os.fork() == 0:            # double fork + setsid: a daemon that ignores SIGTERM and SIGHUP
            os.setsid()
            if os.fork() == 0:
                signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.signal(signal.SIGHUP, signal.SIG_IGN)
                time.sleep(600)
            os._exit(0)
        time.sleep(0.5)
        attempt("processes", lambda: len([p for p in os.listdir("/proc") if p.isdigit()]))
    """,
    )
    out = run_compute(sandbox, plugin)
    assert out.ok("processes") >= 3  # init, the phase, the daemon
    assert not out.phase.timed_out and out.phase.seconds < 30
    assert containers_of(docker_client, out.job_id) == []

    # control: while a phase runs, the same query does see its container
    sleeper = preprocess(
        tmp_path,
        "res-daemon-control",
        """
        time.sleep(4)
    """,
    )
    job_id, seen = new_job_id(), []
    thread = threading.Thread(target=lambda: run_compute(sandbox, sleeper, job_id=job_id))
    thread.start()
    assert wait_until(lambda: bool(seen.append(len(containers_of(docker_client, job_id))) or seen[-1]), 15)
    thread.join(timeout=60)
    assert containers_of(docker_client, job_id) == []


def test_runaway_log_output_is_capped(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "res-runaway",
        """
        line = "raw row " + str(df["secret"].iloc[0]) + " " + "x" * 1000
        for _ in range(50_000):      # ~50 MB on fd 1, which the compute phase points at the log
            print(line)
        sys.stderr.write(line * 1000)
        print("CONTROL-LAST-LINE", file=sys.stderr)
    """,
    )
    out = run_compute(sandbox, plugin)
    assert out.result and out.result["ok"]
    assert len(out.phase.stderr) <= sandbox.settings.job_log_bytes
    assert "raw row" in out.stderr  # control: the log does carry what the plugin printed, up to the cap
    assert "CONTROL-LAST-LINE" not in out.stderr


FLOOD = """
    def protocol_fd():
        taken = {os.readlink(f"/proc/self/fd/{n}") for n in (0, 2)}
        for fd in range(3, 64):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("pipe:") and target not in taken:
                return fd
    fd, junk = protocol_fd(), b"\\0" * 2**20
    for _ in range(256):
        os.write(fd, junk)
"""


def test_flooding_the_response_stream_is_cut_off_promptly(
    docker_client: Any, sandbox_image: str, tmp_path: Path
) -> None:
    import docker as docker_sdk

    from cleanroom.runner.launcher import Sandbox
    from cleanroom.settings import Settings

    # the engine client's timeout bounds the hang; the phase's own timeout is out of the way
    impatient = Sandbox(
        Settings(sandbox_image=sandbox_image, job_timeout_seconds=300),
        client=docker_sdk.from_env(timeout=8),
        runner_id=REDTEAM_RUNNER_ID,
    )
    plugin = preprocess(tmp_path, "res-flood", FLOOD)

    def flood_once() -> tuple[str | None, Any, float]:
        job_id, started, error, out = new_job_id(), time.monotonic(), None, None
        try:
            out = run_compute(impatient, plugin, max_output=8 * 2**20, timeout=300, job_id=job_id)
        except Exception as exc:  # noqa: BLE001 - the launcher's own failure is the finding
            error = f"{type(exc).__name__}: {exc}"
        elapsed = time.monotonic() - started
        gc.collect()  # drops the traceback's frames and with them the attach socket: the engine unblocks
        for container in containers_of(docker_client, job_id):
            try:
                container.remove(force=True)
            except docker_sdk.errors.APIError:
                pass  # the launcher's own removal is in progress or done
        wait_until(lambda: containers_of(docker_client, job_id) == [], 60)
        return error, out, elapsed

    try:
        for _ in range(4):  # the stall depends on timing: every attempt must end promptly
            error, out, elapsed = flood_once()
            assert error is None, error
            assert out.phase.output_overflow is True and out.result is None
            assert len(out.phase.stdout) <= 8 * 2**20
            assert elapsed < 30
    finally:
        impatient.docker.close()


def test_output_within_the_cap_is_collected_and_oversized_frames_are_refused(sandbox: Any, tmp_path: Path) -> None:
    big = preprocess(
        tmp_path,
        "res-big-frame",
        """
        df = df.assign(padding=[os.urandom(2**19).hex() for _ in range(len(df))])  # ~30 MB of noise
    """,
    )
    out = run_compute(sandbox, big, max_output=64 * 2**20, max_output_bytes=4 * 2**20)
    assert out.result is not None and out.result["ok"] is False
    assert "over the limit" in out.result["error"] and out.frame is None
    control = preprocess(tmp_path, "res-flood-control", "pass\n")
    second = run_compute(sandbox, control, max_output=8 * 2**20)
    assert second.phase.output_overflow is False and second.result and second.result["ok"]


def test_file_descriptor_exhaustion_meets_nofile(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "res-fds",
        """
        held = []
        try:
            while len(held) < 10**6:
                held.append(os.open("/dev/null", os.O_RDONLY))
            OBS["stopped"] = {"ok": True, "value": None}
        except OSError as exc:
            OBS["stopped"] = {"ok": False, "errno": exc.errno}
        OBS["opened"] = {"ok": True, "value": len(held)}
        for fd in held:
            os.close(fd)
        attempt("control_after", lambda: os.close(os.open("/dev/null", os.O_RDONLY)) or "ok")
    """,
    )
    out = run_compute(sandbox, plugin)
    assert out.errno("stopped") == errno.EMFILE
    assert out.ok("opened") < 256
    assert out.ok("control_after") == "ok"


def test_crash_leaves_no_core_dump(sandbox: Any, docker_client: Any, tmp_path: Path) -> None:
    limits = preprocess(
        tmp_path,
        "res-core-limit",
        """
        import resource
        attempt("core_limit", lambda: list(resource.getrlimit(resource.RLIMIT_CORE)))
        attempt("raise_core", lambda: resource.setrlimit(resource.RLIMIT_CORE, (2**30, 2**30)))
    """,
    )
    first = run_compute(sandbox, limits)
    assert first.ok("core_limit") == [0, 0]
    assert first.obs["raise_core"]["ok"] is False  # the hard limit cannot be raised
    crash = preprocess(
        tmp_path,
        "res-core-abort",
        """
        os.chdir("/tmp")
        os.abort()
    """,
    )
    out = run_compute(sandbox, crash)
    assert out.phase.exit_code == 134 and out.result is None  # SIGABRT, reported as a crash
    assert b"core dumped" not in out.phase.stderr
    assert containers_of(docker_client, out.job_id) == []
