"""API fuzzing with schemathesis against /openapi.json of a real room over HTTP on loopback.

For every operation of the schema, schemathesis generates positive and negative requests (a
bounded number of examples each) and sends them as one org: admin, a data owner, and the runner
(its own routes only). Checks: no 5xx, and every response whose status the schema declares matches
the declared schema. The room is populated first (room key, datasets, plugins, approvals, a queued
job, a pending upload) and path parameters name those real objects half of the time, so fuzzed
bodies reach the code behind the lookups instead of stopping at a 404.

schemathesis's pytest plugin (`schemathesis.pytest.from_fixture`) does not work with pytest 9.2
(it sets `request.node._nodeid`), so this drives its Python API: `operation.as_strategy()` under a
Hypothesis `@given`, one operation and generation mode at a time, collecting every failure.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from cleanroom import scenario
from cleanroom.crypto import generate_keypair
from tests.scenario_setup import setup_scenario

CHECKS = [not_a_server_error, response_schema_conformance]
MAX_EXAMPLES = 40  # per operation and generation mode: ~40 operations x 2 modes x 3 callers
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)

# Integer query parameters that are known to answer 5xx at the int64 edges (xfail reproducers below).
KNOWN_BOUNDARY: dict[tuple[str, str, str], str] = {}
INT64_EDGES = (2**63, -(2**63) - 1, 10**30)
# no [columns.X] rules or recipients: the room refuses rules for columns a schema lacks and unknown orgs
MINIMAL_POLICY = "[privacy]\nk = 10\n"


def _beyond_int64(value: Any) -> bool:
    """Whether FastAPI would read `value` as an integer that SQLite cannot bind."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return False
    try:
        number = int(value)
    except ValueError:
        return False
    return not -(2**63) <= number < 2**63


# Inputs that hit bugs already reported, each with an xfail(strict) reproducer below: (operation,
# predicate on the case, reason). Generation skips them (so the fuzzer keeps looking for others
# on the same operation); remove an entry when its bug is fixed (its reproducer then XPASSes).
KNOWN: list[tuple[str, Callable[[Any], bool], str]] = []


class Objects:
    """A populated room: tokens by caller, and real values for path parameters by name."""

    def __init__(self, url: str, tokens: dict[str, str], values: dict[str, list[str]]) -> None:
        self.url = url
        self.tokens = tokens
        self.values = values


@pytest.fixture
def objects(room: Any, tmp_path: Path) -> Objects:
    keys = generate_keypair()
    httpx.post(
        room.url + "/runner/register",
        headers={"authorization": f"Bearer {room.runner_token}"},
        json={"enc_public": keys.enc_public, "sign_public": keys.sign_public},
    ).raise_for_status()
    retailer, _, analyst, _, ids = setup_scenario(room.org, tmp_path, 100, approve=True)
    job = analyst.submit_job(scenario.job_spec(ids))["id"]
    upload = retailer.post(
        "/datasets/uploads",
        json={
            "name": "retail.pending",
            "policy": MINIMAL_POLICY,
            "row_count": 1,
            "mock": [],
            "schema": {"columns": [{"name": "_pid", "type": "string"}]},
            "sha256": "ab" * 32,
            "size": 10,
        },
    )
    approvals = [a["id"] for a in retailer.get_plugin(ids["impute"])["approvals"]]
    tokens = {"admin": room.admin_token, "owner": retailer.token or "", "runner": room.runner_token}
    values = {
        "name": ["retail.purchases", "bank.customers", "retailer", "metrics.json"],
        "ref": [*ids.values(), "impute@1.0.0", ids["impute"][:12]],
        "plugin_id": list(ids.values()),
        "approval_id": approvals,
        "job_id": [job],
        "release_id": [job],
        "upload_id": [upload["upload_id"]],
    }
    return Objects(room.url, tokens, values)


def _real_objects(case: Any, objects: Objects) -> None:
    """Half of the cases (chosen by the case's own values, so a failure replays) name real objects."""
    params = case.path_parameters
    if not params or zlib.crc32(repr(sorted(params.items())).encode()) % 2:
        return
    for name in list(params):
        real = objects.values.get(name)
        if real:
            params[name] = real[zlib.crc32((name + repr(params)).encode()) % len(real)]


def fuzz_operation(operation: Any, mode: GenerationMode, objects: Objects, who: str) -> str | None:
    """Run one operation's generated cases in one mode; the failure (with a curl line) or None."""
    headers = {"authorization": f"Bearer {objects.tokens[who]}"}
    label = f"{operation.method.upper()} {operation.path}"
    known = [predicate for op, predicate, _ in KNOWN if op == label]
    last: dict[str, Any] = {}

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        _real_objects(case, objects)
        assume(not any(predicate(case) for predicate in known))
        last["case"] = case
        case.call_and_validate(base_url=objects.url, headers=headers, checks=CHECKS, timeout=30)

    try:
        check()
    except Unsatisfiable:
        return None  # nothing in this operation can be made invalid (no body, only string params)
    except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - schemathesis raises a group of failures
        case = last.get("case")
        curl = case.as_curl_command(headers=headers) if case is not None else "?"
        return f"[{who}] {label} ({mode.value}): {type(exc).__name__}: {str(exc)[:800]}\n    reproduce: {curl}"
    return None


def run_fuzz(objects: Objects, who: str, path_prefix: str = "/") -> list[str]:
    """Fuzz every operation under `path_prefix` as `who`; return the failures (empty when clean)."""
    schema = schemathesis.openapi.from_url(objects.url + "/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith(path_prefix):
            continue
        operations += 1
        for mode in GenerationMode:
            failure = fuzz_operation(operation, mode, objects, who)
            if failure:
                failures.append(failure)
    assert operations > 0, f"no operation under {path_prefix} in the schema"
    return failures


@pytest.mark.slow
def test_fuzz_as_admin(objects: Objects) -> None:
    failures = run_fuzz(objects, "admin")
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
def test_fuzz_as_owner(objects: Objects) -> None:
    failures = run_fuzz(objects, "owner")
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
def test_fuzz_runner_routes_as_runner(objects: Objects) -> None:
    failures = run_fuzz(objects, "runner", "/runner/")
    assert not failures, "\n\n".join(failures)


def test_integer_query_parameters_at_int64_edges(objects: Objects) -> None:
    """Random generation rarely picks integers past SQLite's int64; this sweep sends them on purpose."""
    spec = httpx.get(objects.url + "/openapi.json").json()
    headers = {"authorization": f"Bearer {objects.tokens['admin']}"}
    failures, sent = [], 0
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            params = op.get("parameters", [])
            url = path
            for p in params:
                if p["in"] == "path":
                    url = url.replace("{" + p["name"] + "}", (objects.values.get(p["name"]) or ["x"])[0])
            for p in params:
                if p["in"] != "query" or p.get("schema", {}).get("type") != "integer":
                    continue
                for value in INT64_EDGES:
                    if (method.upper(), path, p["name"]) in KNOWN_BOUNDARY:
                        continue
                    sent += 1
                    resp = httpx.request(method, objects.url + url, params={p["name"]: value}, headers=headers)
                    if resp.status_code >= 500:
                        failures.append(f"{method.upper()} {url}?{p['name']}={value}: {resp.status_code}")
    assert sent, "the schema has no integer query parameter any more: drop this test"
    assert not failures, failures


# Regression tests of the 5xx bugs the fuzzer found (fixed).


@pytest.fixture
def quiet_server_errors(room: Any) -> Iterator[None]:
    """Keep the in-process API from logging the 500's traceback while pytest formats the xfail.

    On CPython 3.11 before 3.11.8 the AST recursion counter is shared between threads: the server
    thread formatting a traceback (carets use `ast`) while pytest parses source for its report can
    raise "SystemError: AST constructor recursion depth mismatch" (pytest-dev/pytest#10763).
    Depends on `room`: starting uvicorn re-configures (and re-enables) its loggers.
    """
    import logging

    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "cleanroom.api")]
    before = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    yield
    for lg, was in zip(loggers, before, strict=True):
        lg.disabled = was


@pytest.mark.usefixtures("quiet_server_errors")
def test_audit_after_beyond_int64(room: Any) -> None:
    headers = {"authorization": f"Bearer {room.admin_token}"}
    for after in (2**63, -(2**63) - 1):
        resp = httpx.get(room.url + "/audit", params={"after": after}, headers=headers)
        assert resp.status_code == 400 or resp.status_code == 200, (after, resp.status_code, resp.text)


@pytest.mark.usefixtures("quiet_server_errors")
def test_upload_row_count_beyond_int64_is_refused_up_front(room: Any) -> None:
    import hashlib

    from cleanroom.crypto import encrypt_bytes

    keys = generate_keypair()
    runner = {"authorization": f"Bearer {room.runner_token}"}
    httpx.post(
        room.url + "/runner/register",
        headers=runner,
        json={"enc_public": keys.enc_public, "sign_public": keys.sign_public},
    ).raise_for_status()
    owner = {"authorization": f"Bearer {room.admin.create_org('retailer', ['owner'])['token']}"}
    data = encrypt_bytes(b"_pid\nabc\n", [keys.enc_public])
    decl = httpx.post(
        room.url + "/datasets/uploads",
        headers=owner,
        json={
            "name": "big.rows",
            "policy": MINIMAL_POLICY,
            "row_count": 2**63,
            "mock": [],
            "schema": {"columns": [{"name": "_pid", "type": "string"}]},
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        },
    )
    if decl.status_code == 400:
        return  # refused when declared: the fix
    put = httpx.put(room.url + decl.json()["put"], headers=owner, content=data)
    assert put.status_code < 500, put.text


@pytest.mark.parametrize(
    "release",
    [
        {"receipt": {}},
        {"manifest": 1, "receipt": {}},
        {"manifest": {}, "receipt": {}, "artifacts": []},
        {"manifest": {}, "receipt": {}, "artifacts": {"a.csv": 1}},
    ],
)
@pytest.mark.usefixtures("quiet_server_errors")
def test_runner_finish_with_a_malformed_release_is_a_400(objects: Objects, release: dict[str, Any]) -> None:
    runner = {"authorization": f"Bearer {objects.tokens['runner']}"}
    job = httpx.post(objects.url + "/runner/claim", headers=runner).json()["job"]
    assert job
    resp = httpx.post(
        objects.url + f"/runner/jobs/{job}/finish", headers=runner, json={"status": "succeeded", "release": release}
    )
    assert resp.status_code == 400, resp.text
