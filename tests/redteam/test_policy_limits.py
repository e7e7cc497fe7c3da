"""Per-policy sandbox limits through the whole stack: a dataset's policy can tighten the room's limits.

An owner who sets `[limits] memory_mb = 300` gets a job over its data killed where the same plugin
over a dataset without limits (the room's 2 GiB) runs; the limits a phase ran under are in the job's
receipt. Limits cannot loosen: a policy asking for more than the room allows gets the room's value.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from cleanroom.runner.isolation import tightened
from cleanroom.settings import Settings
from tests.redteam.conftest import AGGREGATE_CODE, AGGREGATE_PARAMS, stack_for_module

pytestmark = [pytest.mark.docker, pytest.mark.slow]

HOARD = """\
@hookimpl
def preprocess(df, params):
    hoard = [b"x" * (64 * 2**20) for _ in range(8)]  # 512 MiB: fine under 2 GiB, not under 300 MB
    return df
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shared_keys: Path) -> Iterator[SimpleNamespace]:
    with stack_for_module(tmp_path_factory, shared_keys, "limits") as stack:
        w = SimpleNamespace(stack=stack, canary="cnry" + secrets.token_hex(6))
        w.owner = stack.owner("tara-bank")
        w.tight = stack.dataset(
            w.owner, "tara.tight", w.canary, extra="\n[limits]\nmemory_mb = 300\ntimeout_seconds = 120\ncpus = 0.5\n"
        )
        w.loose = stack.dataset(
            w.owner, "tara.loose", w.canary, extra="\n[limits]\nmemory_mb = 999999\n"
        )  # asks for more than the room gives
        w.aggregate = stack.plugin(
            AGGREGATE_CODE, kind="analysis", params=AGGREGATE_PARAMS, approvers=[(w.owner, w.tight), (w.owner, w.loose)]
        )
        w.hoard = stack.plugin(HOARD, approvers=[(w.owner, w.tight), (w.owner, w.loose)])
        yield w


def _steps(w: SimpleNamespace) -> list:
    return [(w.hoard, {}), (w.aggregate, {"name": "by_region", "group_by": ["region"]})]


def test_a_policy_memory_limit_kills_what_the_room_default_allows(world: SimpleNamespace) -> None:
    w = world
    final = w.stack.run(w.stack.job_spec(w.tight, _steps(w), aggregates=True))
    assert final["status"] == "failed" and final["error_class"] == "out_of_memory", final
    # control: the same plugin over data whose policy asks for more than the room allows runs under the room's
    # 2 GiB, and the receipt records the limits actually applied (the room's, not the policy's 999999 MB)
    final = w.stack.run(w.stack.job_spec(w.loose, _steps(w), aggregates=True))
    assert final["status"] == "succeeded", final
    body = w.owner.get_release(final["id"])["receipt"]["body"]  # (the owner's view: it may wait for review)
    assert body["isolation"]["compute"]["limits"]["memory"] == "2048m"  # the room's 2g
    assert body["isolation"]["release"]["limits"]["memory"] == "2048m"


def test_tightened_only_lowers() -> None:
    room = Settings(job_memory="2g", job_cpus=1.0, job_pids=128, job_timeout_seconds=900)
    tight = tightened(room, {"memory_mb": 300, "cpus": 0.5, "pids": 64, "timeout_seconds": 60})
    assert (tight.job_memory, tight.job_cpus, tight.job_pids, tight.job_timeout_seconds) == ("300m", 0.5, 64, 60)
    loose = tightened(room, {"memory_mb": 10**6, "cpus": 64, "pids": 10**6, "timeout_seconds": 10**6})
    assert (loose.job_memory, loose.job_cpus, loose.job_pids, loose.job_timeout_seconds) == ("2048m", 1.0, 128, 900)
    assert tightened(room, {}) is room
