"""A `PhaseRunner` (`cleanroom.runner.phases`) that runs phases as plain subprocesses, with injected faults.

`python -I -m cleanroom.sandbox.compute` (or `release`) in a fresh process per phase, the wire message on
its stdin, the answer on its stdout, logs on stderr: the runner's side of the protocol is exercised for
real, in seconds, without Docker. It isolates NOTHING (no namespaces, no seccomp, no limits but time and
output), so it lives under tests/ only: no setting of the runner can select it, and the runner takes its
`PhaseRunner` by constructor injection.

Faults are injected per phase (`Fault`). Each one runs a real process that misbehaves in that way and is
handled by the same code paths as a well-behaved one (the time limit and cancellation by the watchdog,
the output cap by the reader); only `OOM` needs the fake's word, as the kernel's OOM killer is a cgroup's
and a plain process has none: the process kills itself with SIGKILL and the result says `oom_killed`, as
Docker's `State.OOMKilled` would.
"""

from __future__ import annotations

import enum
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from typing import IO, Any

from cleanroom.errors import SandboxError
from cleanroom.runner.phases import CancelCheck, Phase, PhaseResult
from cleanroom.settings import Settings


class Fault(enum.Enum):
    HANG = "hang"  # reads the request, then never answers: the time limit or a cancellation ends it
    OOM = "oom"  # killed by SIGKILL after reading the request, reported as the OOM killer's
    GARBAGE = "garbage"  # exits 0 after writing bytes that are not a wire message
    CRASH = "crash"  # a message on stderr, exit code 1, no answer
    FLOOD = "flood"  # writes past any output cap
    NO_START = "no_start"  # the phase cannot be started at all (an engine that refuses it)


_MISBEHAVE = {
    Fault.HANG: "import sys, time; sys.stdin.buffer.read(); print('waiting', file=sys.stderr, flush=True); "
    "time.sleep(600)",
    Fault.OOM: "import os, signal, sys; sys.stdin.buffer.read(); os.kill(os.getpid(), signal.SIGKILL)",
    Fault.GARBAGE: "import sys; sys.stdin.buffer.read(); sys.stdout.buffer.write(b'not a wire message')",
    Fault.CRASH: "import sys; sys.stdin.buffer.read(); raise SystemExit('Traceback: boom in the phase') ",
    Fault.FLOOD: "import sys; sys.stdin.buffer.read(); w = sys.stdout.buffer.write\nwhile True: w(b'x' * 65536)",
}


class SubprocessPhase:
    """One started phase: a process that has imported its module and waits for its request."""

    def __init__(
        self, owner: SubprocessPhases, phase: Phase, job_id: str, argv: list[str], timeout_seconds: float
    ) -> None:
        self.owner, self.phase, self.job_id = owner, phase, job_id
        self._timeout = timeout_seconds
        self.isolation: dict[str, Any] = {"fake": "subprocess", "warm": False, "waived": []}
        self.closed = False
        self._home = tempfile.TemporaryDirectory(prefix="fake-phase-")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self._home.name,
            env={"HOME": self._home.name, "TMPDIR": self._home.name},
            start_new_session=True,
        )

    @property
    def timeout_seconds(self) -> float:
        return self._timeout

    def run(
        self,
        request: bytes | memoryview,
        *,
        timeout: float | None = None,
        max_output: int | None = None,
        cancelled: CancelCheck | None = None,
    ) -> PhaseResult:
        if self.closed:
            raise SandboxError("the phase was closed before it ran")
        started = time.monotonic()
        cap = max_output or self.owner.settings.job_max_output_bytes
        stdout, stderr = bytearray(), bytearray()
        state = {"overflow": False, "timed_out": False}
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr

        def feed(pipe: IO[bytes]) -> None:
            try:
                pipe.write(request)
                pipe.close()
            except OSError:
                pass  # it exited early; its exit code tells why

        def read_out(pipe: IO[bytes]) -> None:
            while chunk := pipe.read1(1 << 16):  # type: ignore[attr-defined]
                if len(stdout) + len(chunk) > cap:
                    state["overflow"] = True
                    self._kill()
                    return
                stdout.extend(chunk)

        def read_err(pipe: IO[bytes]) -> None:
            while chunk := pipe.read1(1 << 16):  # type: ignore[attr-defined]
                stderr.extend(chunk[: max(0, self.owner.settings.job_log_bytes - len(stderr))])

        threads = [
            threading.Thread(target=f, args=(p,), daemon=True)
            for f, p in ((feed, self.proc.stdin), (read_out, self.proc.stdout), (read_err, self.proc.stderr))
        ]
        for t in threads:
            t.start()
        self.owner.fed[self.phase].set()
        deadline, asked = started + (timeout or self._timeout), 0.0
        try:
            while self.proc.poll() is None:
                now = time.monotonic()
                if now > deadline:
                    state["timed_out"] = True
                    self._kill()
                elif cancelled is not None and now - asked > 0.2:  # as the Docker watchdog: 5 asks a second
                    asked = now
                    if cancelled():
                        self._kill()
                time.sleep(0.02)
            for t in threads:
                t.join(timeout=10)
        finally:
            self.close()
        code = self.proc.returncode
        oom = self.owner.faults.get(self.phase) is Fault.OOM and code == -signal.SIGKILL
        return PhaseResult(
            stdout=bytes(stdout),
            stderr=bytes(stderr),
            exit_code=code,
            oom_killed=oom,
            timed_out=state["timed_out"],
            output_overflow=state["overflow"],
            seconds=round(time.monotonic() - started, 3),
            isolation=self.isolation,
        )

    def _kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Kill the process if it still runs, reap it, remove its home (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._kill()
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        self._home.cleanup()


class SubprocessPhases:
    """Starts each phase as a subprocess of this interpreter; `faults` make a phase misbehave."""

    def __init__(
        self,
        settings: Settings,
        faults: Mapping[Phase, Fault] | None = None,
        *,
        timeout_seconds: float | None = None,
        python: str = sys.executable,
    ) -> None:
        self.settings = settings
        self.faults = dict(faults or {})
        self.timeout_seconds = timeout_seconds
        self.python = python
        self.started: list[SubprocessPhase] = []
        self.fed = {phase: threading.Event() for phase in Phase}  # set when a phase got its request

    def start(self, phase: Phase, job_id: str, *, limits: Mapping[str, Any] | None = None) -> SubprocessPhase:
        phase = Phase(phase)
        fault = self.faults.get(phase)
        if fault is Fault.NO_START:
            raise SandboxError(f"the fake refused to start the {phase} phase")
        argv = (
            [self.python, "-I", "-c", _MISBEHAVE[fault]]
            if fault
            else [self.python, "-I", "-m", f"cleanroom.sandbox.{phase.module}"]
        )
        timeout = self.timeout_seconds or float(self.settings.job_timeout_seconds)
        if limits and limits.get("timeout_seconds"):
            timeout = min(timeout, float(limits["timeout_seconds"]))
        box = SubprocessPhase(self, phase, job_id, argv, timeout)
        self.started.append(box)
        return box

    def phases_of(self, job_id: str) -> list[Phase]:
        return [box.phase for box in self.started if box.job_id == job_id]

    def all_closed(self) -> bool:
        """Every phase started is closed and its process reaped (nothing left running)."""
        return all(box.closed and box.proc.returncode is not None for box in self.started)
