"""The warm pool: one started, never-fed phase per module, made between jobs, taken whole by one job.

A warm phase is created, checked and read back exactly as a job's own (the same image, controls and
limits, no data); a job whose limits are the room's takes it and it serves that job only. The pool
is refilled after each job ends, never during one (the refill's imports would compete with the job
for CPU), and emptied when the runner stops. A failure to fill it costs only speed: the next job
then starts its own phases, and fails there if the engine refuses them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

log = logging.getLogger("cleanroom.runner")

WARM_PHASES = ("compute", "release")  # the modules a pool keeps one of


class Warm(Protocol):
    def adopt(self, job_id: str) -> bool:
        """Give the phase to a job; False when it died while it waited (it is closed then)."""

    def close(self) -> None: ...


W = TypeVar("W", bound=Warm)


class WarmPool(Generic[W]):
    """At most one warm phase per module. `create(module)` starts one; `enabled` is the operator's switch."""

    def __init__(self, create: Callable[[str], W], *, enabled: bool) -> None:
        self.create = create
        self.enabled = enabled
        self._warm: dict[str, W] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._refills: list[threading.Thread] = []

    def fill(self) -> int:
        """Start the missing warm phases; how many were started."""
        if not self.enabled:
            return 0
        started = 0
        for module in WARM_PHASES:
            with self._lock:
                if module in self._warm or self._closed:
                    continue
            box = self.create(module)
            with self._lock:
                if self._closed or module in self._warm:
                    box.close()
                    continue
                self._warm[module] = box
            started += 1
        return started

    def fill_in_background(self) -> threading.Thread:
        def refill() -> None:
            try:
                began = time.monotonic()
                started = self.fill()
                if started:
                    log.info("warm pool: started %d container(s) in %.1f s", started, time.monotonic() - began)
            except Exception as exc:  # noqa: BLE001 - only speed is lost; the next job starts its own
                log.warning("could not refill the warm pool: %s", exc)

        thread = threading.Thread(target=refill, name="warm-pool", daemon=True)
        with self._lock:
            self._refills = [t for t in self._refills if t.is_alive()] + [thread]
        thread.start()
        return thread

    def take(self, module: str, job_id: str) -> W | None:
        """The module's warm phase, now the job's; None when there is none or it died."""
        with self._lock:
            box = self._warm.pop(module, None)
        if box is None or not box.adopt(job_id):
            return None
        return box

    def drain(self) -> None:
        """Close the warm phases and stop refilling (the runner is stopping)."""
        with self._lock:
            self._closed = True
            boxes, self._warm = list(self._warm.values()), {}
            refills = list(self._refills)
        for box in boxes:
            box.close()
        for thread in refills:  # a refill under way closes what it started once it sees the pool closed
            thread.join(timeout=60)
