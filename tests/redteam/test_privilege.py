"""Privilege, escape and secret-discovery attacks (checklist D), plus the isolation config itself."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from cleanroom.errors import IsolationUnavailable
from cleanroom.runner.isolation import CONTROLS, check_isolation, container_config, read_back, seccomp_profile
from cleanroom.settings import Settings
from tests.redteam.conftest import RUNNER_CANARY, RUNNER_CANARY_VAR, preprocess, run_compute

SYSCALLS = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)


def syscall(number, *args):
    result = libc.syscall(number, *args)
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result

"""


@pytest.mark.docker
def test_every_thread_runs_unprivileged_under_seccomp(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "priv-status",
        """
        import threading
        def status(path):
            fields = dict(line.split(":", 1) for line in open(path).read().splitlines() if ":" in line)
            return {k: fields[k].split() for k in ("Uid", "Gid", "NoNewPrivs", "Seccomp", "CapEff", "CapPrm",
                                                    "CapBnd", "CapInh", "CapAmb")}
        worker = threading.Thread(target=time.sleep, args=(1,)); worker.start()
        tasks = sorted(os.listdir("/proc/self/task"))
        attempt("tasks", lambda: {t: status(f"/proc/self/task/{t}/status") for t in tasks})
        attempt("groups", lambda: os.getgroups())
        worker.join()
    """,
    )
    out = run_compute(sandbox, plugin)
    tasks = out.ok("tasks")
    assert len(tasks) >= 2  # the main thread, the worker and library threads: every one is checked
    for task, fields in tasks.items():
        assert "0" not in fields["Uid"] and "0" not in fields["Gid"], task
        assert fields["NoNewPrivs"] == ["1"], task
        assert fields["Seccomp"] == ["2"], task  # filter mode
        for cap in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"):
            assert int(fields[cap][0], 16) == 0, (task, cap)
    assert 0 not in out.ok("groups")


def test_the_status_parser_sees_privilege_where_there_is_some() -> None:
    """Control for the test above: the same fields, read on the host test process, are parsed."""
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert {"Uid", "NoNewPrivs", "Seccomp", "CapEff", "CapBnd"} <= set(fields)
    assert fields["NoNewPrivs"].strip() in ("0", "1")


@pytest.mark.docker
def test_dangerous_syscalls_are_refused(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "priv-syscalls",
        SYSCALLS.replace("\n", "\n        ")
        + """
        attempt("setuid_0", lambda: os.setuid(0))
        attempt("setgid_0", lambda: os.setgid(0))
        attempt("chroot", lambda: os.chroot("/tmp"))
        attempt("mount", lambda: syscall(165, b"none", b"/tmp", b"tmpfs", 0, None))
        attempt("unshare_user", lambda: syscall(272, 0x10000000))
        attempt("unshare_net", lambda: syscall(272, 0x40000000))
        attempt("keyctl", lambda: syscall(250, 0, 0, 0, 0, 0))
        attempt("add_key", lambda: syscall(248, b"user", b"k", b"v", 1, -2))
        attempt("bpf", lambda: syscall(321, 0, 0, 0))
        attempt("perf_event_open", lambda: syscall(298, 0, 0, -1, -1, 0))
        attempt("userfaultfd", lambda: syscall(323, 0))
        attempt("init_module", lambda: syscall(175, 0, 0, b""))
        attempt("kexec_load", lambda: syscall(246, 0, 0, 0, 0))
        attempt("reboot", lambda: syscall(169, 0xfee1dead, 672274793, 0x4321fedc, 0))
        attempt("personality", lambda: syscall(135, 0xffffffff + 1 - 1))
        attempt("sethostname", lambda: socket.sethostname("evil"))
        attempt("control_getpid", lambda: syscall(39) > 0)
    """,
    )
    out = run_compute(sandbox, plugin)
    for name in (
        "setuid_0",
        "setgid_0",
        "chroot",
        "mount",
        "unshare_user",
        "unshare_net",
        "keyctl",
        "add_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "init_module",
        "kexec_load",
        "reboot",
        "sethostname",
    ):
        assert out.errno(name) in (errno.EPERM, errno.EACCES, errno.ENOSYS), name
    assert out.ok("control_getpid") is True


@pytest.mark.docker
def test_io_uring_is_refused(sandbox: Any, tmp_path: Path) -> None:
    """io_uring is a large kernel attack surface whose operations seccomp cannot see.

    Docker's default profile refuses it only since engine 25 (moby/moby#46762); the runner passes its
    own profile (cleanroom/runner/seccomp.json), which refuses it on every engine.
    """
    plugin = preprocess(
        tmp_path,
        "priv-io-uring",
        SYSCALLS.replace("\n", "\n        ")
        + """
        params = ctypes.create_string_buffer(120)
        attempt("io_uring_setup", lambda: syscall(425, 4, params))
        attempt("io_uring_enter", lambda: syscall(426, 0, 1, 0, 0, None, 0))
        attempt("io_uring_register", lambda: syscall(427, 0, 0, None, 0))
        # controls: an ordinary syscall, and the older AIO interface the profile keeps
        attempt("control_eventfd", lambda: os.close(syscall(290, 0, 0)) or "ok")
        ctx = ctypes.c_ulong(0)
        attempt("control_io_setup", lambda: syscall(206, 4, ctypes.byref(ctx)) == 0 and syscall(207, ctx) == 0)
    """,
    )
    out = run_compute(sandbox, plugin)
    assert out.ok("control_eventfd") == "ok"
    assert out.ok("control_io_setup") is True
    for name in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
        assert out.errno(name) in (errno.EPERM, errno.ENOSYS), name


@pytest.mark.docker
def test_proc_and_sys_probing_finds_nothing(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "priv-proc",
        """
        for path in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
                     "/proc/sysrq-trigger", "/sys/firmware/efi/efivars", "/proc/acpi",
                     "/sys/kernel/debug", "/sys/fs/cgroup/../../../etc/shadow"):
            attempt("read " + path, lambda path=path: (sorted(os.listdir(path)) if os.path.isdir(path)
                                                        else open(path, "rb").read(256).decode("latin-1")))
        symbols = lambda: open("/proc/kallsyms").read().splitlines()[:50]
        attempt("kallsyms_addresses", lambda: sorted({line.split()[0] for line in symbols()}))
        attempt("write_sysrq", lambda: open("/proc/sysrq-trigger", "w").write("b"))
        attempt("write_core_pattern", lambda: open("/proc/sys/kernel/core_pattern", "w").write("|/tmp/x"))
        attempt("control_proc_self", lambda: open("/proc/self/cmdline", "rb").read().split(b"\\0")[0].decode())
    """,
    )
    out = run_compute(sandbox, plugin)
    for name in [n for n in out.obs if n.startswith("read ")]:
        entry = out.obs[name]
        if entry["ok"]:
            assert entry["value"] in ("", []), (name, entry)
        else:
            assert entry["errno"] in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR), (name, entry)
    if out.obs["kallsyms_addresses"]["ok"]:
        assert set(out.obs["kallsyms_addresses"]["value"]) <= {"0000000000000000"}  # addresses hidden
    assert out.errno("write_sysrq") in (errno.ENOENT, errno.EROFS, errno.EACCES)
    assert out.errno("write_core_pattern") in (errno.EROFS, errno.EACCES)
    assert out.ok("control_proc_self") == "python"


@pytest.mark.docker
def test_the_runner_environment_never_reaches_a_plugin(sandbox: Any, tmp_path: Path) -> None:
    assert os.environ[RUNNER_CANARY_VAR] == RUNNER_CANARY  # planted in the launcher's own environment
    plugin = preprocess(
        tmp_path,
        "priv-env",
        """
        attempt("environ", lambda: dict(os.environ))
        attempt("proc_self_environ", lambda: open("/proc/self/environ", "rb").read().decode("latin-1"))
        environs = {}
        for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
            try:
                environs[pid] = open(f"/proc/{pid}/environ", "rb").read().decode("latin-1")
            except OSError as exc:
                environs[pid] = f"errno {exc.errno}"
        OBS["all_environs"] = {"ok": True, "value": environs}
        found = []
        for root in ("/tmp", "/root", "/home", "/etc", "/run", "/var/run"):
            for dirpath, dirs, files in os.walk(root, onerror=lambda e: None):
                found += [os.path.join(dirpath, f) for f in files
                          if any(k in f for k in ("key", "token", ".docker", "secret", "credential"))]
        OBS["key_files"] = {"ok": True, "value": found}
        print("ENVIRONMENT DUMP", dict(os.environ), file=sys.stderr)
    """,
    )
    out = run_compute(sandbox, plugin)
    environ = out.ok("environ")
    assert set(environ) <= {"PATH", "HOME", "HOSTNAME", "LANG", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    assert environ["HOME"] == "/tmp"  # control: the dump does show the variables that are set
    assert RUNNER_CANARY.encode() not in out.everything
    assert RUNNER_CANARY_VAR.encode() not in out.everything
    assert not any(k in str(environ) for k in ("CLEANROOM_TOKEN", "DOCKER_HOST", "AWS_", "room-key"))
    assert [f for f in out.ok("key_files") if "/etc/ssl" not in f and "/etc/pki" not in f] == []


OUR_SECCOMP = "seccomp=" + seccomp_profile()
# the same profile, but one that lets io_uring through: the read-back wants ours, not any seccomp profile
LOOSE_SECCOMP = "seccomp=" + json.dumps(
    {
        **json.loads(seccomp_profile()),
        "syscalls": [
            {"names": ["io_uring_setup", "io_uring_enter", "io_uring_register"], "action": "SCMP_ACT_ALLOW"},
            *json.loads(seccomp_profile())["syscalls"],
        ],
    }
)


def test_the_container_config_is_the_hardened_baseline() -> None:
    settings = Settings()
    config = container_config(settings, "image", "compute", "job-1")
    assert config["network_mode"] == "none" and config["read_only"] is True
    assert config["cap_drop"] == ["ALL"] and "cap_add" not in config
    assert "no-new-privileges:true" in config["security_opt"]
    assert not any("unconfined" in o for o in config["security_opt"])
    assert OUR_SECCOMP in config["security_opt"]  # our profile on every engine, not the engine's default
    assert config["user"] not in ("root", "0", "0:0") and not str(config["user"]).startswith("0:")
    assert config["pids_limit"] > 0 and config["mem_limit"] == config["memswap_limit"] > 0
    assert config["nano_cpus"] > 0 and config["ipc_mode"] == "none"
    assert "noexec" in config["tmpfs"]["/tmp"] and "size=" in config["tmpfs"]["/tmp"]
    assert config["environment"] == {"HOME": "/tmp"}
    for key in ("volumes", "mounts", "privileged", "devices", "pid_mode", "network", "extra_hosts"):
        assert not config.get(key), key
    assert config["command"][:2] == ["python", "-I"]


@pytest.mark.parametrize(
    "loosen",
    [
        {"NetworkMode": "bridge"},
        {"ReadonlyRootfs": False},
        {"CapAdd": ["NET_RAW"]},
        {"Privileged": True},
        {"SecurityOpt": ["no-new-privileges:true", "seccomp=unconfined"]},
        {"PidsLimit": 0},
        {"MemorySwap": -1},
        {"SecurityOpt": ["no-new-privileges:true"]},  # the engine's default profile instead of ours
        {"SecurityOpt": ["no-new-privileges:true", LOOSE_SECCOMP]},  # a profile, but not ours
        {"SecurityOpt": ["no-new-privileges:true", OUR_SECCOMP, "seccomp=unconfined"]},
        {"SecurityOpt": ["no-new-privileges:false", OUR_SECCOMP]},  # the prefix alone is not enough
        {"SecurityOpt": ["no-new-privileges:true", "no-new-privileges:false", OUR_SECCOMP]},
        {"Binds": ["/var/run/docker.sock:/var/run/docker.sock"]},
        {"PidMode": "host"},
        {"Devices": [{"PathOnHost": "/dev/mem"}]},
        {"IpcMode": "host"},
    ],
)
def test_an_engine_that_drops_a_control_makes_the_runner_refuse(loosen: dict[str, Any]) -> None:
    """Fail closed: the read-back of what the engine applied catches any loosened control."""
    config = container_config(Settings(), "image", "compute", "job-1")
    host = {
        "NetworkMode": "none",
        "ReadonlyRootfs": True,
        "CapDrop": ["ALL"],
        "CapAdd": None,
        "SecurityOpt": config["security_opt"],
        "PidsLimit": config["pids_limit"],
        "Memory": config["mem_limit"],
        "MemorySwap": config["mem_limit"],
        "NanoCpus": config["nano_cpus"],
        "Tmpfs": {"/tmp": config["tmpfs"]["/tmp"]},
        "IpcMode": "none",
        "Privileged": False,
        "PidMode": "",
    }
    attrs = {"HostConfig": host, "Config": {"User": config["user"], "Env": ["HOME=/tmp"]}, "Mounts": []}
    assert check_isolation(read_back(attrs, config), []) == []  # control: the baseline passes
    loose = {"HostConfig": {**host, **loosen}, "Config": attrs["Config"], "Mounts": []}
    with pytest.raises(IsolationUnavailable):
        check_isolation(read_back(loose, config), [])
    waived = [c for c in CONTROLS if read_back(loose, config).get(c) is not True]
    assert check_isolation(read_back(loose, config), waived) == waived  # only an explicit operator waiver
