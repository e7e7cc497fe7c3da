"""What a job costs in the clean room: container start overhead, the motivating pipeline, peak memory.

    .venv/bin/python benchmarks/jobs.py                          # 100k and 1M joined rows
    .venv/bin/python benchmarks/jobs.py --rows 100000 --repeat 10
    .venv/bin/python benchmarks/jobs.py --rows 1000000 --job-memory 4g --profile prof/

1. Container start overhead: one sandbox phase that does nothing (`Sandbox.run_phase` with every
   isolation control, fed a trivial request that the phase refuses at once) against `docker run
   --rm <image> python -c pass` and against `docker run -i` of the same phase and request without
   the isolation settings; median (min-max) of --repeat runs each.
2. The motivating pipeline (`cleanroom.scenario`) on each --rows JOINED rows: both sides are
   generated with `scenario.write_data` (about 91 % of each side joins, so each side gets 1.1x the
   rows), uploaded through the SDK, the scenario's plugins submitted and approved, and the job run
   by a real runner against a real API (child processes on loopback). Reported: submit-to-succeeded
   wall time, the receipt's per-phase timings (the runner's decrypt and recode, each phase), the
   compute container's own stage times (its `compute: ...` line in the job log, read as an owner)
   and the client-side upload preparation (schema pass,
   HMAC pseudonyms, Arrow, age encryption) apart from the transfer. The baseline is the same pandas
   and scikit-learn work in one fresh process: read both CSVs, join on the raw id, the same three
   plugin functions, the spend-by-region table and the same Ridge on the same kind of split. The
   datasets are uploaded once; the job and the direct run then alternate --runs times (medians).
3. Peak memory: the runner process's peak RSS during the job (sampled, with the phase it was in),
   each sandbox container's peak from its memory cgroup (sampled in a thread: the runner removes
   the containers right after each phase), and the direct run's peak RSS.

The runner is `cleanroom runner` with CLEANROOM_JOB_MEMORY / CLEANROOM_JOB_TIMEOUT_SECONDS /
CLEANROOM_JOB_CPUS from --job-memory / --job-timeout / --job-cpus, except that it does not remove
other runners' sandbox containers on start (see benchmarks/_harness.py). Another runner starting on
the same engine still kills ours, so a job whose phase crashed is submitted again (--attempts) and
the report says so. With --profile DIR, py-spy
(from PATH or --py-spy) records the runner and each sandbox phase; the hottest frames are printed
and the raw collapsed stacks kept in DIR.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _harness as h  # noqa: E402
from _jobs_report import PhaseProfiler, report, summarise_profile  # noqa: E402

REPO = h.REPO
OVERLAP = 1 / 1.1  # scenario.make_data: both sides draw n of 1.1 n ids, so about n / 1.1 are in both


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def parse_rows(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        mult = {"k": 1_000, "m": 1_000_000}.get(part[-1], 1)
        out.append(int(float(part.rstrip("km")) * mult))
    return out


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


class Interfered(Exception):
    """A sandbox container was killed from outside (exit 137 without an OOM kill)."""


# --- 1. container start overhead ---------------------------------------------------------------------


def trivial_request(phase: str) -> bytes:
    """A request the phase refuses at once (after importing what it always imports)."""
    from cleanroom.sandbox import wire

    meta: dict[str, Any] = {"job_id": "bench-noop", "inputs": [], "steps": [], "max_output_bytes": 1024}
    if phase == "release":
        meta = {"job_id": "bench-noop", "policy": {}, "outputs": {}}
    buf = io.BytesIO()
    wire.write_message(buf, "job.json", meta, {})
    return buf.getvalue()


def overhead(image: str, repeat: int) -> list[dict[str, Any]]:
    from cleanroom.runner.launcher import Sandbox
    from cleanroom.settings import Settings

    sandbox = Sandbox(Settings(sandbox_image=image))  # the default limits, every control
    rows = []

    def timed(label: str, fn: Any, kind: str = "", phase: str = "") -> None:
        times: list[float] = []
        warm = True  # the first run warms the page cache and is not counted
        for _ in range(3 * repeat + 3):
            if len(times) >= repeat:
                break
            start = time.perf_counter()
            try:
                fn()
            except Interfered as exc:
                log(
                    f"overhead: a {exc} container was killed from outside (another runner's start "
                    "removing every cleanroom.job container?); run not counted"
                )
                continue
            if not warm:
                times.append(time.perf_counter() - start)
            warm = False
        rows.append({"what": label, "kind": kind, "phase": phase, **stats(times)})
        log(f"overhead: {label}: median {statistics.median(times):.3f} s")

    def docker_run(*args: str, stdin: bytes | None = None) -> None:
        done = subprocess.run(["docker", "run", "--rm", *args], input=stdin, capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"docker run failed: {done.stderr.decode()[-500:]}")

    timed("docker run --rm IMAGE python -c pass", lambda: docker_run(image, "python", "-c", "pass"))
    for phase in ("compute", "release"):
        request = trivial_request(phase)

        def isolated(phase: str = phase, request: bytes = request) -> None:
            res = sandbox.run_phase(phase, "bench-noop", request)
            if res.exit_code == 137 and not res.oom_killed:
                raise Interfered(phase)
            if res.exit_code != 0:
                raise RuntimeError(f"{phase}: exit {res.exit_code}: {res.stderr.decode()[-500:]}")

        timed(
            f"docker run --rm -i IMAGE {phase} phase, trivial request (no limits)",
            lambda phase=phase, request=request: docker_run(
                "-i", "--network", "none", image, "python", "-I", "-m", f"cleanroom.sandbox.{phase}", stdin=request
            ),
            "plain",
            phase,
        )
        timed(f"Sandbox.run_phase {phase}, trivial request (all controls)", isolated, "isolated", phase)
    return rows


# --- 2. the direct baseline ------------------------------------------------------------------------------


def _plugin(name: str) -> tuple[Any, dict[str, Any]]:
    import importlib.util
    import tomllib

    folder = REPO / "plugins" / name
    manifest = tomllib.loads((folder / "cleanroom-plugin.toml").read_text())
    spec = importlib.util.spec_from_file_location(f"bench_plugin_{name.replace('-', '_')}", folder / manifest["entry"])
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, manifest


def direct(retail_csv: str, bank_csv: str) -> dict[str, Any]:
    """The pipeline without the clean room, in this process (run it in a fresh child)."""
    import tomllib

    t0 = time.perf_counter()
    import numpy as np
    import pandas as pd
    from sklearn import linear_model

    from cleanroom import scenario
    from cleanroom.sandbox.bundles import validate_params
    from cleanroom.sandbox.release import models

    spec = tomllib.loads(scenario.job_spec({name: name for name in scenario.PLUGINS}))
    marks: dict[str, float] = {"import": time.perf_counter() - t0}

    def mark(name: str, since: float) -> float:
        now = time.perf_counter()
        marks[name] = now - since
        return now

    t = time.perf_counter()
    retail = pd.read_csv(retail_csv).rename(columns={"customer_id": "_pid"})
    bank = pd.read_csv(bank_csv).rename(columns={"customer_id": "_pid"})
    t = mark("read CSVs", t)
    frame = retail.merge(bank, on="_pid", how="inner", sort=False).reset_index(drop=True)
    del retail, bank
    rows = len(frame)
    t = mark("join", t)
    model_params: dict[str, Any] = {}
    agg_params: dict[str, Any] = {}
    for step in spec["steps"]:
        module, manifest = _plugin(step["plugin"])
        params = validate_params(manifest, step.get("params", {}))
        if manifest["kind"] == "preprocess":
            frame = module.preprocess(frame, params)
        elif manifest["kind"] == "features":
            frame = module.features(frame, params)
        elif manifest["kind"] == "model":
            model_params = params
        else:
            agg_params = params
    t = mark("drop ids, impute, one-hot", t)
    k = 10
    grouped = frame.dropna(subset=agg_params["group_by"] + ["spend"]).groupby(agg_params["group_by"])
    table = pd.DataFrame(
        {"_units": grouped["_pid"].nunique(), "count": grouped.size(), "mean_spend": grouped["spend"].mean()}
    )
    table = table[table["_units"] >= k].drop(columns="_units").reset_index()
    t = mark("aggregate", t)
    features, target = models.select_features(frame, {"target": model_params["target"], "features": None}, set())
    X = frame[features].astype("float64")
    y = frame[target].astype("float64")
    train, holdout = models.split(frame, spec["outputs"]["holdout_fraction"], spec["outputs"]["seed"])
    ridge = linear_model.Ridge(alpha=model_params["alpha"], fit_intercept=model_params["fit_intercept"])
    ridge.fit(X.iloc[train], y.iloc[train])
    scores = models.evaluate(ridge, "regression", X.iloc[holdout], y.iloc[holdout])
    t = mark("split, fit ridge, evaluate", t)
    assert np.isfinite(ridge.coef_).all() and len(table) > 0
    return {
        "seconds": time.perf_counter() - t0,
        "steps": marks,
        "rows": rows,
        "metrics": scores,
        "features": len(features),
        "peak_rss": h.proc_status(os.getpid(), "VmHWM"),
    }


def run_direct(paths: dict[str, Path], cpus: int | None = None) -> dict[str, Any]:
    """The direct pipeline in a fresh process; with `cpus`, pinned to that many CPUs and BLAS threads."""
    env = h.clean_env()
    if cpus:
        env.update({k: str(cpus) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
        env["BENCH_DIRECT_CPUS"] = str(cpus)
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--direct-child", str(paths["retail"]), str(paths["bank"])],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"direct run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- 2. the clean room -----------------------------------------------------------------------------------


def clean_room(
    joined: int,
    paths: dict[str, Path],
    workdir: Path,
    opts: argparse.Namespace,
    docker_client: Any,
    between: Any = None,
) -> dict[str, Any]:
    """Upload once, then run the job --runs times (calling `between()` before each: the direct run)."""
    import cleanroom.prepare.ingest as ingest
    from cleanroom import scenario
    from cleanroom.client import Client
    from cleanroom.prepare.ingest import new_join_secret
    from cleanroom.profile import Profile
    from cleanroom.runner.launcher import container_name

    os.environ["CLEANROOM_HOME"] = str(workdir / "home")
    runner_env = {
        "CLEANROOM_JOB_MEMORY": opts.job_memory,
        "CLEANROOM_JOB_TIMEOUT_SECONDS": str(opts.job_timeout),
        "CLEANROOM_JOB_CPUS": str(opts.job_cpus),
        "CLEANROOM_POLL_SECONDS": "0.2",
        "CLEANROOM_MAX_CONCURRENT_JOBS": "1",
        "CLEANROOM_WARM_POOL": str(not opts.no_warm_pool).lower(),
    }
    services = h.Services(workdir, runner_env=runner_env)
    out: dict[str, Any] = {"rows": joined}
    try:
        admin = Client(services.url, services.admin_token, profile=Profile(name="bench-admin"))
        services.wait_ready(admin)

        def org(name: str, *roles: str) -> Client:
            created = admin.create_org(name, list(roles))
            client = Client(services.url, created["token"], profile=Profile(name=f"bench-{name}"))
            client.keys()
            return client

        retailer, bank = org("retailer", "owner"), org("bank", "owner")
        analyst = org("acme-analytics", "analyst")
        secret = new_join_secret()

        # client-side preparation (schema, HMAC, Arrow, encryption) timed apart from the transfer
        real_prepare = ingest.prepare
        prep_seconds: list[float] = []

        def timed_prepare(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return real_prepare(*args, **kwargs)
            finally:
                prep_seconds.append(time.perf_counter() - start)

        ingest.prepare = timed_prepare  # type: ignore[assignment]
        try:
            start = time.perf_counter()
            retailer.upload_dataset(
                paths["retail"],
                name="retail.purchases",
                policy=scenario.RETAIL_POLICY,
                id_column="customer_id",
                join_secret=secret,
            )
            bank.upload_dataset(
                paths["bank"],
                name="bank.customers",
                policy=scenario.BANK_POLICY,
                id_column="customer_id",
                join_secret=secret,
            )
            out["upload_total"] = time.perf_counter() - start
        finally:
            ingest.prepare = real_prepare  # type: ignore[assignment]
        out["upload_prepare"] = sum(prep_seconds)
        out["ciphertext"] = sum(
            c.get_dataset(name).get("size") or 0
            for c, name in ((retailer, "retail.purchases"), (bank, "bank.customers"))
        )
        log(f"{joined:,} rows: uploaded in {out['upload_total']:.1f} s ({out['upload_prepare']:.1f} s preparing)")

        ids = {name: analyst.submit_plugin(REPO / "plugins" / name)["id"] for name in scenario.PLUGINS}
        for pid in ids.values():
            retailer.decide_plugin(pid, "retail.purchases")
            bank.decide_plugin(pid, "bank.customers")

        jobs_done: list[dict[str, Any]] = []
        out["jobs"] = jobs_done

        def one_job() -> dict[str, Any]:
            out: dict[str, Any] = {}
            phase = {"now": "queued"}
            assert services.runner is not None
            rss = h.RssSampler(services.runner.pid, label=lambda: phase["now"])
            runner_rss_before = h.proc_status(services.runner.pid, "VmRSS")
            rss.start()
            job = analyst.submit_job(scenario.job_spec(ids))
            submitted = time.perf_counter()
            label = f"cleanroom.job={job['id']}"
            name = container_name(job["id"], "")  # warm-pool containers: renamed when the job takes them
            mem = h.ContainerMemorySampler(docker_client, label, name=name)
            mem.start()
            profiler = None
            runner_spy = None
            if opts.profile:
                tag = f"{joined}-run{len(jobs_done) + 1}"
                profiler = PhaseProfiler(docker_client, label, opts.py_spy, opts.profile, tag, name)
                profiler.start()
                runner_spy = subprocess.Popen(
                    [
                        opts.py_spy,
                        "record",
                        "--pid",
                        str(services.runner.pid),
                        "--rate",
                        "50",
                        "--format",
                        "raw",
                        "--nonblocking",
                        "-o",
                        str(opts.profile / f"{tag}-runner.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            timeline: list[tuple[float, str, str]] = []
            deadline = submitted + 2 * opts.job_timeout + 600
            while True:
                state = analyst.get_job(job["id"])
                key = (state["status"], state.get("phase") or "")
                if not timeline or timeline[-1][1:] != key:
                    timeline.append((time.perf_counter() - submitted, *key))
                    phase["now"] = key[1] or key[0]
                    log(f"{joined:,} rows: {key[0]} {key[1]} at {timeline[-1][0]:.1f} s")
                if state["status"] in ("succeeded", "failed", "cancelled", "timed_out", "rejected"):
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"job {job['id']} did not finish")
                time.sleep(0.1)
            out["job_wall"] = time.perf_counter() - submitted
            out["status"] = state["status"]
            out["timeline"] = timeline
            out["runner_peak"] = rss.stop()
            out["runner_peak_by_phase"] = rss.by_label
            out["runner_rss_before"] = runner_rss_before
            out["container_peaks"] = mem.stop()
            out["container_source"] = sorted(set(mem.source.values()))
            if runner_spy is not None:
                runner_spy.send_signal(signal.SIGINT)
                runner_spy.wait(timeout=60)
            if profiler is not None:
                profiler.stop()
            out["job_id"] = job["id"]
            if state["status"] != "succeeded":
                out["error_class"] = state.get("error_class")
                out["error"] = f"{state['status']} ({state.get('error_class')})"
                try:
                    out["logs"] = retailer.job_logs(job["id"])[-3000:]
                except Exception as exc:  # noqa: BLE001
                    out["logs"] = f"(no logs: {exc})"
                return out
            return out

        def finished_job() -> dict[str, Any]:
            job_out: dict[str, Any] = {}
            for attempt in range(1, opts.attempts + 1):
                job_out = one_job()
                if job_out.get("error_class") != "sandbox_crash" or attempt == opts.attempts:
                    break
                log(
                    f"{joined:,} rows: a phase crashed (killed from outside? exit codes are in the logs); "
                    "submitting the job again"
                )
            job_out["attempts"] = attempt
            if job_out["status"] != "succeeded":
                return job_out
            retailer.approve_release(job_out["job_id"])
            result_dir = workdir / f"result-{job_out['job_id']}"
            analyst.get_result(job_out["job_id"], result_dir)
            job_out["metrics"] = json.loads((result_dir / "metrics.json").read_text())["metrics"]
            job_log = retailer.job_logs(job_out["job_id"])
            # the timings are in the job's log (for the owners), not in the receipt (the recipient's)
            job_out["timings"] = json.loads(job_log.split("timings: ", 1)[1].splitlines()[0])
            job_out["inside"] = compute_stages(job_log)
            job_out["inside_release"] = compute_stages(job_log, "release: ")
            return job_out

        runner_label = "cleanroom.runner=" + admin.room()["keys"]["fingerprint"].removeprefix("SHA256:")[:16]
        out["warm_pool"] = not opts.no_warm_pool
        out["pool_waits"] = []
        for _ in range(opts.runs):
            if not opts.no_warm_pool:  # the refill after a job must not overlap the next measurement
                out["pool_waits"].append(h.wait_for_warm_pool(docker_client, runner_label))
            if between is not None:
                between()
            jobs_done.append(finished_job())
            if jobs_done[-1]["status"] != "succeeded":
                break
        return out
    finally:
        services.stop()
        if opts.keep:
            log(f"kept {workdir} (api.log, runner.log)")


def compute_stages(log_text: str, prefix: str = "compute: ") -> dict[str, float]:
    """A phase container's own stage times, from its `compute: read 0.12 s, ...` log line (or the
    release phase's `release: ok=True artifacts=4; warm-up 0.09 s, wait 3.20 s, ...`)."""
    for line in log_text.splitlines():
        if line.startswith(prefix) and line.endswith(" s"):
            out = {}
            for part in line.removeprefix(prefix).split("; ")[-1].split(", "):
                name, _, value = part.rpartition(" ")[0].rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    continue
            return out
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="100000,1000000", help="joined rows, comma-separated (100k, 1M ok)")
    parser.add_argument("--repeat", type=int, default=7, help="runs per container overhead measure")
    parser.add_argument(
        "--job-memory",
        default=os.environ.get("CLEANROOM_JOB_MEMORY", "2g"),
        help="CLEANROOM_JOB_MEMORY of the runner (default: the setting's 2g)",
    )
    parser.add_argument("--job-timeout", type=int, default=int(os.environ.get("CLEANROOM_JOB_TIMEOUT_SECONDS", 1800)))
    parser.add_argument("--job-cpus", type=float, default=float(os.environ.get("CLEANROOM_JOB_CPUS", 1.0)))
    parser.add_argument(
        "--attempts",
        type=int,
        default=2,
        help="submit a job again when a phase was killed from outside (sandbox_crash)",
    )
    parser.add_argument("--runs", type=int, default=3, help="job and direct runs per size (medians)")
    parser.add_argument(
        "--direct-cpus",
        type=int,
        default=None,
        help="pin the direct run to this many CPUs (and BLAS threads); default: all, as a "
        "data scientist would run it (each sandbox phase gets --job-cpus)",
    )
    parser.add_argument(
        "--no-warm-pool",
        action="store_true",
        help="run the runner without its warm pool (each job starts its containers at the claim)",
    )
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--profile", type=Path, help="folder for py-spy profiles of the runner and the phases")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="the py-spy binary (for --profile)")
    parser.add_argument("--tmp", help="folder for the generated data and the room's state (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and logs")
    parser.add_argument("--json", type=Path, help="also write every measurement as JSON here")
    parser.add_argument("--direct-child", nargs=2, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)

    if opts.direct_child:
        if os.environ.get("BENCH_DIRECT_CPUS"):
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: int(os.environ["BENCH_DIRECT_CPUS"])])
        print(json.dumps(direct(*opts.direct_child)))
        return 0
    if opts.profile:
        if not opts.py_spy:
            parser.error("--profile needs py-spy (pip install py-spy, or give --py-spy PATH)")
        opts.profile.mkdir(parents=True, exist_ok=True)

    import docker

    from cleanroom import scenario

    image = h.sandbox_image()
    client = docker.from_env(timeout=300)
    machine = h.machine_info(client)
    machine["load_start"] = "/".join(f"{x:.2f}" for x in os.getloadavg())
    over = [] if opts.skip_overhead else overhead(image, opts.repeat)
    results: list[dict[str, Any]] = []
    if opts.tmp:
        Path(opts.tmp).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="cleanroom-jobs-", dir=opts.tmp))
    try:
        for joined in [] if opts.skip_pipeline else parse_rows(opts.rows):
            n = math.ceil(joined / OVERLAP)
            work = tmp / f"rows-{joined}"
            start = time.perf_counter()
            paths = scenario.write_data(work / "data", n)
            log(f"{joined:,} joined rows: generated {n:,} rows per side in {time.perf_counter() - start:.1f} s")
            entry: dict[str, Any] = {"rows": joined, "per_side": n, "direct_runs": []}

            def direct_run(entry: dict[str, Any] = entry, paths: dict[str, Path] = paths, joined: int = joined) -> None:
                done = run_direct(paths, opts.direct_cpus)
                entry["direct_runs"].append(done)
                entry["rows"] = done["rows"]
                log(f"{joined:,} rows: direct run {done['seconds']:.1f} s, {done['rows']:,} joined")

            entry["room"] = clean_room(joined, paths, work, opts, client, between=direct_run)
            results.append(entry)
            if opts.json:
                opts.json.write_text(
                    json.dumps({"machine": machine, "overhead": over, "results": results}, indent=2, default=str)
                )
    finally:
        if not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(report(machine, image, opts, over, results))
    if opts.profile:
        print("\nprofiles (py-spy, collapsed stacks in " + str(opts.profile) + ")")
        for path in sorted(opts.profile.glob("*.txt")):
            print("\n".join(summarise_profile(path)))
    for r in results:
        for j in (r.get("room") or {}).get("jobs", []):
            if j.get("logs"):
                print(f"\n{r['rows']:,} rows: job {j.get('job_id')} logs (tail)\n{j['logs']}", file=sys.stderr)
    if opts.json:
        opts.json.write_text(
            json.dumps({"machine": machine, "overhead": over, "results": results}, indent=2, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
