"""The report and the py-spy profiler of `benchmarks/jobs.py` (tables from its measurements)."""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _harness as h

STAGES = ("verify", "decrypt", "recode", "compute", "release")  # receipt.body.timings, in job order


def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


class PhaseProfiler(threading.Thread):
    """py-spy on every sandbox container of a job (the python process under docker-init)."""

    def __init__(self, docker_client: Any, label: str, pyspy: str, outdir: Path, tag: str, name: str) -> None:
        super().__init__(daemon=True)
        self.docker, self.label, self.pyspy, self.outdir, self.tag = docker_client, label, pyspy, outdir, tag
        self.job_name = name  # not `name`: a Thread's own name
        self.seen: set[str] = set()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.outputs: dict[str, Path] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                for c in h.job_containers(self.docker, self.label, self.job_name):
                    if c.id in self.seen or c.status != "running":
                        continue
                    pid = c.attrs.get("State", {}).get("Pid") or 0
                    python = self._python_pid(pid)
                    if python:
                        self.seen.add(c.id)
                        phase = c.labels.get("cleanroom.phase", "phase")
                        out = self.outdir / f"{self.tag}-{phase}.txt"
                        self.outputs[phase] = out
                        self.procs.append(
                            subprocess.Popen(
                                [
                                    self.pyspy,
                                    "record",
                                    "--pid",
                                    str(python),
                                    "--rate",
                                    "50",
                                    "--format",
                                    "raw",
                                    "--nonblocking",
                                    "-o",
                                    str(out),
                                ],
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                            )
                        )
            except Exception:  # noqa: BLE001 - keep trying while the job runs
                pass
            time.sleep(0.05)

    @staticmethod
    def _python_pid(init_pid: int) -> int | None:
        if not init_pid:
            return None
        try:
            children = Path(f"/proc/{init_pid}/task/{init_pid}/children").read_text().split()
        except OSError:
            return None
        for child in children:
            try:
                if b"python" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
            except OSError:
                continue
        return None

    def stop(self) -> dict[str, Path]:
        self._halt.set()
        self.join()
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
                proc.wait()
        return self.outputs


def summarise_profile(path: Path, top: int = 12) -> list[str]:
    """The hottest frames of a py-spy raw (collapsed) profile, inclusive share of the samples."""
    if not path.exists() or path.stat().st_size == 0:
        return [f"  (no samples in {path.name})"]
    total = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = []
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            file = where.split(":")[0].rstrip(")")
            parts = Path(file).parts
            short = "/".join(parts[-2:]) if parts else file
            frames.append(f"{name} ({short})")
        for frame in set(frames):
            inclusive[frame] += n
        if frames:
            own[frames[-1]] += n
    if not total:
        return [f"  (no samples in {path.name})"]
    skip = ("<module>", "_run_code", "_run_module_as_main", "main (", "run (threading", "_bootstrap")
    lines = [f"  {path.name}: {total} samples at 50 Hz (~{total / 50:.0f} s of wall time)", "    inclusive:"]
    shown = 0
    for frame, n in inclusive.most_common():
        if n == total or any(frame.startswith(s) for s in skip):
            continue
        lines.append(f"      {100 * n / total:5.1f}%  {frame}")
        shown += 1
        if shown >= top:
            break
    lines.append("    self:")
    for frame, n in own.most_common(top // 2):
        lines.append(f"      {100 * n / total:5.1f}%  {frame}")
    return lines


# --- the report --------------------------------------------------------------------------------------


def report(
    machine: dict[str, Any],
    image: str,
    opts: argparse.Namespace,
    over: list[dict[str, Any]],
    results: list[dict[str, Any]],
) -> str:
    lines = [
        "",
        "cleanroom job benchmark",
        "",
        f"machine: {machine['cpus']} CPUs ({machine.get('cpu_model') or '?'}), {h.human(machine['memory'])} RAM, "
        f"kernel {machine['kernel']}, Python {machine['python']}",
        f"docker: server {machine.get('docker_server')}, {machine.get('storage_driver')}, cgroup "
        f"{machine.get('cgroup')}, runtime {machine.get('docker_runtime')}",
        f"load average (1/5/15 min) at the start: {machine.get('load_start')}, at the end: "
        f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())} (other work on the machine makes the numbers noisy)",
        f"sandbox image: {image}",
        f"per-phase limits: memory {opts.job_memory}, {opts.job_cpus} CPU, timeout {opts.job_timeout} s; "
        f"direct run on {opts.direct_cpus or 'all'} CPU(s)",
        "runner warm pool: "
        + (
            "off (each job starts its containers when the runner claims it)"
            if opts.no_warm_pool
            else "on (before each run the benchmark waits until the pool's refill after the previous job has gone idle)"
        ),
        "",
    ]
    if over:
        lines += ["1. Container start overhead (median of runs, min-max)", ""]
        lines.append(
            h.table(
                ["what", "median", "min-max", "runs"],
                [[r["what"], f"{r['median']:.3f} s", f"{r['min']:.3f}-{r['max']:.3f} s", str(r["n"])] for r in over],
                "lrrr",
            )
        )
        base = over[0]["median"]
        iso = {r["phase"]: r["median"] for r in over if r["kind"] == "isolated"}
        plain = {r["phase"]: r["median"] for r in over if r["kind"] == "plain"}
        lines.append("")
        for ph in iso:
            lines.append(
                f"   {ph}: run_phase costs {iso[ph] - base:+.2f} s over `python -c pass`, of which "
                f"{plain.get(ph, base) - base:.2f} s is the phase's imports and "
                f"{iso[ph] - plain.get(ph, base):.2f} s the SDK path and isolation settings"
            )
        lines.append("")
    if results:
        lines += _pipeline_report(opts, [summarise(r) for r in results])
    return "\n".join(lines)


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[(len(ordered) - 1) // 2] if ordered else {}


def summarise(entry: dict[str, Any]) -> dict[str, Any]:
    """Medians over the runs of one size; peaks are the largest of the runs."""
    directs = entry.get("direct_runs") or []
    room = entry.get("room") or {}
    jobs = room.get("jobs") or []
    ok = [j for j in jobs if j.get("status") == "succeeded"]
    out: dict[str, Any] = {"rows": entry["rows"], "runs": len(ok), "room": room}
    if directs:
        out["direct"] = statistics.median(d["seconds"] for d in directs)
        out["direct_range"] = (min(d["seconds"] for d in directs), max(d["seconds"] for d in directs))
        out["direct_median_run"] = _median_run(directs, "seconds")
        out["direct_rss"] = max(d["peak_rss"] or 0 for d in directs)
    failed = [j for j in jobs if j.get("status") != "succeeded"]
    out["error"] = failed[0].get("error") if failed else None
    out["logs"] = failed[0].get("logs") if failed else None
    if ok:
        out["job"] = statistics.median(j["job_wall"] for j in ok)
        out["job_range"] = (min(j["job_wall"] for j in ok), max(j["job_wall"] for j in ok))
        out["timings"] = {k: statistics.median(j["timings"].get(k, 0) for j in ok) for k in (*STAGES, "total")}
        for key in ("inside", "inside_release"):
            inside = [j.get(key) or {} for j in ok]
            names = list(dict.fromkeys(n for i in inside for n in i))
            out[key] = {n: statistics.median(i.get(n, 0.0) for i in inside) for n in names}
        out["job_median_run"] = _median_run(ok, "job_wall")
        out["runner_rss"] = max(j["runner_peak"] for j in ok)
        out["containers"] = {
            ph: max((j.get("container_peaks") or {}).get(ph, 0) for j in ok) for ph in ("compute", "release")
        }
        out["sources"] = sorted({s for j in ok for s in j.get("container_source", [])})
        out["retried"] = sum(j.get("attempts", 1) - 1 for j in jobs)
    return out


def _pipeline_report(opts: argparse.Namespace, results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "2. The motivating pipeline: submit-to-succeeded in the clean room vs the same pandas/scikit-learn",
        f"   in one fresh process (median of --runs {opts.runs}, interleaved; min-max in brackets)",
        "",
    ]
    head = ["joined rows", "direct", "clean-room job", "ratio", "upload prep", "upload xfer", "e2e ratio", "r2"]
    rows = []
    for r in results:
        room = r["room"]
        job, direct_s = r.get("job"), r.get("direct")
        ratio = job / direct_s if job and direct_s else None
        prep, total = room.get("upload_prepare"), room.get("upload_total")
        e2e = (job + total) / direct_s if job and direct_s and total else None
        r2_room = (r.get("job_median_run") or {}).get("metrics", {}).get("r2", "-")
        r2_direct = (r.get("direct_median_run") or {}).get("metrics", {}).get("r2", "-")
        rng = r.get("job_range") or (0, 0)
        drng = r.get("direct_range") or (0, 0)
        rows.append(
            [
                f"{r['rows']:,}",
                f"{fmt_s(direct_s)} [{drng[0]:.1f}-{drng[1]:.1f}]",
                f"{fmt_s(job)} [{rng[0]:.1f}-{rng[1]:.1f}]" if job else (r.get("error") or "-"),
                f"{ratio:.2f}x" if ratio else "-",
                fmt_s(prep),
                fmt_s(total - prep) if total is not None and prep is not None else "-",
                f"{e2e:.2f}x" if e2e else "-",
                f"{r2_direct} / {r2_room}",
            ]
        )
    lines.append(h.table(head, rows))
    lines += [
        "",
        "   ratio = clean-room job / direct (goal: <= 1.3 at 1M rows). Upload (both datasets, once):",
        "   prep = client-side schema pass + HMAC pseudonyms + Arrow + age encryption, xfer = HTTP PUT and",
        "   the API storing the ciphertext; e2e ratio = (upload + job) / direct. r2: direct / clean room.",
        "",
    ]
    lines += [
        "   where the clean-room job's time goes (medians of receipt.body.timings; recode = the runner's",
        "   int64 codes for _pid; compute = feeding the compute container (started while the runner",
        "   decrypts and recodes) to its last byte; runner other = building and decoding the phase",
        "   messages, encrypting and uploading artifacts; API/poll = claim latency, context fetch, finish",
        "   and the client's 0.1 s polling)",
        "",
    ]
    head = ["joined rows", *STAGES, "runner other", "runner total", "API/poll", "job wall"]
    rows = []
    for r in results:
        t = r.get("timings")
        if not t:
            continue
        known = sum(t[k] for k in STAGES)
        rows.append(
            [
                f"{r['rows']:,}",
                *(fmt_s(t[k]) for k in STAGES),
                fmt_s(t["total"] - known),
                fmt_s(t["total"]),
                fmt_s(r["job"] - t["total"]),
                fmt_s(r["job"]),
            ]
        )
    if rows:
        lines.append(h.table(head, rows))
    for key, title in (
        (
            "inside",
            [
                "inside the compute container (medians of its log line; wait = started, "
                "imported, until the request's first byte;",
                "   read = the request off stdin, inputs = Arrow to pandas, steps = plugins on the joined frame,",
                "   encode = the joined frame to Arrow/zstd, write = the response to stdout)",
            ],
        ),
        (
            "inside_release",
            [
                "inside the release container (medians of its log line; warm-up = one made-up job through every check",
                "   before the wait; checks = frame decode, aggregates, model fit and checks, skops)",
            ],
        ),
    ):
        stages: list[str] = []
        for r in results:
            stages += [s for s in r.get(key) or {} if s not in stages]
        if stages:
            lines += ["", *(f"   {t}" if i == 0 else t for i, t in enumerate(title)), ""]
            lines.append(
                h.table(
                    ["joined rows", *stages],
                    [[f"{r['rows']:,}", *(fmt_s((r.get(key) or {}).get(s)) for s in stages)] for r in results],
                )
            )
    steps: list[str] = []
    for r in results:
        steps += [s for s in (r.get("direct_median_run") or {}).get("steps", {}) if s not in steps]
    lines += ["", "   the direct run, step by step (its median run)", ""]
    lines.append(
        h.table(
            ["joined rows", *steps],
            [
                [f"{r['rows']:,}", *(fmt_s((r.get("direct_median_run") or {}).get("steps", {}).get(s)) for s in steps)]
                for r in results
            ],
        )
    )
    lines += ["", "3. Peak memory (largest over the runs)", ""]
    head = [
        "joined rows",
        "direct RSS",
        "runner RSS",
        "runner RSS by job phase (median run)",
        "compute ctr",
        "release ctr",
        "ciphertext",
    ]
    rows = []
    for r in results:
        by = (r.get("job_median_run") or {}).get("runner_peak_by_phase") or {}
        peaks = r.get("containers") or {}
        rows.append(
            [
                f"{r['rows']:,}",
                h.human(r.get("direct_rss")),
                h.human(r.get("runner_rss")),
                ", ".join(f"{k} {h.human(v)}" for k, v in by.items() if k not in ("queued", "verifying")) or "-",
                h.human(peaks.get("compute")),
                h.human(peaks.get("release")),
                h.human(r["room"].get("ciphertext")),
            ]
        )
    lines.append(h.table(head, rows, "lrrlrrr"))
    src = sorted({s for r in results for s in r.get("sources", [])})
    idle = ", ".join(h.human((r.get("job_median_run") or {}).get("runner_rss_before")) for r in results)
    lines += [
        "",
        f"   containers: peak of the container's memory cgroup ({', '.join(src) or 'not sampled'}; counts "
        f"page cache too) against the limit {opts.job_memory}; runner: sampled VmRSS of the runner process "
        f"(idle before the job: {idle}); direct: VmHWM of its process",
    ]
    retried = sum(r.get("retried", 0) for r in results)
    if retried:
        lines.append(f"   {retried} job(s) were submitted again after a phase was killed from outside")
    return lines
