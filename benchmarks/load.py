"""Load test of the API: concurrent clients listing, uploading small datasets and submitting jobs.

    python benchmarks/load.py                                  # starts its own API, 50 clients, 60 s
    python benchmarks/load.py --clients 20 --seconds 30
    python benchmarks/load.py --url http://127.0.0.1:8000 --admin-token crt_... [--runner-token crt_...]

Without --url it starts `cleanroom serve` as a subprocess on a free loopback port with a temporary
data directory (and a per-org queue limit high enough that jobs stay queued: no runner runs). With
--url it uses that room: it must already have a room key (a runner started once), or give
--runner-token so this script can register one; it creates its orgs with unique names.

Setup: two owners upload the scenario's datasets, an analyst submits the scenario's plugins and the
owners approve them. Then --clients threads (half as the owners, half as the analyst), each with its
own keep-alive connection, loop until the time is up: 80% of their calls list datasets, plugins or
jobs; 20% upload a small dataset (declare + PUT of a fresh age ciphertext) or submit a job. Prints
per call type: requests, errors (HTTP >= 400 other than 429, and transport errors), 429s, requests
per second and p50/p95/p99/max latency, then checks the audit chain on the server.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cleanroom import bundle, scenario  # noqa: E402
from cleanroom.crypto import encrypt_bytes, generate_keypair  # noqa: E402

CALLS = ("list_datasets", "list_plugins", "list_jobs", "upload", "submit_job")
OWNER_MIX = (("list_datasets", 30), ("list_plugins", 25), ("list_jobs", 25), ("upload", 20))
ANALYST_MIX = (("list_datasets", 30), ("list_plugins", 25), ("list_jobs", 25), ("submit_job", 20))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnServer:
    """`cleanroom serve` as a subprocess on loopback, in a temporary data directory."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="cleanroom-load-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = f"crt_{secrets.token_hex(8)}.{secrets.token_urlsafe(32)}"
        env = {
            **os.environ,
            "CLEANROOM_DATA_DIR": str(self.tmp / "data"),
            "CLEANROOM_HOST": "127.0.0.1",
            "CLEANROOM_PORT": str(self.port),
            "CLEANROOM_BOOTSTRAP_TOKEN": self.admin_token,
            "CLEANROOM_RUNNER_TOKEN_FILE": str(self.tmp / "runner-token"),
            "CLEANROOM_MAX_QUEUED_JOBS_PER_ORG": "1000000",
        }
        self.log = open(self.tmp / "api.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from cleanroom.cli import main; main()", "serve"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the API did not start; see {self.tmp / 'api.log'}")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """CPU time the API process used so far (Linux; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def runner_token(self) -> str:
        return (self.tmp / "runner-token").read_text().strip()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class Room:
    url: str
    admin_token: str
    room_key: str = ""
    owner_tokens: list[str] = field(default_factory=list)
    analyst_token: str = ""
    spec: str = ""
    upload_policy: str = ""


def http(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=120)


def setup(url: str, admin_token: str, runner_token: str | None) -> Room:
    """Orgs, datasets, plugins and approvals, through the SDK like a person would."""
    from cleanroom.client import Client
    from cleanroom.prepare.ingest import new_join_secret
    from cleanroom.profile import Profile

    os.environ["CLEANROOM_HOME"] = tempfile.mkdtemp(prefix="cleanroom-load-home-")  # keys of the load orgs
    admin = Client(url, admin_token, profile=Profile(name="load-admin"))
    info = admin.room()
    if not info.get("ready"):
        if not runner_token:
            raise SystemExit("the room has no key yet: start its runner once, or pass --runner-token")
        keys = generate_keypair()
        with http(url, runner_token) as runner:
            runner.post(
                "/runner/register", json={"enc_public": keys.enc_public, "sign_public": keys.sign_public}
            ).raise_for_status()
    suffix = secrets.token_hex(3)
    names = {"retailer": f"load-retail-{suffix}", "bank": f"load-bank-{suffix}", "analyst": f"load-analyst-{suffix}"}

    def org(name: str, role: str) -> Client:
        token = admin.create_org(name, [role])["token"]
        client = Client(url, token, profile=Profile(name=f"{name}"))
        client.keys()
        return client

    retailer, bank = org(names["retailer"], "owner"), org(names["bank"], "owner")
    analyst = org(names["analyst"], "analyst")
    data = Path(tempfile.mkdtemp(prefix="cleanroom-load-data-"))
    files = scenario.write_data(data, 200)
    secret = new_join_secret()
    retail_ds, bank_ds = f"load.retail-{suffix}", f"load.bank-{suffix}"
    # the policies name the scenario's recipient: point them at this run's analyst; exact mode, so that the
    # privacy budget does not refuse every job after the first few (the jobs only queue: no runner runs)
    retail_policy = scenario.exact_policy(scenario.RETAIL_POLICY.replace("acme-analytics", names["analyst"]))
    bank_policy = scenario.exact_policy(scenario.BANK_POLICY.replace("acme-analytics", names["analyst"]))
    retailer.upload_dataset(
        files["retail"], name=retail_ds, policy=retail_policy, id_column="customer_id", join_secret=secret
    )
    bank.upload_dataset(files["bank"], name=bank_ds, policy=bank_policy, id_column="customer_id", join_secret=secret)
    ids = {}
    for name in scenario.PLUGINS:
        ids[name] = analyst.post(
            "/plugins", content=bundle.pack(REPO / "plugins" / name), headers={"content-type": "application/x-tar"}
        )["id"]
        retailer.decide_plugin(ids[name], retail_ds)
        bank.decide_plugin(ids[name], bank_ds)
    shutil.rmtree(data, ignore_errors=True)
    return Room(
        url=url,
        admin_token=admin_token,
        room_key=admin.room_keys()["enc_public"],
        owner_tokens=[retailer.token or "", bank.token or ""],
        analyst_token=analyst.token or "",
        upload_policy=f'[privacy]\nrequire_dp = false\n[release]\nrecipients = ["{names["analyst"]}"]\nreview = true\n',
        spec=scenario.job_spec(ids, recipient=names["analyst"], retail=retail_ds, bank=bank_ds),
    )


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    limited: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    samples: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, call: str, seconds: float, status: int | None, detail: str = "") -> None:
        with self.lock:
            self.latencies[call].append(seconds)
            if status == 429:
                self.limited[call] += 1
            elif status is None or status >= 400:
                self.errors[call] += 1
                self.samples.setdefault(call, f"{status}: {detail[:160]}")


def client_loop(room: Room, index: int, deadline: float, stats: Stats, seed: int) -> None:
    rng = random.Random(seed * 1000 + index)
    owner = index % 2 == 0
    token = room.owner_tokens[index // 2 % len(room.owner_tokens)] if owner else room.analyst_token
    mix = OWNER_MIX if owner else ANALYST_MIX
    calls, weights = [c for c, _ in mix], [w for _, w in mix]
    serial = 0
    with http(room.url, token) as c:
        while time.monotonic() < deadline:
            call = rng.choices(calls, weights)[0]
            serial += 1
            start = time.perf_counter()
            status: int | None = None
            detail = ""
            try:
                if call == "upload":
                    status, detail = _upload(c, room, f"load.c{index}-{serial}-{secrets.token_hex(2)}")
                elif call == "submit_job":
                    r = c.post("/jobs", json={"spec": room.spec})
                    status, detail = r.status_code, r.text
                else:
                    r = c.get("/" + call.removeprefix("list_"))
                    status, detail = r.status_code, r.text
            except httpx.HTTPError as exc:
                detail = f"{type(exc).__name__}: {exc}"
            stats.record(call, time.perf_counter() - start, status, detail)


def _upload(c: httpx.Client, room: Room, name: str) -> tuple[int, str]:
    """A small dataset: declare it, then PUT a fresh age ciphertext (the API only ever sees that)."""
    data = encrypt_bytes(b"_pid,x\n" + secrets.token_hex(16).encode() + b",1\n", [room.room_key])
    decl = c.post(
        "/datasets/uploads",
        json={
            "name": name,
            "policy": room.upload_policy,
            "row_count": 1,
            "mock": [{"x": 1}],
            "schema": {"columns": [{"name": "_pid", "type": "string"}, {"name": "x", "type": "integer"}]},
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        },
    )
    if decl.status_code != 201:
        return decl.status_code, decl.text
    put = c.put(decl.json()["put"], content=data, headers={"content-type": "application/octet-stream"})
    return put.status_code, put.text


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs{' (' + model + ')' if model else ''}, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )


def report(stats: Stats, seconds: float, clients: int) -> str:
    head = (
        f"{'call':<14}{'requests':>9}{'errors':>8}{'429':>6}{'req/s':>8}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}"
    )
    lines = [head, "-" * len(head)]
    everything: list[float] = []
    for call in CALLS:
        values = sorted(stats.latencies.get(call, []))
        everything += values
        lines.append(_row(call, values, stats.errors.get(call, 0), stats.limited.get(call, 0), seconds))
    lines.append("-" * len(head))
    lines.append(_row("all", sorted(everything), sum(stats.errors.values()), sum(stats.limited.values()), seconds))
    lines.append(f"{clients} clients for {seconds:.0f} s; upload = declare + PUT (two requests)")
    for call, sample in stats.samples.items():
        lines.append(f"first error of {call}: {sample}")
    return "\n".join(lines)


def _row(call: str, values: list[float], errors: int, limited: int, seconds: float) -> str:
    ms = [percentile(values, p) * 1000 for p in (50, 95, 99)] + [(values[-1] if values else float("nan")) * 1000]
    return f"{call:<14}{len(values):>9}{errors:>8}{limited:>6}{len(values) / seconds:>8.1f}" + "".join(
        f"{v:>9.1f}" for v in ms
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an existing room (default: start one on loopback)")
    parser.add_argument("--admin-token", help="its admin token (with --url)")
    parser.add_argument("--runner-token", help="with --url, when the room has no key yet: register one")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.url and not args.admin_token:
        parser.error("--url needs --admin-token")

    server = None if args.url else OwnServer()
    try:
        url = args.url or server.url  # type: ignore[union-attr]
        admin_token = args.admin_token or server.admin_token  # type: ignore[union-attr]
        print(f"machine: {machine()}", flush=True)
        print(f"room: {url}{' (started here, one uvicorn process)' if server else ''}", flush=True)
        t = time.monotonic()
        room = setup(url, admin_token, args.runner_token or (server.runner_token if server else None))
        print(
            f"setup: {time.monotonic() - t:.1f} s; running {args.clients} clients for {args.seconds:.0f} s ...",
            flush=True,
        )
        stats = Stats()
        cpu = server.cpu_seconds() if server else 0.0
        start = time.monotonic()
        deadline = start + args.seconds
        threads = [
            threading.Thread(target=client_loop, args=(room, i, deadline, stats, args.seed), daemon=True)
            for i in range(args.clients)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.monotonic() - start
        print(report(stats, elapsed, args.clients))
        if server:  # the API's own CPU time: on a shared machine, what the latencies cannot tell apart
            used, count = server.cpu_seconds() - cpu, sum(len(v) for v in stats.latencies.values())
            print(
                f"API process CPU: {used:.1f} s in {elapsed:.0f} s ({used / elapsed * 100:.0f}% of one core, "
                f"{used / max(count, 1) * 1000:.1f} ms per call); load average {os.getloadavg()[0]:.1f}"
            )
        with http(url, admin_token) as admin:
            check = admin.get("/audit/verify", timeout=300).json()
            sizes = {
                path: len(admin.get(path, timeout=300).json()["items"]) for path in ("/datasets", "/plugins", "/jobs")
            }
            alone = {}
            for path in sizes:  # one client alone, on the data the run left behind
                times = []
                for _ in range(5):
                    t = time.perf_counter()
                    admin.get(path, timeout=300).raise_for_status()
                    times.append(time.perf_counter() - t)
                alone[path] = sorted(times)[2] * 1000
        print(
            f"after the run: audit chain ok={check.get('ok')} ({check.get('count')} events); one client alone: "
            + ", ".join(f"GET {p} ({sizes[p]} items) {alone[p]:.0f} ms" for p in sizes)
            + " (median of 5; a page holds at most 200)"
        )
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
