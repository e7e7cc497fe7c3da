"""The sandbox launcher: the isolation baseline, read back from the engine, failing closed."""

from __future__ import annotations

import errno
import io
import json
import os

import pytest

from cleanroom.errors import IsolationUnavailable
from cleanroom.runner import isolation as sb
from cleanroom.runner.launcher import Sandbox
from cleanroom.sandbox import wire
from cleanroom.settings import Settings
from tests.dockerutil import require_docker, require_image


def test_config_is_the_baseline():
    cfg = sb.container_config(Settings(job_memory="1g", job_pids=64, job_cpus=0.5), "img", "compute", "job_1")
    assert cfg["network_mode"] == "none" and cfg["read_only"] is True and cfg["cap_drop"] == ["ALL"]
    assert cfg["user"] == "65534:65534" and cfg["security_opt"] == [
        "no-new-privileges:true",
        "seccomp=" + sb.seccomp_profile(),
    ]
    assert cfg["mem_limit"] == cfg["memswap_limit"] == 2**30 and cfg["pids_limit"] == 64
    assert cfg["nano_cpus"] == 500_000_000 and cfg["ipc_mode"] == "none" and cfg["init"] is True
    assert "noexec" in cfg["tmpfs"]["/tmp"] and cfg["environment"] == {"HOME": "/tmp"}
    assert "volumes" not in cfg and "privileged" not in cfg and cfg["tty"] is False
    assert cfg["command"] == ["python", "-I", "-m", "cleanroom.sandbox.compute"]


# ------------------------------------------------------------------------------------------ seccomp profile

SECCOMP = json.loads(sb.seccomp_profile())
CONTAINER_CAPS: set[str] = set()  # cap_drop=ALL


def _arg_matches(rule_arg: dict, args: tuple[int, ...]) -> bool:
    value, op = args[rule_arg["index"]], rule_arg["op"]
    mask_or_value = rule_arg["value"]
    return {
        "SCMP_CMP_EQ": value == mask_or_value,
        "SCMP_CMP_NE": value != mask_or_value,
        "SCMP_CMP_LT": value < mask_or_value,
        "SCMP_CMP_LE": value <= mask_or_value,
        "SCMP_CMP_GT": value > mask_or_value,
        "SCMP_CMP_GE": value >= mask_or_value,
        "SCMP_CMP_MASKED_EQ": value & mask_or_value == rule_arg.get("valueTwo", 0),
    }[op]


def seccomp_verdict(name: str, *args: int, arch: str = "amd64") -> tuple[str, int | None]:
    """What the profile answers a syscall from a container with no capabilities (the engine's rule selection)."""
    args = args + (0,) * (6 - len(args))
    for rule in SECCOMP["syscalls"]:
        inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
        if name not in rule["names"]:
            continue
        if inc.get("arches") and arch not in inc["arches"] or exc.get("arches") and arch in exc["arches"]:
            continue
        if inc.get("caps") and not set(inc["caps"]) <= CONTAINER_CAPS:
            continue
        if exc.get("caps") and set(exc["caps"]) & CONTAINER_CAPS:
            continue
        if all(_arg_matches(a, args) for a in rule.get("args") or []):
            return rule["action"], rule.get("errnoRet")
    return SECCOMP["defaultAction"], SECCOMP["defaultErrnoRet"]


ALLOWED = ("SCMP_ACT_ALLOW", None)
EPERM = ("SCMP_ACT_ERRNO", errno.EPERM)


def test_the_seccomp_profile_refuses_io_uring_and_vsock():
    for name in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
        assert not [r for r in SECCOMP["syscalls"] if name in r["names"]], name
        assert seccomp_verdict(name, 4, 0) == EPERM, name
    assert seccomp_verdict("socket", 40, 1, 0) == EPERM  # AF_VSOCK
    assert seccomp_verdict("socket", 38, 5, 0) == EPERM  # AF_ALG, as moby blocks it too
    # control: the evaluator does allow what the profile allows
    assert seccomp_verdict("socket", 1, 1, 0) == ALLOWED and seccomp_verdict("read", 0) == ALLOWED
    # The 32-bit ABI (socketcall hides the family from seccomp) is not in the filter: such a syscall kills.
    assert SECCOMP["defaultAction"] == "SCMP_ACT_ERRNO"
    assert all(not entry["subArchitectures"] for entry in SECCOMP["archMap"])
    # runc ORs repeated comparisons of one argument, so a rule may compare each argument once only.
    for rule in SECCOMP["syscalls"]:
        indexes = [a["index"] for a in rule.get("args") or []]
        assert len(indexes) == len(set(indexes)), rule


def test_the_seccomp_profile_allows_what_a_python_job_needs():
    for family in (1, 2, 10, 16):  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK (getaddrinfo, if_nameindex)
        assert seccomp_verdict("socket", family, 1, 0) == ALLOWED, family
    for name in (
        "read",
        "write",
        "openat",
        "close",
        "newfstatat",
        "statx",
        "lseek",
        "mmap",
        "munmap",
        "mprotect",
        "madvise",
        "mremap",
        "brk",
        "futex",
        "rt_sigaction",
        "rt_sigprocmask",
        "sigaltstack",
        "getrandom",
        "clock_gettime",
        "clock_nanosleep",
        "sched_getaffinity",
        "sched_yield",
        "set_robust_list",
        "rseq",
        "prlimit64",
        "ioctl",
        "fcntl",
        "dup2",
        "pipe2",
        "eventfd2",
        "epoll_create1",
        "epoll_ctl",
        "epoll_wait",
        "poll",
        "getdents64",
        "readlink",
        "getcwd",
        "getpid",
        "gettid",
        "uname",
        "wait4",
        "execve",
        "exit_group",
        "memfd_create",
        "socketpair",
        "bind",
        "listen",
        "connect",
        "sendto",
        "recvfrom",
        "arch_prctl",
        "set_tid_address",
        "tgkill",
        "kill",
    ):
        assert seccomp_verdict(name) == ALLOWED, name
    assert seccomp_verdict("personality", 0xFFFFFFFF) == ALLOWED  # glibc queries the persona
    # threads and fork: clone3 answers ENOSYS so glibc falls back to clone, allowed without namespace flags
    assert seccomp_verdict("clone3") == ("SCMP_ACT_ERRNO", errno.ENOSYS)
    thread_flags = 0x3D0F00  # CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
    assert seccomp_verdict("clone", thread_flags) == ALLOWED and seccomp_verdict("clone", 0x11) == ALLOWED
    assert seccomp_verdict("clone", thread_flags | 0x10000000) == EPERM  # CLONE_NEWUSER
    for name in (
        "mount",
        "unshare",
        "setns",
        "bpf",
        "perf_event_open",
        "keyctl",
        "add_key",
        "kexec_load",
        "init_module",
        "userfaultfd",
        "open_by_handle_at",
    ):
        assert seccomp_verdict(name) == EPERM, name


def test_the_seccomp_profile_is_loaded_once_and_sent_compact():
    assert sb.seccomp_profile() is sb.seccomp_profile()
    text = sb.seccomp_profile()
    assert text == json.dumps(json.loads(text), separators=(",", ":")) and len(text) < 16_000
    assert text.startswith('{"_comment":') and json.loads(text)["defaultAction"] == "SCMP_ACT_ERRNO"


def test_the_read_back_wants_our_seccomp_profile():
    cfg = sb.container_config(Settings(), "img", "compute", "job_1")
    ours = {"HostConfig": {"SecurityOpt": cfg["security_opt"]}, "Config": {}}
    applied = sb.read_back(ours, cfg)
    assert applied["seccomp"] is True and applied["seccomp_profile"].startswith("sha256:")
    reencoded = "seccomp=" + json.dumps(json.loads(sb.seccomp_profile()), indent=1)
    assert sb.read_back({"HostConfig": {"SecurityOpt": [reencoded]}}, cfg)["seccomp"] is True
    loosened = dict(SECCOMP, syscalls=[{"names": ["io_uring_setup"], "action": "SCMP_ACT_ALLOW"}, *SECCOMP["syscalls"]])
    for sec in (
        [],
        ["no-new-privileges:true"],
        ["seccomp=unconfined"],
        ["seccomp=builtin"],
        ["seccomp={"],
        ["seccomp=" + json.dumps(loosened)],
        [cfg["security_opt"][1], "seccomp=unconfined"],
    ):
        assert sb.read_back({"HostConfig": {"SecurityOpt": sec}}, cfg)["seccomp"] is False, sec


def test_missing_control_fails_closed_unless_waived():
    applied = dict.fromkeys(sb.CONTROLS, True)
    assert sb.check_isolation(applied, []) == []
    applied["pids"] = False
    with pytest.raises(IsolationUnavailable, match="pids"):
        sb.check_isolation(applied, [])
    assert sb.check_isolation(applied, ["pids"]) == ["pids"]


@pytest.fixture
def box():
    client = require_docker()
    image = require_image(client, "CLEANROOM_SANDBOX_IMAGE")
    return Sandbox(Settings(sandbox_image=image, job_timeout_seconds=60))


def _empty_compute_request() -> bytes:
    buf = io.BytesIO()
    wire.write_message(buf, "job.json", {"job_id": "t", "inputs": [], "steps": [], "max_output_bytes": 10**6}, {})
    return buf.getvalue()


@pytest.mark.docker
def test_engine_applies_every_control(box):
    result = box.run_phase("compute", "job_conformance", _empty_compute_request())
    assert result.exit_code is not None
    assert {c: result.isolation[c] for c in sb.CONTROLS} == dict.fromkeys(sb.CONTROLS, True)
    assert result.isolation["environment"] == sorted(result.isolation["environment"])
    assert not [k for k in result.isolation["environment"] if "TOKEN" in k or "KEY" in k or "SECRET" in k]
    leftover = box.docker.containers.list(
        all=True, filters={"label": "cleanroom.job=job_conformance"}, ignore_removed=True
    )
    assert leftover == []


@pytest.mark.docker
def test_unknown_runtime_is_refused(box):
    strict = Sandbox(Settings(sandbox_image=box.settings.sandbox_image, sandbox_runtime="runsc-missing"))
    with pytest.raises(IsolationUnavailable):
        strict.run_phase("compute", "job_runtime", _empty_compute_request())


@pytest.mark.docker
def test_waived_control_is_reported(box, monkeypatch):
    real = sb.read_back

    def without_pids(attrs, config):
        applied = real(attrs, config)
        applied["pids"] = False  # as an engine that ignores pids limits would report
        return applied

    monkeypatch.setattr(sb, "read_back", without_pids)
    with pytest.raises(IsolationUnavailable):
        box.run_phase("compute", "job_waive", _empty_compute_request())
    waiving = Sandbox(Settings(sandbox_image=box.settings.sandbox_image, allow_unenforced=["pids"]))
    result = waiving.run_phase("compute", "job_waive2", _empty_compute_request())
    assert result.isolation["waived"] == ["pids"]
    assert os.environ.get("CLEANROOM_ALLOW_UNENFORCED") is None
