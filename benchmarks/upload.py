"""Throughput and memory of preparing (pseudonymising + encrypting) and uploading datasets.

    python benchmarks/upload.py                       # 100M only
    python benchmarks/upload.py --sizes 100M,1G,2G
    python benchmarks/upload.py --sizes 100M,1G --room   # also upload, to an API + runner started here
    python benchmarks/upload.py --sizes 1G --url https://room.example --token $TOKEN --api-pid 4242

Generates CSV files of each size in a temporary directory and prints, per size:

- two plain file copies on the same disk (shutil.copyfile): one that ends when the bytes are in the
  page cache, one that also fsyncs the copy (the source was just written, so both read it from the
  page cache);
- `cleanroom.prepare.ingest.prepare` (schema, HMAC pseudonyms, Arrow IPC + zstd, age encryption, fsync of the
  ciphertext), and its throughput as a fraction of each copy's;
- the peak RSS of the process that prepared.

Every measured step runs in a fresh child process, so the peak RSS is that step's alone. With --room
(an API and a runner in child processes, as benchmarks/jobs.py starts them; the runner needs Docker)
or with --url and --token (an org token with the owner role) it also uploads through the API
(`Client.upload_dataset`, which prepares again and then streams the ciphertext) and samples the API
process's resident memory meanwhile (--api-pid for a room of your own).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}

# runs in a child: prepare (or upload) one file and print what it measured as JSON
CHILD = r"""
import json, sys, time
args = json.loads(sys.argv[1])
from cleanroom.crypto import generate_keypair
from cleanroom.prepare.ingest import new_join_secret, prepare
start = time.perf_counter()
if args["mode"] == "prepare":
    prepared = prepare(args["path"], recipient=generate_keypair().enc_public, id_column="customer_id",
                       join_secret=new_join_secret(), workdir=args["workdir"])
    out = {"rows": prepared.row_count, "ciphertext": prepared.size}
    prepared.cleanup()
else:
    from cleanroom.client import Client
    with Client(args["url"], args["token"]) as client:
        result = client.upload_dataset(args["path"], name=args["name"], policy="", id_column="customer_id",
                                       join_secret=new_join_secret())
    out = {"dataset": result.get("name")}
out["seconds"] = time.perf_counter() - start
print(json.dumps(out))
"""

# a fresh parent for each child, so RUSAGE_CHILDREN holds exactly that child's peak
PEAK = r"""
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]], capture_output=True, text=True)
sys.stderr.write(done.stderr)
print(done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else "null")
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 100M, 1G)")
    return int(float(match.group(1)) * UNITS[match.group(2)])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def generate_csv(path: Path, target: int, seed: int = 0) -> int:
    """About `target` bytes of customer-like rows: id, e-mail, age, income, region, date, score."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    regions = np.array(["north", "south", "east", "west", "centre"])
    rows = 0
    with open(path, "wb") as f:
        while f.tell() < target:
            n = min(100_000, max(1000, (target - f.tell()) // 80))
            ids = np.arange(rows, rows + n).astype(str)
            table = pa.table(
                {
                    "customer_id": np.char.add("C", ids),
                    "email": np.char.add(np.char.add("user", ids), "@example.com"),
                    "age": rng.integers(18, 90, n),
                    "income": rng.normal(50_000, 15_000, n).round(2),
                    "region": regions[rng.integers(0, len(regions), n)],
                    "signup": pa.array(rng.integers(10_000, 19_000, n).astype("datetime64[D]")),
                    "score": rng.random(n).round(6),
                }
            )
            pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=rows == 0))
            rows += n
    return rows


def measured_child(args: dict[str, Any]) -> tuple[dict[str, Any] | None, int]:
    """Run CHILD with `args` in a fresh parent; return (its JSON answer, its peak RSS in bytes)."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK, CHILD, json.dumps(args)], capture_output=True, text=True, check=True
    )
    answer, peak = done.stdout.strip().splitlines()[-2:]
    if done.stderr.strip():
        print(done.stderr.strip().splitlines()[-1], file=sys.stderr)
    return json.loads(answer), int(peak) * 1024  # ru_maxrss is in KiB on Linux


class RssSampler(threading.Thread):
    """Samples another process's resident memory (Linux /proc) until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._stop_event = pid, 0, threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            found = re.search(r"VmRSS:\s+(\d+) kB", text)
            if found:
                self.peak = max(self.peak, int(found.group(1)) * 1024)
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def copy_seconds(src: Path, dst: Path, *, fsync: bool) -> float:
    """Seconds to copy `src` to `dst` (and, with `fsync`, to have the copy on the disk)."""
    start = time.perf_counter()
    shutil.copyfile(src, dst)
    if fsync:
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    seconds = time.perf_counter() - start
    dst.unlink()
    return seconds


def bench(size: int, workdir: Path, opts: argparse.Namespace) -> dict[str, Any]:
    src = workdir / f"data-{size}.csv"
    rows = generate_csv(src, size)
    actual = src.stat().st_size
    dst = workdir / "copy.csv"
    copy_s = min(copy_seconds(src, dst, fsync=False) for _ in range(3))
    synced_s = min(copy_seconds(src, dst, fsync=True) for _ in range(3))
    row: dict[str, Any] = {
        "size": actual,
        "rows": rows,
        "copy_mbs": actual / copy_s / 2**20,
        "synced_mbs": actual / synced_s / 2**20,
    }
    answer, peak = measured_child({"mode": "prepare", "path": str(src), "workdir": str(workdir)})
    if answer:
        prep_mbs = actual / answer["seconds"] / 2**20
        row.update(
            prep_mbs=prep_mbs,
            vs_copy=prep_mbs / row["copy_mbs"],
            vs_synced=prep_mbs / row["synced_mbs"],
            client_rss=peak,
            ciphertext=answer["ciphertext"],
        )
    if opts.url and opts.token:
        sampler = RssSampler(opts.api_pid) if opts.api_pid else None
        if sampler:
            sampler.start()
        name = f"bench.upload-{secrets.token_hex(4)}"
        try:
            answer, peak = measured_child(
                {"mode": "upload", "path": str(src), "url": opts.url, "token": opts.token, "name": name}
            )
        except subprocess.CalledProcessError:
            answer = None
        api_peak = sampler.stop() if sampler else None
        if answer:
            upload_mbs = actual / answer["seconds"] / 2**20
            row.update(
                upload_mbs=upload_mbs,
                upload_vs_synced=upload_mbs / row["synced_mbs"],
                upload_rss=peak,
                api_rss=api_peak,
            )
        else:
            row["upload_error"] = "upload failed (see stderr); is cleanroom.client.Client available?"
    src.unlink()
    return row


def table(rows: list[dict[str, Any]]) -> str:
    cols = [
        ("size", "size", human),
        ("rows", "rows", lambda v: f"{v:,}"),
        ("copy MiB/s (cached)", "copy_mbs", lambda v: f"{v:,.0f}"),
        ("copy+fsync MiB/s", "synced_mbs", lambda v: f"{v:,.0f}"),
        ("prepare MiB/s", "prep_mbs", lambda v: f"{v:,.1f}"),
        ("vs copy", "vs_copy", lambda v: f"{v:.3f}"),
        ("vs copy+fsync", "vs_synced", lambda v: f"{v:.3f}"),
        ("client peak RSS", "client_rss", human),
        ("ciphertext", "ciphertext", human),
    ]
    if any("upload_mbs" in r or "upload_error" in r for r in rows):
        cols += [
            ("prepare+upload MiB/s", "upload_mbs", lambda v: f"{v:,.1f}"),
            ("upload vs copy+fsync", "upload_vs_synced", lambda v: f"{v:.3f}"),
            ("upload client RSS", "upload_rss", human),
            ("API peak RSS", "api_rss", lambda v: human(v) if v else "-"),
        ]
    cells = [[head for head, _, _ in cols]] + [
        [fmt(r[key]) if r.get(key) is not None else "-" for _, key, fmt in cols] for r in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def start_room(workdir: Path) -> tuple[Any, str]:
    """An API and a runner in child processes (see _harness.Services), and a token of an owner org."""
    import _harness as h

    from cleanroom.client import Client
    from cleanroom.profile import Profile

    os.environ["CLEANROOM_HOME"] = str(workdir / "home")  # the children's profiles (pinned room keys)
    services = h.Services(workdir, runner_env={"CLEANROOM_POLL_SECONDS": "0.5"})
    try:
        with Client(services.url, services.admin_token, profile=Profile(name="bench-admin")) as admin:
            services.wait_ready(admin)
            token = admin.create_org("bench-owner", ["owner"])["token"]
    except BaseException:
        services.stop()
        raise
    return services, token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100M", help="comma-separated sizes, e.g. 100M,1G,2G")
    parser.add_argument(
        "--room",
        action="store_true",
        help="start an API and a runner here (needs Docker) and also measure uploads to it",
    )
    parser.add_argument("--url", help="the room's API, to also measure uploads")
    parser.add_argument("--token", help="an org token with the data-owner role")
    parser.add_argument("--api-pid", type=int, help="pid of the API process, to sample its memory")
    parser.add_argument("--tmp", help="directory for the generated files (default: the system's temp dir)")
    opts = parser.parse_args(argv)
    sizes = [parse_size(s) for s in opts.sizes.split(",") if s.strip()]
    results = []
    services = None
    with tempfile.TemporaryDirectory(prefix="cleanroom-bench-", dir=opts.tmp) as tmp:
        try:
            if opts.room:
                services, opts.token = start_room(Path(tmp) / "room")
                opts.url, opts.api_pid = services.url, services.api.pid
            for size in sizes:
                print(f"benchmarking {human(size)} ...", file=sys.stderr, flush=True)
                results.append(bench(size, Path(tmp), opts))
        finally:
            if services is not None:
                services.stop()
    print(table(results))
    print(
        "copies read a page-cached source; 'copy' ends in the page cache, 'copy+fsync' on the disk. "
        "prepare ends with an fsync of the ciphertext; 'vs' = prepare throughput / copy throughput."
    )
    for r in results:
        if r.get("upload_error"):
            print(f"{human(r['size'])}: {r['upload_error']}", file=sys.stderr)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
        "(other work on the machine slows every figure)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
