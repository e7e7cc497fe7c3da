"""Shared helpers of the red-team suite: malicious plugins, the real sandbox, host-side listeners, a stack.

Most attacks run the compute phase exactly as a job does: `Sandbox.run_phase("compute", ...)` with a
wire request that holds a plugin bundle packed from a folder written here. The plugin is a preprocess
step whose hook does the attack and reports what it observed in a returned `obs` column (JSON), so
the assertions are on what the attacker could see (errnos, listings) and on host-side state.

The attacks that need the whole stack (API over HTTP, runner with the room key, Docker sandboxes)
share one module-scoped `stack` per test module to keep the run time down.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cleanroom import bundle
from cleanroom.sandbox import wire
from tests.dockerutil import job_containers, require_docker, require_image

LABEL = "cleanroom.job"
REDTEAM_RUNNER_ID = "redteam-" + secrets.token_hex(4)  # our containers' cleanroom.runner label
# Planted in this process's environment (the runner's and the launcher's): no sandbox may ever see it.
RUNNER_CANARY_VAR = "CLEANROOM_REDTEAM_RUNNER_SECRET"
RUNNER_CANARY = "runner-canary-" + secrets.token_hex(12)
os.environ.setdefault(RUNNER_CANARY_VAR, RUNNER_CANARY)
RUNNER_CANARY = os.environ[RUNNER_CANARY_VAR]

# Every malicious plugin starts with this: `attempt(name, fn)` records a result or the errno it got;
# `report(df)` returns the frame with the observations in an `obs` column.
PRELUDE = """\
from cleanroom.hookspecs import hookimpl
import errno, json, os, socket, sys, time

OBS = {}


def attempt(name, fn):
    try:
        value = fn()
    except BaseException as exc:  # the attacker wants to know exactly what stopped it
        OBS[name] = {"ok": False, "errno": getattr(exc, "errno", None), "type": type(exc).__name__,
                     "message": str(exc)[:300]}
        return None
    OBS[name] = {"ok": True, "value": value if isinstance(value, (int, float, str, bool, list, dict,
                                                                    type(None))) else repr(value)[:300]}
    return value


def report(df):
    out = df.copy()
    out["obs"] = json.dumps(OBS, default=repr)
    return out

"""


# ------------------------------------------------------------------------------------------ plugins


@dataclass(frozen=True)
class Plugin:
    id: str
    archive: bytes
    name: str
    kind: str
    folder: Path


def write_plugin(
    root: Path,
    name: str,
    code: str,
    *,
    kind: str = "preprocess",
    params: str = "",
    prelude: bool = True,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """A plugin folder (manifest + plugin.py) ready for `bundle.pack` or `Client.submit_plugin`."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cleanroom-plugin.toml").write_text(
        f'name = "{name}"\nversion = "1.0.0"\nkind = "{kind}"\nentry = "plugin.py"\n{params}'
    )
    (folder / "plugin.py").write_text((PRELUDE if prelude else "") + textwrap.dedent(code))
    for rel, text in (extra_files or {}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


def make_plugin(root: Path, name: str, code: str, **kw: Any) -> Plugin:
    folder = write_plugin(root, name, code, **kw)
    archive = bundle.pack(folder)
    manifest = bundle.unpack(archive).manifest
    return Plugin(bundle.bundle_id(archive), archive, name, manifest["kind"], folder)


def preprocess(root: Path, name: str, body: str) -> Plugin:
    """A preprocess plugin whose hook runs `body` (with `df` and `params` in scope) and reports."""
    code = (
        "@hookimpl\ndef preprocess(df, params):\n"
        + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ")
        + "\n    return report(df)\n"
    )
    return make_plugin(root, name, code)


def canary_frame(canary: str, n: int = 30, seed: int = 0) -> pd.DataFrame:
    """A small input whose `secret` column holds the canary on every row (so any leak shows it)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "_pid": [secrets.token_hex(32) for _ in range(n)],
            "region": rng.choice(["north", "south", "east", "west"], n),
            "spend": rng.gamma(3, 100, n).round(2),
            "secret": [f"{canary}-{i}" for i in range(n)],
        }
    )


# ------------------------------------------------------------------------------------------ sandbox


@dataclass
class Outcome:
    """What one compute phase gave back: the launcher's view, the response, and the plugin's report."""

    job_id: str
    phase: Any  # cleanroom.runner.launcher.PhaseResult
    result: dict[str, Any] | None
    frame: pd.DataFrame | None
    obs: dict[str, Any] = field(default_factory=dict)

    @property
    def stderr(self) -> str:
        return self.phase.stderr.decode("utf-8", "replace")

    @property
    def everything(self) -> bytes:
        """Every byte the phase emitted (response and log): what a leak would have to pass through."""
        return self.phase.stdout + self.phase.stderr

    def entry(self, name: str) -> dict[str, Any]:
        if name not in self.obs:
            raise AssertionError(
                f"the plugin reported no {name!r}: exit {self.phase.exit_code}, timed out "
                f"{self.phase.timed_out}, result {self.result}, log {self.stderr[-2000:]}"
            )
        return dict(self.obs[name])

    def errno(self, name: str) -> int | None:
        entry = self.entry(name)
        assert not entry["ok"], f"{name} was not stopped: {entry}"
        return entry["errno"]

    def ok(self, name: str) -> Any:
        entry = self.entry(name)
        assert entry["ok"], f"{name} failed: {entry}"
        return entry["value"]


def compute_request(
    job_id: str,
    plugins: list[Plugin],
    frames: dict[str, pd.DataFrame] | None = None,
    steps: list[dict[str, Any]] | None = None,
    max_output_bytes: int = 64 * 2**20,
) -> bytes:
    """The wire request the runner sends the compute phase (docs/design.md, "Sandbox phases")."""
    frames = frames if frames is not None else {"redteam.data": canary_frame("input")}
    if steps is None:
        steps = [
            {"plugin_id": p.id, "name": p.name, "kind": p.kind, "entry": "plugin.py", "params": {}, "dataset": None}
            for p in plugins
        ]
    files = {f"inputs/{i}.arrow": wire.frame_to_bytes(df) for i, df in enumerate(frames.values())}
    files.update({f"plugins/{p.id}.tar": p.archive for p in plugins})
    meta = {
        "job_id": job_id,
        "steps": steps,
        "max_output_bytes": max_output_bytes,
        "inputs": [{"dataset": name, "file": f"inputs/{i}.arrow"} for i, name in enumerate(frames)],
    }
    buf = io.BytesIO()
    wire.write_message(buf, "job.json", meta, files)
    return buf.getvalue()


def new_job_id() -> str:
    return "job_redteam_" + secrets.token_hex(6)


def run_compute(
    sandbox: Any,
    plugins: Plugin | list[Plugin],
    *,
    frames: dict[str, pd.DataFrame] | None = None,
    steps: list[dict[str, Any]] | None = None,
    timeout: float | None = 60,
    max_output: int | None = None,
    job_id: str | None = None,
    max_output_bytes: int = 64 * 2**20,
) -> Outcome:
    """Run the compute phase in the real sandbox container, as the runner does."""
    plugins = [plugins] if isinstance(plugins, Plugin) else plugins
    for _ in range(3):
        job_id = job_id or new_job_id()
        request = compute_request(job_id, plugins, frames, steps, max_output_bytes)
        phase = sandbox.run_phase("compute", job_id, request, timeout=timeout, max_output=max_output)
        if not killed_from_outside(phase):
            break
        job_id = None  # another runner on this engine removed "its orphans": ours. Run it again.
    result = frame = None
    obs: dict[str, Any] = {}
    with contextlib.suppress(wire.WireError):
        result, files = wire.read_message(io.BytesIO(phase.stdout), "result.json", 1 << 30)
        if "frames/joined.arrow" in files:
            frame = wire.frame_from_bytes(files["frames/joined.arrow"])
            if "obs" in frame.columns and len(frame):
                obs = json.loads(frame["obs"].iloc[0])
    return Outcome(job_id, phase, result, frame, obs)


def killed_from_outside(phase: Any) -> bool:
    """SIGKILL before the container wrote a byte, neither by our watchdog nor by the OOM killer.

    Other test runs sharing the engine may remove containers they believe are theirs (runners used to
    remove every sandbox container on the engine when they started); such a run is repeated.
    """
    return (
        phase.exit_code == 137
        and not phase.oom_killed
        and not phase.timed_out
        and not phase.stdout
        and not phase.stderr
    )


def containers_of(client: Any, job_id: str) -> list[Any]:
    """`docker ps -a --filter label=cleanroom.job=<id>`, plus warm-pool containers the job took."""
    return job_containers(client, job_id)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    client = require_docker()
    yield client
    client.close()


@pytest.fixture(scope="session")
def sandbox_image(docker_client: Any) -> str:
    return require_image(docker_client, "CLEANROOM_SANDBOX_IMAGE")


@pytest.fixture(scope="session")
def sandbox(docker_client: Any, sandbox_image: str) -> Any:
    """The runner's sandbox launcher with the runner's default limits."""
    from cleanroom.runner.launcher import Sandbox
    from cleanroom.settings import Settings

    return Sandbox(Settings(sandbox_image=sandbox_image, job_timeout_seconds=60), runner_id=REDTEAM_RUNNER_ID)


# ------------------------------------------------------------------------------------------ host side


class Listener:
    """A host-side TCP or UDP listener on all addresses that records every connection or datagram."""

    def __init__(self, kind: str = "tcp", port: int = 0, host: str = "0.0.0.0") -> None:
        self.kind = kind
        self.hits: list[tuple[str, bytes]] = []
        family_type = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
        self.sock = socket.socket(socket.AF_INET, family_type)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError:
            self.sock.bind((host, 0))  # e.g. port 53 needs root or is taken: any port shows the same
        self.port = self.sock.getsockname()[1]
        if kind == "tcp":
            self.sock.listen(16)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                if self.kind == "tcp":
                    conn, addr = self.sock.accept()
                    conn.settimeout(1)
                    try:
                        data = conn.recv(4096)
                    except OSError:
                        data = b""
                    conn.close()
                else:
                    data, addr = self.sock.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            self.hits.append((addr[0], data))

    def received(self, marker: bytes) -> list[tuple[str, bytes]]:
        return [hit for hit in self.hits if marker in hit[1]]

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for listener in made:
        listener.close()


def host_addresses(docker_client: Any) -> list[str]:
    """Addresses of this host a container could try: loopback, the docker bridge gateway, the primary IP."""
    found = {"127.0.0.1", "172.17.0.1"}
    with contextlib.suppress(Exception):
        for cfg in docker_client.networks.get("bridge").attrs["IPAM"]["Config"] or []:
            if cfg.get("Gateway"):
                found.add(cfg["Gateway"])
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
        found.add(s.getsockname()[0])
    return sorted(found)


def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# ------------------------------------------------------------------------------------------ whole stack


OWNER_POLICY = """\
[outputs]
allowed = ["aggregate", "model"]

[privacy]
k = 5
{extra_privacy}

[release]
recipients = ["{analyst}"]
review = false

[models]
estimators = ["ridge", "linear_regression", "decision_tree_regressor"]

[columns.region]
domain = ["north", "south", "east", "west"]
{extra}
"""


def owner_csv(path: Path, canary: str, n: int = 80, seed: int = 1) -> Path:
    """An owner's raw file: an id column, a region, a spend and a `secret_code` canary on every row."""
    rng = np.random.default_rng(seed)
    pd.DataFrame(
        {
            "customer_id": [f"C{seed}{i:05d}" for i in range(n)],
            "region": rng.choice(["north", "south", "east", "west"], n),
            "visits": rng.poisson(12, n),
            "spend": rng.gamma(3, 100, n).round(2),
            "secret_code": [f"{canary}x{i:04d}" for i in range(n)],
        }
    ).to_csv(path, index=False)
    return path


def upload_dataset(
    owner: Any,
    tmp: Path,
    name: str,
    canary: str,
    recipient: str,
    *,
    n: int = 80,
    seed: int = 1,
    extra_privacy: str = "require_dp = false",
    extra: str = "",
) -> str:
    """Upload an owner_csv file as `name`, with OWNER_POLICY naming `recipient` as the allowed recipient.

    By default in exact mode (`require_dp = false`, so every release waits for the owner's review): these
    attacks test the exact-mode checks (k, leverage, names). Pass `extra_privacy` for a DP dataset."""
    from cleanroom.prepare.ingest import new_join_secret

    path = owner_csv(tmp / f"{name}.csv", canary, n=n, seed=seed)
    policy = OWNER_POLICY.format(analyst=recipient, extra_privacy=extra_privacy, extra=extra)
    owner.upload_dataset(
        path, name=name, policy=policy, id_column="customer_id", join_secret=new_join_secret(), drop_identifiers=False
    )
    path.unlink()
    return name


def job_spec(
    name: str,
    recipient: str,
    dataset: str,
    steps: list[tuple[str, dict[str, Any]]],
    *,
    model: bool = False,
    aggregates: bool = False,
    epsilon: float | None = None,
    extra_inputs: tuple[str, ...] = (),
) -> str:
    lines = [f'name = "{name}"', f'recipient = "{recipient}"']
    for ds in (dataset, *extra_inputs):
        lines += ["[[inputs]]", f'dataset = "{ds}"']
    for pid, params in steps:
        lines += ["[[steps]]", f'plugin = "{pid}"', f"params = {_toml_inline(params)}"]
    lines += ["[outputs]", f"model = {str(model).lower()}", f"aggregates = {str(aggregates).lower()}"]
    if epsilon is not None:
        lines.append(f"epsilon = {epsilon}")
    return "\n".join(lines) + "\n"


class Stack:
    """One room (API over HTTP) and one runner (room key, Docker sandboxes) for a test module."""

    def __init__(self, tmp: Path, image: str, analyst_name: str = "mallory") -> None:
        from tests.conftest import Room, RunnerThread

        self.tmp = tmp
        self.room = Room(tmp / "api-data")
        self.image = image
        self.runner = RunnerThread(self.room, tmp / "runner-home")
        self.analyst_name = analyst_name
        self.analyst = self.room.org(analyst_name, "analyst")
        self._n = 0

    def unique(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self._n}"

    def owner(self, name: str) -> Any:
        return self.room.org(name, "owner")

    def dataset(self, owner: Any, name: str, canary: str, **kw: Any) -> str:
        return upload_dataset(owner, self.tmp, name, canary, self.analyst_name, **kw)

    def plugin(
        self,
        code: str,
        *,
        kind: str = "preprocess",
        params: str = "",
        prelude: bool = True,
        approvers: list[tuple[Any, str]] = (),
        submitter: Any = None,
    ) -> str:
        """Submit a plugin as the analyst (or `submitter`) and have each (owner, dataset) approve it."""
        name = self.unique(f"rt-{kind}")
        folder = write_plugin(self.tmp / "plugins", name, code, kind=kind, params=params, prelude=prelude)
        pid = (submitter or self.analyst).submit_plugin(folder)["id"]
        for owner, dataset in approvers:
            owner.decide_plugin(pid, dataset)
        return pid

    def job_spec(self, dataset: str, steps: list[tuple[str, dict[str, Any]]], **kw: Any) -> str:
        return job_spec(self.unique("rt-job"), self.analyst_name, dataset, steps, **kw)

    def run(self, spec: str, timeout: float = 180) -> dict[str, Any]:
        """Submit as the analyst; return the job's real outcome (the admin's view: status, error class,
        reason) once it ended, with its outcome time moved to now so that the analyst's view of it
        (`analyst.get_job`: released or nothing_released only) is final too."""
        job = self.analyst.submit_job(spec)
        return self.room.end_time_budget(job["id"], timeout=timeout)

    def api_bytes(self) -> list[tuple[Path, bytes]]:
        """Every file the API service keeps (database, blobs): the operator's view of the room."""
        out = []
        for path in sorted(self.room.settings.data_dir.rglob("*")):
            if path.is_file():
                out.append((path, path.read_bytes()))
        return out

    def close(self) -> None:
        self.runner.stop()
        self.room.stop()


def _toml_inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_inline(v)}" for k, v in value.items()) + " }" if value else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_inline(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


AGGREGATE_CODE = """\
@hookimpl
def analysis_spec(columns, params):
    return {"name": params["name"], "group_by": list(params["group_by"]),
            "metrics": [{"agg": "count"}, {"agg": "mean", "column": "spend"}]}
"""
AGGREGATE_PARAMS = (
    '[params.name]\ntype = "string"\nrequired = true\n'
    '[params.group_by]\ntype = "array"\nitems = "string"\nrequired = true\n'
)


@pytest.fixture(scope="session")
def shared_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Org key files shared by every CLEANROOM_HOME of the suite (module-scoped orgs keep their keys)."""
    return tmp_path_factory.mktemp("redteam-keys")


def new_home(tmp_path_factory: pytest.TempPathFactory, shared_keys: Path) -> Path:
    home = tmp_path_factory.mktemp("home")
    (home / "keys").symlink_to(shared_keys, target_is_directory=True)
    return home


@pytest.fixture(autouse=True)
def cleanroom_home(
    tmp_path_factory: pytest.TempPathFactory, shared_keys: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Like the suite-wide fixture (own profiles per test), with the org keys shared across the suite."""
    home = new_home(tmp_path_factory, shared_keys)
    monkeypatch.setenv("CLEANROOM_HOME", str(home))
    for var in ("CLEANROOM_URL", "CLEANROOM_TOKEN", "CLEANROOM_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    return home


@contextlib.contextmanager
def stack_for_module(tmp_path_factory: pytest.TempPathFactory, shared_keys: Path, name: str) -> Iterator[Stack]:
    """A Stack for a module-scoped fixture (set up before the per-test CLEANROOM_HOME exists)."""
    client = require_docker()
    require_image(client, "CLEANROOM_SANDBOX_IMAGE")
    client.close()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLEANROOM_HOME", str(new_home(tmp_path_factory, shared_keys)))

        for var in ("CLEANROOM_URL", "CLEANROOM_TOKEN", "CLEANROOM_PROFILE"):
            mp.delenv(var, raising=False)
        stack = Stack(tmp_path_factory.mktemp(name), os.environ["CLEANROOM_SANDBOX_IMAGE"])
        try:
            yield stack
        finally:
            stack.close()
