"""A phase container's attach stream: the request in on stdin, stdout and stderr out, under the limits.

The request is written by one thread while this one demultiplexes Docker's frames (8-byte headers:
stream, size); a watchdog kills the container at the time limit or on cancellation, and output past
the cap stops the read and kills it too (an unread attach stream would block the engine's kill).
Logs (stderr) are kept up to their own cap; nothing is written to disk.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import docker

from cleanroom.runner.phases import CancelCheck, PhaseResult


def feed_and_collect(
    container: Any,
    raw: socket.socket,
    request: bytes | memoryview,
    timeout: float,
    max_output: int,
    log_cap: int,
    cancelled: CancelCheck | None,
) -> PhaseResult:
    """Run one fed phase to its end; how it ended (`PhaseResult`, without isolation and timing)."""
    state = {"timed_out": False, "overflow": False, "done": False}

    def feed() -> None:
        try:
            view = memoryview(request)
            for offset in range(0, len(view), 1 << 16):
                raw.sendall(view[offset : offset + (1 << 16)])
            raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the container exited early; its exit code tells why

    def watchdog() -> None:
        deadline = time.monotonic() + timeout
        while not state["done"]:
            if time.monotonic() > deadline or (cancelled is not None and cancelled()):
                state["timed_out"] = time.monotonic() > deadline
                shutdown(raw)
                kill(container)
                return
            time.sleep(0.2)

    writer = threading.Thread(target=feed, daemon=True)
    guard = threading.Thread(target=watchdog, daemon=True)
    writer.start()
    guard.start()
    stdout, stderr = bytearray(), bytearray()
    try:
        for stream, data in frames(raw):
            if stream == 1:
                if len(stdout) + len(data) > max_output:
                    state["overflow"] = True
                    shutdown(raw)  # an unread attach stream would block the engine's kill
                    kill(container)
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
        kill(container)
        code = None
    container.reload()
    oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
    return PhaseResult(
        stdout=bytes(stdout),
        stderr=bytes(stderr),
        exit_code=code,
        oom_killed=oom,
        timed_out=state["timed_out"],
        output_overflow=state["overflow"],
    )


def remove(container: Any) -> None:
    try:
        container.remove(force=True)
    except docker.errors.APIError:
        pass


def shutdown(raw: socket.socket) -> None:
    try:
        raw.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def kill(container: Any) -> None:
    try:
        container.kill()
    except Exception:  # noqa: BLE001 - APIError, or a read timeout from a busy engine: removal follows
        pass


def frames(raw: socket.socket) -> Iterator[tuple[int, bytes]]:
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
