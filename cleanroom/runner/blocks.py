"""Sample-and-aggregate: a DP release of whatever an analyst's own (untrusted) statistic computes.

The units are cut into m disjoint blocks by `HMAC(job_salt, _pid) mod m`, with a fresh secret 32-byte
salt per job that never leaves this process. Every input is filtered to each block's units and
recoded per block (`cleanroom.runner.recode`: codes 0..n_b-1 of that block only, so no block sees
how many units the others have). Each block runs the job's pipeline (its transforms, then its one
`statistic` step) in a fresh compute container with the job's limits and a fixed time
(`block_seconds`). A block's answer is a list of k numbers; anything else (an exception, a timeout,
running out of memory, too much output, NaN, inf, strings, the wrong length) becomes the spec's
default vector. Each coordinate is clipped to its declared [lo, hi] and the m vectors are
aggregated here, by trusted code with OpenDP's measurements (never numpy noise):

- mean: per coordinate, OpenDP's `make_mean` on the m clipped values (a sized, bounded domain) and
  Laplace noise with scale k (hi - lo) / (m epsilon), i.e. epsilon / k per coordinate;
- median: per coordinate, OpenDP's `make_private_quantile` (the exponential mechanism) over a grid of
  candidates in [lo, hi], at epsilon / k each.

Guarantee (add/remove one unit, every table): the unit's rows all fall into one block, and the
other units' blocks do not depend on it (the block is a keyed hash of the unit's own pseudonym).
So the m-vector of block outputs changes in one entry at most, whatever the plugin does, and one
changed entry moves a clipped mean by at most (hi - lo) / m per coordinate (one changed record of
a sized vector: symmetric distance 2, which is what the measurements are calibrated for). The
release is epsilon-DP by basic composition over the k coordinates. Nothing else about the blocks
leaves: no per-block value, no count of failed blocks, no timings (the analyst sees the outcome at
the job's time budget, `cleanroom.api.routes_jobs`). What it does not cover: the spec's choices
(they are fixed before any data is read) and a run longer than the time budget (refused at
submission: m (block_seconds + overhead) must fit in it).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import json
import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from cleanroom.crypto import digest
from cleanroom.errors import IntegrityFailure, RecheckRefused, SandboxError
from cleanroom.runner import recode
from cleanroom.runner.context import JobContext
from cleanroom.runner.phases import Phase
from cleanroom.runner.requests import compute_message
from cleanroom.sandbox import wire
from cleanroom.sandbox.release import dp_plan
from cleanroom.sandbox.vocabulary import PID

if TYPE_CHECKING:
    from cleanroom.runner.execute import JobRun

__all__ = [
    "ARTIFACT",
    "Output",
    "aggregate",
    "assign_blocks",
    "block_of",
    "block_request",
    "measurement",
    "parse_block",
    "release_document",
    "run_job",
    "split_inputs",
]

SALT_BYTES = 32
ARTIFACT = "sample_and_aggregate.json"
MEDIAN_CANDIDATES = 201  # grid of the DP median over [lo, hi]: resolution (hi - lo) / 200


@dataclass(frozen=True)
class Output:
    name: str
    lo: float
    hi: float
    default: float


def outputs_of(sa: Mapping[str, Any]) -> list[Output]:
    return [Output(str(o["name"]), float(o["lo"]), float(o["hi"]), float(o["default"])) for o in sa["outputs"]]


# -- blocks -----------------------------------------------------------------------------------------


def block_of(salt: bytes, pseudonym: str, m: int) -> int:
    """The block of one unit: a keyed hash of its own pseudonym only (never of the other units)."""
    mac = hmac.new(salt, pseudonym.encode(), hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "big") % m


def assign_blocks(pseudonyms: Sequence[str], m: int, salt: bytes) -> dict[str, int]:
    return {p: block_of(salt, p, m) for p in dict.fromkeys(pseudonyms)}


def split_inputs(inputs: Mapping[str, bytes], m: int, salt: bytes) -> list[dict[str, bytes]]:
    """Each input (an Arrow IPC stream with the pseudonyms in `_pid`) cut into m streams, one per block.

    Raises ValueError when an input is not a stream with a `_pid` column without nulls.
    """
    blocks: list[dict[str, bytes]] = [{} for _ in range(m)]
    for name, data in inputs.items():
        try:
            with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
                table = reader.read_all()
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"input {name} is not an Arrow stream") from exc
        if PID not in table.column_names or table.column(PID).null_count:
            raise ValueError(f"input {name} has no complete {PID} column")
        pids = [str(p) for p in table.column(PID).to_pylist()]
        of = assign_blocks(pids, m, salt)
        index = np.fromiter((of[p] for p in pids), dtype=np.int64, count=len(pids))
        for j in range(m):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                # one batch: the owner's batch boundaries sit at global row offsets, which other units move
                writer.write_table(table.filter(pa.array(index == j)).combine_chunks())
            blocks[j][name] = sink.getvalue().to_pybytes()
        del table
    return blocks


# -- what a block answered --------------------------------------------------------------------------


def parse_block(answer: Any, outputs: Sequence[Output]) -> list[float]:
    """A block's answer as k clipped numbers; the default vector for anything that is not exactly k
    finite numbers (None, NaN, inf, strings, booleans, nested lists, the wrong length)."""
    values = [o.default for o in outputs]
    if (
        isinstance(answer, list)
        and len(answer) == len(outputs)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in answer)
    ):
        try:
            numbers = [float(v) for v in answer]  # an int past the float range raises
        except OverflowError:
            numbers = []
        if numbers and all(math.isfinite(v) for v in numbers):
            values = numbers
    return [min(max(v, o.lo), o.hi) for v, o in zip(values, outputs, strict=True)]


# -- the DP aggregate -------------------------------------------------------------------------------


def _dp() -> Any:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


@functools.lru_cache(maxsize=256)
def measurement(output: Output, m: int, epsilon: float, how: str) -> tuple[Any, float]:
    """(OpenDP measurement over the m clipped block values of one coordinate, its noise scale)."""
    dp = _dp()
    if how == "mean":
        domain = dp.vector_domain(dp.atom_domain(bounds=(output.lo, output.hi), nan=False), size=m)

        def make(scale: float) -> Any:
            return dp.t.make_mean(domain, dp.symmetric_distance()) >> dp.m.then_laplace(scale=scale)
    elif how == "median":
        candidates = [float(c) for c in np.linspace(output.lo, output.hi, MEDIAN_CANDIDATES)]
        domain = dp.vector_domain(dp.atom_domain(T=float, nan=False))

        def make(scale: float) -> Any:
            return dp.m.make_private_quantile(
                domain, dp.symmetric_distance(), dp.max_divergence(), candidates=candidates, alpha=0.5, scale=scale
            )
    else:
        raise ValueError(f"unknown aggregate {how!r}")
    scale = float(dp.binary_search_param(make, d_in=2, d_out=epsilon))  # one block changed: distance 2
    return make(scale), scale


def aggregate(
    values: Sequence[Sequence[float]], outputs: Sequence[Output], epsilon: float, how: str = "mean"
) -> list[dict[str, Any]]:
    """The noisy aggregate of m clipped block vectors: per output its value, noise scale and interval."""
    m, k = len(values), len(outputs)
    out = []
    for j, output in enumerate(outputs):
        meas, scale = measurement(output, m, epsilon / k, how)
        column = [min(max(float(v[j]), output.lo), output.hi) for v in values]
        value = float(meas(column))
        entry: dict[str, Any] = {
            "name": output.name,
            "value": value,
            "lo": output.lo,
            "hi": output.hi,
            "noise_scale": scale,
        }
        if how == "mean":
            half = dp_plan.laplace_interval(scale)
            entry["interval_95"] = [value - half, value + half]
        else:
            entry["interval_95"] = None  # the exponential mechanism's error is in ranks, not in units
            entry["resolution"] = (output.hi - output.lo) / (MEDIAN_CANDIDATES - 1)
        out.append(entry)
    return out


def release_document(sa: Mapping[str, Any], epsilon: float, released: list[dict[str, Any]]) -> dict[str, Any]:
    """`sample_and_aggregate.json`: the spec's names and structure, the noisy values, nothing per block."""
    how = sa.get("aggregate", "mean")
    return {
        "mechanism": "sample_and_aggregate",
        "aggregate": how,
        "blocks": int(sa["blocks"]),
        "epsilon": epsilon,
        "noise": (
            "Laplace on the clipped mean of the block outputs (OpenDP make_mean + laplace)"
            if how == "mean"
            else "DP median of the clipped block outputs (OpenDP make_private_quantile)"
        ),
        "outputs": released,
    }


# -- the runner's side ------------------------------------------------------------------------------


def run_job(
    run: JobRun,
    ctx: JobContext,
    bundles: dict[str, bytes],
    effective: dict[str, Any],
    started: float,
    *,
    salt: bytes | None = None,
) -> None:
    """A sample-and-aggregate job on the runner, from decryption to the published release."""
    from cleanroom.runner import mockrun
    from cleanroom.runner.inputs import plaintext
    from cleanroom.runner.isolation import memory_bytes

    sa = ctx.outputs["sample_and_aggregate"]
    outputs, m = outputs_of(sa), int(sa["blocks"])
    epsilon = (effective.get("dp") or {}).get("epsilon")  # the job's charge (cleanroom.ledger)
    if not epsilon:
        raise RecheckRefused("sample_and_aggregate needs the job's epsilon (a DP input)")
    run.phase("decrypting")
    inputs = {ds.name: plaintext(run.api, run.keys, ds) for ds in ctx.datasets}
    try:
        parts = split_inputs(inputs, m, salt if salt is not None else secrets.token_bytes(SALT_BYTES))
    except ValueError as exc:
        raise IntegrityFailure(str(exc)) from exc
    del inputs
    never_output = effective.get("never_output", [])
    run.dropped = mockrun.dropped_columns([ds.to_dict() for ds in ctx.datasets], never_output)
    run.phase("compute")
    steps = ctx.compute_steps()
    names = [ds.name for ds in ctx.datasets]
    values: list[list[float]] = []
    for j, part in enumerate(parts):
        try:
            meta, files = block_request(
                part,
                names,
                steps,
                bundles,
                job_id=run.job_id,
                max_output_bytes=run.settings.job_max_output_bytes,
                max_bytes=memory_bytes(run.settings.job_memory),
                drop=never_output,
            )
        except recode.TooLarge:  # this block's data is over the phase's memory: like running out of it
            run.note(f"--- block {j}: too large for a sandbox phase ---")
            values.append(parse_block(None, outputs))
            continue
        except recode.RecodeError as exc:  # split_inputs read every input already: not about one unit
            raise IntegrityFailure(str(exc)) from exc
        parts[j] = {}
        request = io.BytesIO()
        wire.write_message(request, "job.json", meta, files)
        del files
        answer = _run_block(run, request.getbuffer(), effective.get("limits"), int(sa["block_seconds"]), j)
        del request
        values.append(parse_block(answer, outputs))
    released = aggregate(values, outputs, float(epsilon), sa.get("aggregate", "mean"))
    del values
    document = json.dumps(release_document(sa, float(epsilon), released), indent=2, sort_keys=True).encode()
    run.phase("uploading")
    rel = {
        "ok": True,
        "epsilon_spent": float(epsilon),
        "checks": [
            {
                "name": "sample_and_aggregate",
                "passed": True,
                "detail": f"{m} blocks, declared ranges, {sa.get('aggregate', 'mean')} with DP noise",
            }
        ],
        "artifacts": {ARTIFACT: {"sha256": digest(document), "bytes": len(document)}},
    }
    run.publish(ctx, effective, rel, {f"artifacts/{ARTIFACT}": document}, started)


def block_request(
    part: Mapping[str, bytes],
    names: Sequence[str],
    steps: list[dict[str, Any]],
    bundles: Mapping[str, bytes],
    *,
    job_id: str,
    max_output_bytes: int,
    max_bytes: int | None = None,
    drop: Sequence[str] = (),
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The compute phase's request for one block: its inputs recoded with the block's own codes (0..n_b-1 in
    a fresh random order), so nothing a block sees depends on the units of another block."""
    files = recode.recode_inputs(
        {f"inputs/{i}.arrow": part[n] for i, n in enumerate(names)},
        {f"inputs/{i}.arrow": n for i, n in enumerate(names)},
        max_bytes=max_bytes,
        drop=drop,
    )
    inputs = [(n, files.pop(f"inputs/{i}.arrow")) for i, n in enumerate(names)]
    return compute_message(job_id, steps, inputs, bundles, max_output_bytes)


def _run_block(run: JobRun, request: memoryview, limits: dict[str, Any] | None, seconds: int, index: int) -> Any:
    """One block in a fresh compute phase; its answer, or None on any failure (the default follows).

    Starting a phase happens before the block's data is sent: a failure there fails the job (it
    says nothing about the data). Everything after the data is sent maps to None.
    """
    from cleanroom.runner.execute import Cancelled

    for attempt in (1, 2):  # once more: a busy engine after the previous block should not fail the job
        try:
            box = run.phases.start(Phase.BLOCK, run.job_id, limits=limits)
            break
        except SandboxError:
            if attempt == 2:
                raise
    t = time.monotonic()
    try:
        res = box.run(request, timeout=min(seconds, box.timeout_seconds), cancelled=run.cancelled)
    except Exception as exc:  # noqa: BLE001 - whatever the plugin made happen, the block gets its default
        run.note(f"--- block {index}: no answer ({type(exc).__name__}) ---")
        return None
    finally:
        box.close()
    run.isolation.setdefault("compute", res.isolation)
    run.note(
        f"--- block {index} (exit {res.exit_code}, {time.monotonic() - t:.1f} s, timed out {res.timed_out}, "
        f"oom {res.oom_killed}) ---"
    )
    run.note(res.logs[-2000:])
    if run.cancelled():
        raise Cancelled()
    if res.failure is not None:
        return None
    try:  # what the container wrote is the plugin's to shape: any parsing failure is no answer
        result, _ = wire.read_message(io.BytesIO(res.stdout), "result.json", run.settings.job_max_output_bytes)
    except Exception:  # noqa: BLE001
        return None
    if not isinstance(result, dict) or not result.get("ok"):
        run.note(f"block {index}: {str(result.get('error') if isinstance(result, dict) else '')[:500]}")
        return None
    return result.get("statistic")
