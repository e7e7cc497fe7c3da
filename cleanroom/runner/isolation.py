"""The isolation baseline of a sandbox container, and its read-back: reviewable on its own.

`container_config` is every control a phase container gets; `read_back` is what the engine reports it
applied, control by control; `check_isolation` fails closed unless each one is enforced or waived by
the operator (audited). `tightened` applies a job's policy limits, which can only lower the room's.

Seccomp: the runner passes its own profile, `seccomp.json` in this package (package data), as
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
import json
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

from docker.types import LogConfig, Ulimit

from cleanroom.crypto import digest
from cleanroom.errors import IsolationUnavailable
from cleanroom.settings import Settings

LABEL = "cleanroom.job"
RUNNER_LABEL = "cleanroom.runner"  # the room (its key's fingerprint): shared by every runner of the room
INSTANCE_LABEL = "cleanroom.instance"  # the runner process that started the container (random per process)
NAME_LABEL = "cleanroom.runner-name"  # that runner's name (CLEANROOM_RUNNER_NAME), for the operator
WARM_JOB = "warm"  # the job label of a warm-pool container until a job takes it
CONTROLS = (
    "network",
    "read_only",
    "user",
    "cap_drop",
    "no_new_privileges",
    "seccomp",
    "pids",
    "memory",
    "swap",
    "cpu",
    "tmpfs",
    "ipc",
    "mounts",
    "privileged",
    "runtime",
)
SECCOMP_FILE = "seccomp.json"  # package data of cleanroom.runner (pyproject.toml)


@functools.cache
def _seccomp() -> tuple[str, Any]:
    """Our seccomp profile, read once: (compact JSON text for the engine, the parsed profile)."""
    try:
        profile = json.loads(resources.files(__name__.rpartition(".")[0]).joinpath(SECCOMP_FILE).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise IsolationUnavailable(
            f"cannot load the sandbox seccomp profile: {exc}",
            hint="reinstall cleanroom: cleanroom/runner/seccomp.json ships with it",
        ) from exc
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
    profiles = [s[len("seccomp") + 1 :] for s in sec if s.startswith(("seccomp=", "seccomp:"))]
    ours = bool(profiles) and all(_is_our_seccomp(p) for p in profiles)
    return ours, ("sha256:" + digest(profiles[-1].encode())) if profiles else None


def memory_bytes(text: str) -> int:
    """`512m`, `2g`, `1024` (bytes) as bytes."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = text.strip().lower()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def container_config(
    settings: Settings,
    image: str,
    phase: str,
    job_id: str,
    runner_id: str = "",
    instance: str = "",
    runner_name: str = "",
) -> dict[str, Any]:
    """The docker-py arguments of a sandbox container: the isolation baseline in one place."""
    memory = memory_bytes(settings.job_memory)
    config: dict[str, Any] = dict(
        image=image,
        command=["python", "-I", "-m", f"cleanroom.sandbox.{phase}"],
        stdin_open=True,
        tty=False,
        detach=False,  # detach=False makes docker-py set StdinOnce
        user="65534:65534",
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true", "seccomp=" + seccomp_profile()],
        pids_limit=max(16, int(settings.job_pids)),
        mem_limit=memory,
        memswap_limit=memory,
        nano_cpus=max(int(settings.job_cpus * 1e9), 100_000_000),
        ipc_mode="none",
        tmpfs={"/tmp": f"rw,noexec,nosuid,nodev,size={int(settings.job_tmpfs_bytes)}"},
        ulimits=[
            Ulimit(name="nofile", soft=256, hard=256),
            Ulimit(name="core", soft=0, hard=0),
            Ulimit(name="fsize", soft=int(settings.job_tmpfs_bytes), hard=int(settings.job_tmpfs_bytes)),
        ],
        environment={"HOME": "/tmp"},
        working_dir="/tmp",
        hostname="sandbox",
        init=True,
        log_config=LogConfig(type="none"),
        labels={
            LABEL: job_id,
            "cleanroom.phase": phase,
            RUNNER_LABEL: runner_id,
            INSTANCE_LABEL: instance,
            NAME_LABEL: runner_name,
        },
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
        "no_new_privileges": any(
            s in ("no-new-privileges", "no-new-privileges:true", "no-new-privileges=true") for s in sec
        )
        and not any(s.endswith(("false", "False")) and "new-privileges" in s for s in sec),
        "seccomp": seccomp_ours,  # our profile, not the engine's default (nor unconfined)
        "pids": (hc.get("PidsLimit") or 0) == config["pids_limit"],
        "memory": hc.get("Memory") == config["mem_limit"],
        "swap": hc.get("MemorySwap") == config["mem_limit"],
        "cpu": hc.get("NanoCpus") == config["nano_cpus"],
        "tmpfs": "noexec" in tmpfs.get("/tmp", "") and "size=" in tmpfs.get("/tmp", ""),
        "ipc": hc.get("IpcMode") in ("none", "private"),
        "mounts": not (hc.get("Binds") or hc.get("Mounts")) and not attrs.get("Mounts"),
        "privileged": hc.get("Privileged") is False
        and hc.get("PidMode", "") in ("", "private")
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
        raise IsolationUnavailable(
            f"the Docker engine did not apply: {', '.join(refused)}",
            hint="fix the engine, or waive a control with CLEANROOM_ALLOW_UNENFORCED (audited)",
        )
    return used


def tightened(settings: Settings, limits: Mapping[str, Any]) -> Settings:
    """The room's sandbox settings with a job's policy limits applied; a limit can only lower one."""
    changes: dict[str, Any] = {}
    if "memory_mb" in limits:
        mb = min(memory_bytes(settings.job_memory) // 2**20, int(limits["memory_mb"]))
        changes["job_memory"] = f"{mb}m"
    if "cpus" in limits:
        changes["job_cpus"] = min(float(settings.job_cpus), float(limits["cpus"]))
    if "pids" in limits:
        changes["job_pids"] = min(int(settings.job_pids), int(limits["pids"]))
    if "timeout_seconds" in limits:
        changes["job_timeout_seconds"] = min(int(settings.job_timeout_seconds), int(limits["timeout_seconds"]))
    return dataclasses.replace(settings, **changes) if changes else settings
