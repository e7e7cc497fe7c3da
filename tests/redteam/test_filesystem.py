"""File-system attacks from inside the compute phase (checklist B): read-only root, capped /tmp, no links out.

Nothing is collected from the container's disk (the response travels on stdout), so the attacks aim
at the container itself, at the host through links, and at the next job through leftovers.
"""

from __future__ import annotations

import errno
import secrets
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.redteam.conftest import containers_of, preprocess, run_compute

pytestmark = pytest.mark.docker


def test_root_filesystem_and_trusted_code_are_read_only(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "fs-rootfs",
        """
        import sysconfig, cleanroom.sandbox.release as release
        attempt("etc", lambda: open("/etc/cron.d-x", "w"))
        attempt("root", lambda: open("/pwned", "w"))
        attempt("var_tmp", lambda: open("/var/tmp/x", "w"))
        attempt("run_lock", lambda: open("/run/lock/x", "w"))
        attempt("site_py", lambda: open(sysconfig.get_path("stdlib") + "/site.py", "a"))
        attempt("release_py", lambda: open(release.__file__, "a"))  # the trusted release phase's code
        attempt("mkdir", lambda: os.mkdir("/opt/evil"))
        attempt("chmod", lambda: os.chmod("/tmp", 0o777) or "ok")
        def control():
            with open("/tmp/scratch", "w") as fh:
                fh.write("scratch")
            return open("/tmp/scratch").read()
        attempt("control_tmp", control)
    """,
    )
    out = run_compute(sandbox, plugin)
    for name in ("etc", "root", "var_tmp", "run_lock", "mkdir"):
        assert out.errno(name) == errno.EROFS, name
    for name in ("site_py", "release_py"):
        assert out.errno(name) in (errno.EROFS, errno.EACCES), name
    assert out.ok("control_tmp") == "scratch"


def test_dev_shm_and_posix_shared_memory_are_absent(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "fs-shm",
        """
        attempt("dev_shm", lambda: open("/dev/shm/x", "w"))
        attempt("dev", lambda: open("/dev/evil", "w"))
        attempt("shared_memory", lambda: __import__("multiprocessing.shared_memory").shared_memory
                .SharedMemory(create=True, size=4096))
        attempt("control_dev_null", lambda: open("/dev/null", "w").write("x"))
    """,
    )
    out = run_compute(sandbox, plugin)
    assert out.errno("dev_shm") == errno.ENOENT  # ipc_mode=none: no /dev/shm at all
    assert out.errno("dev") in (errno.EACCES, errno.EROFS)
    assert out.errno("shared_memory") == errno.ENOENT
    assert out.ok("control_dev_null") == 1


def test_symlinks_cannot_reach_host_files(sandbox: Any, tmp_path: Path) -> None:
    canary = "host-canary-" + secrets.token_hex(8)
    host_file = tmp_path / "host-secret.txt"
    host_file.write_text(canary)
    plugin = preprocess(
        tmp_path,
        "fs-symlink",
        f"""
        attempt("direct", lambda: open({str(host_file)!r}).read())
        attempt("via_proc_root", lambda: open("/proc/1/root" + {str(host_file)!r}).read())
        os.symlink({str(host_file)!r}, "/tmp/link")
        attempt("via_symlink", lambda: open("/tmp/link").read())
        os.symlink("/proc/1/root/", "/tmp/rootlink")
        attempt("via_rootlink", lambda: sorted(os.listdir("/tmp/rootlink/tmp")))
        # control: a symlink to the container's own file works
        open("/tmp/own", "w").write("own"); os.symlink("/tmp/own", "/tmp/ownlink")
        attempt("control_link", lambda: open("/tmp/ownlink").read())
    """,
    )
    out = run_compute(sandbox, plugin)
    for name in ("direct", "via_proc_root", "via_symlink"):
        assert out.errno(name) in (errno.ENOENT, errno.EACCES), name
    assert "host-secret.txt" not in str(out.obs["via_rootlink"])
    assert out.ok("control_link") == "own"
    assert canary.encode() not in out.everything
    assert host_file.read_text() == canary  # untouched


def test_hardlinks_cannot_cross_into_the_image(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "fs-hardlink",
        """
        import cleanroom.sandbox.release.phase as release
        attempt("passwd", lambda: os.link("/etc/passwd", "/tmp/passwd"))
        attempt("release_py", lambda: os.link(release.__file__, "/tmp/release.py"))
        attempt("python", lambda: os.link(os.path.realpath(sys.executable), "/tmp/python"))
        open("/tmp/a", "w").write("a")
        attempt("control_same_fs", lambda: os.link("/tmp/a", "/tmp/b") or os.stat("/tmp/b").st_nlink)
    """,
    )
    out = run_compute(sandbox, plugin)
    for name in ("passwd", "release_py", "python"):
        assert out.errno(name) == errno.EXDEV, name  # /tmp is its own tmpfs
    assert out.ok("control_same_fs") == 2


def test_device_nodes_cannot_be_made_and_fifos_stay_inside(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "fs-nodes",
        """
        import stat
        attempt("char_dev", lambda: os.mknod("/tmp/mem", stat.S_IFCHR | 0o600, os.makedev(1, 1)))
        attempt("block_dev", lambda: os.mknod("/tmp/sda", stat.S_IFBLK | 0o600, os.makedev(8, 0)))
        attempt("dev_mem", lambda: open("/dev/mem", "rb").read(1))
        # a FIFO is harmless here (the runner reads nothing from the container's disk): control
        attempt("control_fifo", lambda: os.mkfifo("/tmp/fifo") or stat.S_ISFIFO(os.stat("/tmp/fifo").st_mode))
    """,
    )
    out = run_compute(sandbox, plugin)
    assert out.errno("char_dev") == errno.EPERM  # no CAP_MKNOD
    assert out.errno("block_dev") == errno.EPERM
    assert out.errno("dev_mem") == errno.ENOENT
    assert out.ok("control_fifo") is True
    assert out.result and out.result["ok"]  # the phase still answered: nothing hung on the FIFO


def test_sparse_and_huge_files_hit_the_file_size_limit(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "fs-sparse",
        """
        attempt("truncate_1tb", lambda: open("/tmp/sparse", "wb").truncate(10**12))
        def seek_write():
            with open("/tmp/sparse2", "wb") as fh:
                fh.seek(10**12); fh.write(b"x")
        attempt("seek_write", seek_write)
        attempt("control_1mb", lambda: open("/tmp/small", "wb").truncate(2**20) or os.path.getsize("/tmp/small"))
    """,
    )
    out = run_compute(sandbox, plugin)
    assert out.errno("truncate_1tb") == errno.EFBIG
    assert out.errno("seek_write") == errno.EFBIG
    assert out.ok("control_1mb") == 2**20


@pytest.mark.slow
def test_a_hundred_thousand_tiny_files_fill_only_the_jobs_tmpfs(
    sandbox: Any, docker_client: Any, tmp_path: Path
) -> None:
    plugin = preprocess(
        tmp_path,
        "fs-inodes",
        """
        made = 0
        try:
            for i in range(100_000):
                with open(f"/tmp/f{i}", "w") as fh:
                    fh.write("x")
                made += 1
            OBS["stopped"] = {"ok": True, "value": None}
        except OSError as exc:
            OBS["stopped"] = {"ok": False, "errno": exc.errno}
        OBS["made"] = {"ok": True, "value": made}
    """,
    )
    disk_before = shutil.disk_usage(tmp_path).free
    out = run_compute(sandbox, plugin, timeout=120)
    assert not out.phase.timed_out and out.result and out.result["ok"], out.stderr
    made = out.ok("made")
    if made < 100_000:
        assert out.obs["stopped"]["errno"] == errno.ENOSPC  # the tmpfs cap, never the host's disk
    assert containers_of(docker_client, out.job_id) == []
    assert disk_before - shutil.disk_usage(tmp_path).free < 50 * 2**20  # the host's disk did not fill up
    # control: the next job starts clean and can write a few files
    control = preprocess(
        tmp_path,
        "fs-inodes-control",
        """
        attempt("listing", lambda: sorted(os.listdir("/tmp"))[:5])
        for i in range(100):
            open(f"/tmp/ctl{i}", "w").write("x")
        attempt("made", lambda: len([n for n in os.listdir("/tmp") if n.startswith("ctl")]))
    """,
    )
    second = run_compute(sandbox, control)
    assert not any(name.startswith("f") for name in second.ok("listing"))
    assert second.ok("made") == 100


def test_nothing_persists_from_one_phase_to_the_next(sandbox: Any, tmp_path: Path) -> None:
    canary = "persist-" + secrets.token_hex(8)
    writer = preprocess(
        tmp_path,
        "fs-persist-write",
        f'''
        for path in ("/tmp/{canary}", "/var/tmp/{canary}", "/dev/shm/{canary}", "/run/lock/{canary}",
                     os.path.expanduser("~/{canary}")):
            attempt("write " + path, lambda path=path: open(path, "w").write("{canary}"))
        attempt("control_visible", lambda: os.path.exists("/tmp/{canary}"))
    ''',
    )
    reader = preprocess(
        tmp_path,
        "fs-persist-read",
        f'''
        found = []
        for root in ("/tmp", "/var/tmp", "/run", "/home", "/root", "/opt", "/usr/local"):
            for dirpath, dirs, files in os.walk(root, onerror=lambda e: None):
                found += [os.path.join(dirpath, f) for f in files if "{canary}" in f]
        OBS["found"] = {{"ok": True, "value": found}}
    ''',
    )
    first = run_compute(sandbox, writer)
    assert first.ok("control_visible") is True
    assert first.ok("write /tmp/" + canary) == len(canary)
    second = run_compute(sandbox, reader)
    assert second.ok("found") == []
