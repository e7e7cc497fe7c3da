"""The seam under the sandbox: what the runner needs from whatever runs a phase.

A phase is one run of `python -I -m cleanroom.sandbox.<module>` that reads one wire message
(`cleanroom.sandbox.wire`) on stdin and writes one on stdout, logs on stderr. The runner's job
(`cleanroom.runner.execute`) talks only to a `PhaseRunner`: it starts a phase (which may import its
code before any data exists), feeds it the request once, and gets a `PhaseResult` back. Production
has one implementation, Docker containers (`cleanroom.runner.launcher.Sandbox`); the tests have a
plain-subprocess fake (tests/fakes), which no setting can select.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from cleanroom.errors import PhaseFailed, PhaseFailure
from cleanroom.sandbox import wire

CancelCheck = Callable[[], bool]  # asked while a phase runs: True stops it (the job was cancelled)


class Phase(StrEnum):
    """What a phase is for. The mock run and sample-and-aggregate blocks run the compute module, each in
    a fresh phase of its own (never a warm one: that is kept for the job's real compute phase)."""

    COMPUTE = "compute"  # the approved plugins on the real inputs
    RELEASE = "release"  # trusted checks on the joined frame; imports no plugin code
    MOCK = "mock"  # the same pipeline on the inputs' public mock data
    BLOCK = "block"  # one block of a sample-and-aggregate job

    @property
    def module(self) -> str:
        """The sandbox module it runs (`cleanroom.sandbox.<module>`)."""
        return "release" if self is Phase.RELEASE else "compute"


@dataclass
class PhaseResult:
    """How a phase ended: its exit, the limits it hit, its output message and its logs."""

    stdout: bytes
    stderr: bytes
    exit_code: int | None
    oom_killed: bool = False
    timed_out: bool = False
    output_overflow: bool = False
    seconds: float = 0.0
    isolation: dict[str, Any] = field(default_factory=dict)  # the controls read back (the receipt records them)

    @property
    def failure(self) -> PhaseFailure | None:
        """The first limit the phase hit, or a crash; None when it exited 0 (its message may still be bad)."""
        for hit, reason in (
            (self.timed_out, PhaseFailure.TIMEOUT),
            (self.oom_killed, PhaseFailure.OUT_OF_MEMORY),
            (self.output_overflow, PhaseFailure.OUTPUT_TOO_LARGE),
            (self.exit_code != 0, PhaseFailure.CRASH),
        ):
            if hit:
                return reason
        return None

    @property
    def logs(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    def message(self, phase: str, max_bytes: int) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The phase's answer (`result.json` and its files); `PhaseFailed(protocol_error)` when it is not one."""
        try:
            return wire.read_message(io.BytesIO(self.stdout), "result.json", max_bytes)
        except wire.WireError as exc:
            raise PhaseFailed(
                phase, PhaseFailure.PROTOCOL, f"the {phase} phase answered an invalid message: {exc}"
            ) from exc


class StartedPhase(Protocol):
    """A started phase waiting for its one request; `close` removes it whether or not it ran."""

    isolation: dict[str, Any]

    @property
    def timeout_seconds(self) -> float:
        """Its time limit: the room's, tightened by the job's policy."""

    def run(
        self,
        request: bytes | memoryview,
        *,
        timeout: float | None = None,
        max_output: int | None = None,
        cancelled: CancelCheck | None = None,
    ) -> PhaseResult:
        """Feed the request, wait for the end (the limits: `timeout` seconds, `max_output` bytes of stdout,
        or the started phase's own), close, and say how it went. Raises `SandboxError` only when it could
        not run at all."""

    def close(self) -> None: ...


class PhaseRunner(Protocol):
    """Starts phases. `limits` are a job's policy limits (`memory_mb`, `cpus`, `pids`, `timeout_seconds`):
    they can only tighten the room's. Raises `SandboxError` (or `IsolationUnavailable`) when it cannot."""

    def start(self, phase: Phase, job_id: str, *, limits: Mapping[str, Any] | None = None) -> StartedPhase: ...


def run_phase(
    runner: PhaseRunner,
    phase: Phase,
    job_id: str,
    request: bytes | memoryview,
    *,
    limits: Mapping[str, Any] | None = None,
    cancelled: CancelCheck | None = None,
) -> PhaseResult:
    """Start a phase and run it at once (no start-up to hide); `seconds` counts the start too."""
    started = time.monotonic()
    result = runner.start(phase, job_id, limits=limits).run(request, cancelled=cancelled)
    result.seconds = round(time.monotonic() - started, 3)
    return result
