"""Exfiltration through the whole stack (checklist A.9, A.10, C, D.41): API over HTTP, runner, Docker.

The analyst submits a malicious plugin, the owner approves it (the reviewer was fooled), the job runs.
What the analyst can then see (job view, release, artifacts), what the operator holds (the API's
files) and what the owners can read (encrypted logs) are checked against the owner's canaries.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from cleanroom.errors import NotFound, PermissionDenied
from tests.redteam.conftest import (
    AGGREGATE_CODE,
    AGGREGATE_PARAMS,
    RUNNER_CANARY,
    containers_of,
    stack_for_module,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MODEL_PARAMS = (
    '[params.estimator]\ntype = "string"\nrequired = true\n[params.params]\ntype = "object"\nrequired = true\n'
)
MODEL_CODE = """\
@hookimpl
def model_spec(columns, params):
    return {"estimator": params["estimator"], "params": params["params"], "target": "spend", "features": None,
            "task": "regression"}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shared_keys: Path) -> Iterator[SimpleNamespace]:
    with stack_for_module(tmp_path_factory, shared_keys, "exfil") as stack:
        w = SimpleNamespace(stack=stack, canary="cnry" + secrets.token_hex(6))
        w.owner = stack.owner("olivia-bank")
        w.ds = stack.dataset(w.owner, "olivia.customers", w.canary)
        w.aggregate = stack.plugin(
            AGGREGATE_CODE, kind="analysis", params=AGGREGATE_PARAMS, approvers=[(w.owner, w.ds)]
        )
        w.model = stack.plugin(MODEL_CODE, kind="model", params=MODEL_PARAMS, approvers=[(w.owner, w.ds)])
        yield w


def by_region(w: SimpleNamespace) -> tuple[str, dict[str, Any]]:
    return (w.aggregate, {"name": "by_region", "group_by": ["region"]})


def harmless_job_succeeds(w: SimpleNamespace) -> None:
    """The paired control: right after an attack, an ordinary job over the same data still succeeds."""
    final = w.stack.run(w.stack.job_spec(w.ds, [by_region(w)], aggregates=True))
    assert final["status"] == "succeeded", final


def released_files(w: SimpleNamespace, job_id: str, tmp_path: Path) -> dict[str, bytes]:
    """The release as its analyst downloads it, once the owner approved it (exact mode forces review)."""
    if w.owner.get_release(job_id)["pending_review"]:
        w.owner.approve_release(job_id)
    out = tmp_path / f"release-{job_id}"
    w.stack.analyst.get_result(job_id, out)
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def nothing_released(w: SimpleNamespace, job: dict[str, Any]) -> None:
    assert job["release_id"] is None
    with pytest.raises(NotFound):
        w.stack.analyst.get_release(job["id"])


def analyst_view_is_coarse(w: SimpleNamespace, job: dict[str, Any]) -> None:
    """The analyst sees that nothing was released: not why (no error class, phase, reason), nor when."""
    view = w.stack.analyst.get_job(job["id"])
    assert view["status"] == "nothing_released" and view["error_class"] is None and view["phase"] is None
    assert view["finished_at"] is None and "reason" not in view and "effective_policy" not in view
    text = json.dumps(view)
    assert w.canary not in text and "exit" not in text.lower()
    with pytest.raises(PermissionDenied):
        w.stack.analyst.job_logs(job["id"])


def api_plaintext_hits(w: SimpleNamespace, needle: str) -> list[str]:
    return [str(path.name) for path, data in w.stack.api_bytes() if needle.encode() in data]


def test_aggregate_over_unique_values_is_suppressed_below_k(world: SimpleNamespace, tmp_path: Path) -> None:
    w = world
    final = w.stack.run(
        w.stack.job_spec(w.ds, [(w.aggregate, {"name": "by_secret", "group_by": ["secret_code"]})], aggregates=True)
    )
    assert final["status"] == "succeeded", final
    files = released_files(w, final["id"], tmp_path)
    table = pd.read_csv(__import__("io").BytesIO(files["aggregates/by_secret.csv"]))
    assert list(table.columns) == ["secret_code", "count", "mean_spend"]
    # the group keys are the mock run's (public tokens) and `other`: every real value falls into `other`
    named = table[table["secret_code"] != "other"]
    assert named[["count", "mean_spend"]].isna().all().all() and list(table["secret_code"])[-1] == "other"
    assert not any(w.canary.encode() in data for data in files.values())
    # control: the same plugin over a coarse column releases groups of at least k units
    control = w.stack.run(w.stack.job_spec(w.ds, [by_region(w)], aggregates=True))
    assert control["status"] == "succeeded"
    regions = pd.read_csv(
        __import__("io").BytesIO(released_files(w, control["id"], tmp_path)["aggregates/by_region.csv"])
    )
    assert len(regions) >= 2 and (regions["count"].dropna() >= 5).all()


def test_a_model_spec_asking_for_single_row_leaves_is_refused(world: SimpleNamespace, tmp_path: Path) -> None:
    w = world
    final = w.stack.run(
        w.stack.job_spec(
            w.ds,
            [(w.model, {"estimator": "decision_tree_regressor", "params": {"min_samples_leaf": 1, "max_depth": 40}})],
            model=True,
        )
    )
    assert final["status"] == "failed" and final["error_class"] == "release_check_failed"
    nothing_released(w, final)
    analyst_view_is_coarse(w, final)
    control = w.stack.run(
        w.stack.job_spec(w.ds, [(w.model, {"estimator": "ridge", "params": {"alpha": 1.0}})], model=True)
    )
    assert control["status"] == "succeeded"
    assert "model.skops" in released_files(w, control["id"], tmp_path)


INDICATORS = """\
import numpy
import pandas as pd


@hookimpl
def preprocess(df, params):
    df = df.reset_index(drop=True)
    # one column per person, named after the person's secret code: a model "feature" per row
    eye = pd.DataFrame(numpy.eye(len(df)), columns=["u_" + str(s) for s in df["secret_code"]])
    return pd.concat([df[["_pid", "spend"]], eye], axis=1)
"""


def test_model_parameters_do_not_carry_rows(world: SimpleNamespace, tmp_path: Path) -> None:
    """W1: one indicator feature per person + ridge would store each person's spend as a coefficient."""
    w = world
    leak = w.stack.plugin(INDICATORS, prelude=True, approvers=[(w.owner, w.ds)])
    final = w.stack.run(
        w.stack.job_spec(w.ds, [(leak, {}), (w.model, {"estimator": "ridge", "params": {"alpha": 1e-6}})], model=True)
    )
    assert final["status"] == "failed" and final["error_class"] == "release_check_failed", final
    nothing_released(w, final)
    owner_view = w.owner.get_job(final["id"])
    # the real run's columns differ from the mock run's (structure), or their names are not public (names)
    assert any(check in owner_view["reason"] for check in ("structure", "names", "model:leverage")), owner_view
    assert w.canary not in owner_view["reason"]
    # control: the same model over the owner's real columns is released, and loads
    final = w.stack.run(
        w.stack.job_spec(w.ds, [(w.model, {"estimator": "ridge", "params": {"alpha": 1e-6}})], model=True)
    )
    assert final["status"] == "succeeded", final
    files = released_files(w, final["id"], tmp_path)
    from cleanroom.modelio import load_model

    (tmp_path / "m.skops").write_bytes(files["model.skops"])
    assert len(load_model(tmp_path / "m.skops").coef_) < 10
    assert not any(w.canary.encode() in data for data in files.values())


def test_per_person_features_with_public_names_are_refused_by_leverage(world: SimpleNamespace) -> None:
    """W1 without the name channel: indicators named `spend_<vocabulary word>` pass the name rule and the
    leverage check still refuses them (each person's own row would carry all the weight of its fit)."""
    w = world
    leak = w.stack.plugin(INDICATORS_PUBLIC_NAMES, prelude=True, approvers=[(w.owner, w.ds)])
    final = w.stack.run(
        w.stack.job_spec(w.ds, [(leak, {}), (w.model, {"estimator": "ridge", "params": {"alpha": 1e-6}})], model=True)
    )
    assert final["status"] == "failed" and final["error_class"] == "release_check_failed", final
    assert "model:leverage" in w.owner.get_job(final["id"])["reason"]
    nothing_released(w, final)
    harmless_job_succeeds(w)


INDICATORS_PUBLIC_NAMES = """\
import numpy
import pandas as pd

WORDS = ["missing", "bin", "year", "month", "day", "weekday", "quarter", "log", "sqrt", "squared", "rank", "z"]


@hookimpl
def preprocess(df, params):
    df = df.reset_index(drop=True)
    picked = {f"visits_{word}": (numpy.arange(len(df)) == i).astype(float) for i, word in enumerate(WORDS)}
    return pd.concat([df[["_pid", "spend", "visits"]], pd.DataFrame(picked)], axis=1)
"""


NAME_CHANNEL_PRE = """\
@hookimpl
def preprocess(df, params):
    row = df.iloc[0]
    df = df.copy()
    df["leak_" + str(row["secret_code"]) + "_" + str(int(row["spend"] * 100))] = 1.0  # data in a column *name*
    return df
"""
NAME_CHANNEL_SPEC = """\
@hookimpl
def analysis_spec(columns, params):
    leak = [c for c in columns if c.startswith("leak_")][0]
    return {"name": "innocent", "group_by": ["region"], "metrics": [{"agg": "count"}, {"agg": "mean", "column": leak}]}
"""


def test_column_names_do_not_carry_rows(world: SimpleNamespace, tmp_path: Path) -> None:
    """W2: a value from one row written into a column *name* that an aggregate then releases."""
    w = world
    pre = w.stack.plugin(NAME_CHANNEL_PRE, approvers=[(w.owner, w.ds)])
    spec = w.stack.plugin(NAME_CHANNEL_SPEC, kind="analysis", approvers=[(w.owner, w.ds)])
    final = w.stack.run(w.stack.job_spec(w.ds, [(pre, {}), (spec, {})], aggregates=True))
    assert final["status"] == "failed" and final["error_class"] == "release_check_failed", final
    reason = w.owner.get_job(final["id"])["reason"]
    # the mock run fixed the columns (structure); the released-name rule would refuse them too (names)
    assert ("structure" in reason or "names" in reason) and w.canary not in reason
    nothing_released(w, final)
    analyst_view_is_coarse(w, final)
    # control: the same analysis over a public column is released, named by the job spec
    good = w.stack.plugin(
        NAME_CHANNEL_SPEC.replace('c.startswith("leak_")', 'c == "spend"'), kind="analysis", approvers=[(w.owner, w.ds)]
    )
    final = w.stack.run(w.stack.job_spec(w.ds, [(good, {})], aggregates=True))
    assert final["status"] == "succeeded", final
    files = released_files(w, final["id"], tmp_path)
    assert any(name.startswith("aggregates/step") for name in files), sorted(files)
    assert not any(w.canary.encode() in data for data in files.values())


# The hostile plugins act on the real rows only (the canary prefix is in the real data, never in the mock
# rows made from declared facts), so they pass the mock run that fixes the job's structure first.
CRASH_WITH_DATA = """\
@hookimpl
def preprocess(df, params):
    if not df["secret_code"].astype(str).str.startswith("cnry").any():
        return df
    for row in df.itertuples():
        print("RAW", row.secret_code, row.spend, file=sys.stderr)   # raw rows into the log
    sys.stderr.flush()
    first = str(df["secret_code"].iloc[0])
    os._exit(100 + int(first[-1]))                                  # a data byte in the exit code
"""


def test_raw_rows_in_logs_and_exit_codes_reach_only_the_owners(world: SimpleNamespace) -> None:
    w = world
    plugin = w.stack.plugin(CRASH_WITH_DATA, approvers=[(w.owner, w.ds)])
    final = w.stack.run(w.stack.job_spec(w.ds, [(plugin, {}), by_region(w)], aggregates=True))
    assert final["status"] == "failed" and final["error_class"] == "sandbox_crash"
    nothing_released(w, final)
    analyst_view_is_coarse(w, final)
    owner_view = w.owner.get_job(final["id"])
    assert w.canary not in owner_view["reason"]
    logs = w.owner.job_logs(final["id"])  # control: the owners do get the log, decrypted with their key
    assert "RAW " + w.canary in logs
    assert len(logs.encode()) <= 64 * 2**10 + 4096
    # the operator's disk holds the log encrypted only (row 50: not among the rows another test's error quotes)
    assert api_plaintext_hits(w, f"{w.canary}x0050") == []
    harmless_job_succeeds(w)


RAISE_WITH_DATA = """\
@hookimpl
def preprocess(df, params):
    if not df["secret_code"].astype(str).str.startswith("cnry").any():
        return df
    raise ValueError("rows: " + " ".join(df["secret_code"].astype(str).head(8)))
"""


@pytest.fixture(scope="module")
def raising_job(world: SimpleNamespace) -> dict[str, Any]:
    w = world
    plugin = w.stack.plugin(RAISE_WITH_DATA, approvers=[(w.owner, w.ds)])
    return w.stack.run(w.stack.job_spec(w.ds, [(plugin, {}), by_region(w)], aggregates=True))


def test_an_error_message_full_of_data_shows_the_analyst_only_that_nothing_was_released(
    world: SimpleNamespace, raising_job: dict[str, Any]
) -> None:
    w = world
    assert raising_job["status"] == "failed" and raising_job["error_class"] == "plugin_error"
    nothing_released(w, raising_job)
    analyst_view_is_coarse(w, raising_job)
    assert w.canary in w.owner.job_logs(raising_job["id"])  # control: the owners see what happened


def test_an_error_message_full_of_data_never_reaches_the_api_store_in_plaintext(
    world: SimpleNamespace, raising_job: dict[str, Any]
) -> None:
    w = world
    assert raising_job["status"] == "failed"
    assert w.canary not in (w.owner.get_job(raising_job["id"]).get("reason") or "")
    assert api_plaintext_hits(w, w.canary) == []


def test_a_memory_bomb_ends_as_out_of_memory_and_leaves_nothing(world: SimpleNamespace, docker_client: Any) -> None:
    w = world
    bomb = w.stack.plugin(
        """\
@hookimpl
def preprocess(df, params):
    hoard = []
    while True:
        hoard.append(b"x" * (64 * 2**20))
""",
        approvers=[(w.owner, w.ds)],
    )
    final = w.stack.run(w.stack.job_spec(w.ds, [(bomb, {}), by_region(w)], aggregates=True))
    assert final["status"] == "failed" and final["error_class"] == "out_of_memory"
    nothing_released(w, final)
    analyst_view_is_coarse(w, final)
    assert containers_of(docker_client, final["id"]) == []
    harmless_job_succeeds(w)


SNOOPER = """\
@hookimpl
def preprocess(df, params):
    started = time.time()
    mine = sorted(set(str(s)[:16] for s in df["secret_code"]))
    open("/tmp/bait-" + mine[0], "w").write(mine[0])
    time.sleep(5)                                   # the other job runs now
    seen = {"mine": mine, "environ": dict(os.environ), "tmp": sorted(os.listdir("/tmp")),
            "processes": {p: open(f"/proc/{p}/cmdline", "rb").read().decode("latin-1")
                          for p in os.listdir("/proc") if p.isdigit()},
            "unix": open("/proc/net/unix").read(), "window": [started, time.time()]}
    print("SNOOP " + json.dumps(seen), file=sys.stderr)
    return df
"""


def test_two_concurrent_jobs_see_neither_each_other_nor_the_runner(world: SimpleNamespace) -> None:
    w = world
    stack = w.stack
    other_canary = "cnry" + secrets.token_hex(6)
    other_owner = stack.owner("oscar-retail")
    other_ds = stack.dataset(other_owner, "oscar.purchases", other_canary, seed=2)
    other_agg = stack.plugin(
        AGGREGATE_CODE, kind="analysis", params=AGGREGATE_PARAMS, approvers=[(other_owner, other_ds)]
    )
    snoop = stack.plugin(SNOOPER, approvers=[(w.owner, w.ds), (other_owner, other_ds)])
    jobs = {
        "a": stack.analyst.submit_job(stack.job_spec(w.ds, [(snoop, {}), by_region(w)], aggregates=True)),
        "b": stack.analyst.submit_job(
            stack.job_spec(
                other_ds, [(snoop, {}), (other_agg, {"name": "by_region", "group_by": ["region"]})], aggregates=True
            )
        ),
    }
    finals = {k: stack.room.end_time_budget(j["id"], timeout=240) for k, j in jobs.items()}
    assert [f["status"] for f in finals.values()] == ["succeeded", "succeeded"], finals
    logs = {"a": w.owner.job_logs(jobs["a"]["id"]), "b": other_owner.job_logs(jobs["b"]["id"])}
    # the last SNOOP line is the real run's (the mock run that fixes the structure printed one first)
    seen = {k: json.loads(re.findall(r"SNOOP (\{.*\})", text)[-1]) for k, text in logs.items()}
    (a0, a1), (b0, b1) = seen["a"]["window"], seen["b"]["window"]
    assert a0 < b1 and b0 < a1, "the two jobs did not overlap in time"
    assert seen["a"]["mine"][0].startswith(w.canary) and seen["b"]["mine"][0].startswith(other_canary)  # control
    assert other_canary not in logs["a"] and w.canary not in logs["b"]
    assert all(RUNNER_CANARY not in text for text in logs.values())
    assert all("CLEANROOM" not in key for s in seen.values() for key in s["environ"])
    assert all(len(s["processes"]) <= 3 for s in seen.values())
    with pytest.raises((PermissionDenied, NotFound)):
        w.owner.job_logs(jobs["b"]["id"])  # owners read the logs of jobs over their own data only
