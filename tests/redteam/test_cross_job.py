"""Two jobs at once (checklist D.41, D.42): neither can see the other's data, processes or files."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.redteam.conftest import canary_frame, preprocess, run_compute

pytestmark = pytest.mark.docker

SNOOP = """
    mine = str(df["secret"].iloc[0])
    open("/tmp/" + mine, "w").write(mine)       # bait for the other job
    time.sleep(3)                                # both containers run now
    seen = {"inputs": sorted(set(df["secret"].str.split("-").str[:-1].str.join("-")))}
    procs = {}
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            procs[pid] = open(f"/proc/{pid}/cmdline", "rb").read().decode("latin-1")
        except OSError:
            pass
    seen["processes"] = procs
    files = {}
    for root in ("/tmp", "/run", "/var/tmp"):
        for dirpath, dirs, names in os.walk(root, onerror=lambda e: None):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    files[path] = open(path, "rb").read(256).decode("latin-1")
                except OSError:
                    files[path] = None
    seen["files"] = files
    seen["unix_sockets"] = open("/proc/net/unix").read()
    seen["hostname"] = socket.gethostname()
    OBS["seen"] = {"ok": True, "value": seen}
    print("SNOOPED", json.dumps(seen)[:4000], file=sys.stderr)
"""


def test_two_concurrent_jobs_cannot_see_each_others_data(sandbox: Any, tmp_path: Path) -> None:
    canaries = {"a": "tenant-a-" + secrets.token_hex(8), "b": "tenant-b-" + secrets.token_hex(8)}
    outs: dict[str, Any] = {}

    def run(key: str) -> None:
        plugin = preprocess(tmp_path / key, f"cross-snoop-{key}", SNOOP)
        outs[key] = run_compute(sandbox, plugin, frames={f"{key}.data": canary_frame(canaries[key])})

    threads = [threading.Thread(target=run, args=(key,)) for key in canaries]
    for thread in threads:
        thread.start()
        time.sleep(0.5)
    for thread in threads:
        thread.join(timeout=120)
    for key, other in (("a", "b"), ("b", "a")):
        out = outs[key]
        seen = out.ok("seen")
        assert seen["inputs"] == [canaries[key]]  # control: it sees its own data and bait
        assert f"/tmp/{canaries[key]}-0" in seen["files"]
        assert canaries[other].encode() not in out.everything, f"job {key} saw job {other}'s data"
        assert len(seen["processes"]) <= 3  # init, the phase, nothing of the other job


def test_a_lock_on_a_shared_image_file_is_no_channel_between_jobs(sandbox: Any, tmp_path: Path) -> None:
    """Checklist D.42: flock on a file both containers share through the read-only image."""
    holder = preprocess(
        tmp_path,
        "cross-lock-holder",
        """
        import fcntl
        fh = open("/usr/lib/os-release", "rb")
        fcntl.flock(fh, fcntl.LOCK_EX)
        OBS["held"] = {"ok": True, "value": True}
        time.sleep(7)
    """,
    )
    prober = preprocess(
        tmp_path,
        "cross-lock-prober",
        """
        import fcntl
        time.sleep(3)
        fh = open("/usr/lib/os-release", "rb")
        attempt("try_lock", lambda: fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB) or "acquired")
        # control: inside one container a second open file description does see the lock
        other = open("/usr/lib/os-release", "rb")
        attempt("control_same_container", lambda: fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB) or "acquired")
    """,
    )
    outs: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outs.update(holder=run_compute(sandbox, holder)))
    thread.start()
    time.sleep(1)
    outs["prober"] = run_compute(sandbox, prober)
    thread.join(timeout=60)
    assert outs["holder"].ok("held") is True
    assert outs["prober"].ok("try_lock") == "acquired"  # the other job's lock is invisible here
    assert outs["prober"].obs["control_same_container"]["ok"] is False
