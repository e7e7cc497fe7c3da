"""Throughput and memory of preparing (pseudonymising + encrypting) and uploading datasets.

    python benchmarks/upload.py                       # 100M only
    python benchmarks/upload.py --sizes 100M,1G,2G
    python benchmarks/upload.py --sizes 1G --url https://room.example --token $TOKEN --api-pid 4242

Generates CSV files of each size in a temporary directory and prints, per size: a plain file copy
on the same disk (shutil.copyfile), `cleanroom.ingest.prepare` (schema pass, HMAC pseudonyms, Arrow
IPC, age encryption), their ratio and the peak RSS of the process that prepared. Every measured step
runs in a fresh child process, so the peak RSS is that step's alone. With --url and --token it also
uploads through the API (`Client.upload_dataset`, which prepares again and then streams the
ciphertext) and, with --api-pid, samples the API process's resident memory meanwhile.
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

UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}

# runs in a child: prepare (or upload) one file and print what it measured as JSON
CHILD = r"""
import json, sys, time
args = json.loads(sys.argv[1])
from cleanroom.crypto import generate_keypair
from cleanroom.ingest import new_join_secret, prepare
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
            table = pa.table({
                "customer_id": np.char.add("C", ids),
                "email": np.char.add(np.char.add("user", ids), "@example.com"),
                "age": rng.integers(18, 90, n),
                "income": rng.normal(50_000, 15_000, n).round(2),
                "region": regions[rng.integers(0, len(regions), n)],
                "signup": pa.array(rng.integers(10_000, 19_000, n).astype("datetime64[D]")),
                "score": rng.random(n).round(6),
            })
            pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=rows == 0))
            rows += n
    return rows


def measured_child(args: dict[str, Any]) -> tuple[dict[str, Any] | None, int]:
    """Run CHILD with `args` in a fresh parent; return (its JSON answer, its peak RSS in bytes)."""
    done = subprocess.run([sys.executable, "-c", PEAK, CHILD, json.dumps(args)], capture_output=True,
                          text=True, check=True)
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


def bench(size: int, workdir: Path, opts: argparse.Namespace) -> dict[str, Any]:
    src = workdir / f"data-{size}.csv"
    rows = generate_csv(src, size)
    actual = src.stat().st_size
    dst = workdir / "copy.csv"
    start = time.perf_counter()
    shutil.copyfile(src, dst)
    copy_s = time.perf_counter() - start
    dst.unlink()
    answer, peak = measured_child({"mode": "prepare", "path": str(src), "workdir": str(workdir)})
    row: dict[str, Any] = {"size": actual, "rows": rows, "copy_mbs": actual / copy_s / 2**20}
    if answer:
        row.update(prep_mbs=actual / answer["seconds"] / 2**20, ratio=answer["seconds"] / copy_s,
                   client_rss=peak, ciphertext=answer["ciphertext"])
    if opts.url and opts.token:
        sampler = RssSampler(opts.api_pid) if opts.api_pid else None
        if sampler:
            sampler.start()
        name = f"bench.upload-{secrets.token_hex(4)}"
        try:
            answer, peak = measured_child({"mode": "upload", "path": str(src), "url": opts.url,
                                           "token": opts.token, "name": name})
        except subprocess.CalledProcessError:
            answer = None
        api_peak = sampler.stop() if sampler else None
        if answer:
            row.update(upload_mbs=actual / answer["seconds"] / 2**20, upload_rss=peak, api_rss=api_peak)
        else:
            row["upload_error"] = "upload failed (see stderr); is cleanroom.client.Client available?"
    src.unlink()
    return row


def table(rows: list[dict[str, Any]]) -> str:
    cols = [("size", "size", human), ("rows", "rows", lambda v: f"{v:,}"),
            ("copy MiB/s", "copy_mbs", lambda v: f"{v:,.0f}"),
            ("prepare MiB/s", "prep_mbs", lambda v: f"{v:,.1f}"),
            ("ratio", "ratio", lambda v: f"{v:.1f}x"), ("client peak RSS", "client_rss", human),
            ("ciphertext", "ciphertext", human)]
    if any("upload_mbs" in r or "upload_error" in r for r in rows):
        cols += [("prepare+upload MiB/s", "upload_mbs", lambda v: f"{v:,.1f}"),
                 ("upload client RSS", "upload_rss", human),
                 ("API peak RSS", "api_rss", lambda v: human(v) if v else "-")]
    cells = [[head for head, _, _ in cols]] + [[fmt(r[key]) if r.get(key) is not None else "-"
                                                for _, key, fmt in cols] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100M", help="comma-separated sizes, e.g. 100M,1G,2G")
    parser.add_argument("--url", help="the room's API, to also measure uploads")
    parser.add_argument("--token", help="an org token with the data-owner role")
    parser.add_argument("--api-pid", type=int, help="pid of the API process, to sample its memory")
    parser.add_argument("--tmp", help="directory for the generated files (default: the system's temp dir)")
    opts = parser.parse_args(argv)
    sizes = [parse_size(s) for s in opts.sizes.split(",") if s.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="cleanroom-bench-", dir=opts.tmp) as tmp:
        for size in sizes:
            print(f"benchmarking {human(size)} ...", file=sys.stderr, flush=True)
            results.append(bench(size, Path(tmp), opts))
    print(table(results))
    for r in results:
        if r.get("upload_error"):
            print(f"{human(r['size'])}: {r['upload_error']}", file=sys.stderr)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
