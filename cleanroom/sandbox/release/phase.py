"""The release phase: trusted checks between the compute phase and anything that leaves.

Run as `python -I -m cleanroom.sandbox.release` in the sandbox image. It reads one wire message
(`job.json` + `frames/joined.arrow`) on stdin and writes one (`result.json` + `artifacts/<name>`)
on stdout; logs go to stderr and never hold data values. Exit 0 means a response was written,
which may still report `ok: false`. It imports no plugin code and no server-side module.

Request `job.json`:
    {"job_id": str,
     "policy": EffectivePolicy,
     "outputs": {"model": bool, "metrics": bool, "aggregates": bool,
                 "holdout_fraction": float = 0.2, "seed": int = 0},
     "model_spec": spec | {"plugin_id", "spec"} | null,
     "analysis_specs": [spec | {"plugin_id", "spec"}, ...],
     "dp": {"epsilon": float | null, "delta": float | null},
     "names": {"schemas": {dataset: {column: [published category, ...]}}, "job_strings": [str, ...]},
     "table_names": [str, ...]}            # one per analysis spec, from the job spec (names.py)

EffectivePolicy (the combined, most restrictive policy of every input; all keys required, other
keys such as recipients or review are ignored here):
    {"k": int >= 2,                          # minimum distinct _pid per released group / leaf
     "outputs": ["aggregate", "model"],      # what may be released at all
     "estimators": [name, ...],              # allowed estimator names (models.ESTIMATORS keys)
     "allow_row_storing": bool,              # knn, svm, gaussian processes
     "max_model_bytes": int,                 # cap on model.skops
     "never_output": [column, ...],          # never grouped, aggregated, a feature or the target
     "join_only": [column, ...],             # same restrictions as never_output here
     "bounds": {column: [lo, hi]},           # clamping bounds for DP sums and means
     "require_dp": bool}                     # every output must use DP (dp.epsilon must be set)

Released column names (aggregate headers, model features and target) must be input columns or
names derived from them as `cleanroom.sandbox.names` describes; aggregate tables are named by
`table_names`, never by the plugin's spec.

Response `result.json`: {"ok", "error", "checks": [{"name", "passed", "detail"}],
"artifacts": {name: {"sha256", "bytes"}}, "epsilon_spent", "delta_spent"}. All or nothing: when
any check fails there are no artifacts and nothing is spent. `outputs.model` yields `model.skops`
and `model_card.md`, `outputs.metrics` yields `metrics.json` (holdout metrics; the card shows
them too when both are asked), `outputs.aggregates` yields `aggregates/<name>.csv`. Without
`dp.delta`, DP uses `dp.DEFAULT_DELTA`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

import pandas as pd

from cleanroom.sandbox import names, wire
from cleanroom.sandbox.hashing import digest
from cleanroom.sandbox.release import aggregates, dp, dp_models, dp_plan, models, structure
from cleanroom.sandbox.vocabulary import OUTPUT_KINDS, PID, TABLE_NAME

MAX_REQUEST_BYTES = 4 * 2**30
MAX_ARTIFACT_BYTES = 128 * 2**20
FRAME = "frames/joined.arrow"
POLICY_KEYS = (
    "k",
    "outputs",
    "estimators",
    "allow_row_storing",
    "max_model_bytes",
    "never_output",
    "join_only",
    "bounds",
    "require_dp",
)
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

log = logging.getLogger("cleanroom.release")


class RequestError(Exception):
    """The request or the policy is malformed; `check` names the failed check."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


@dataclass(frozen=True)
class Policy:
    k: int
    outputs: frozenset[str]
    estimators: tuple[str, ...]
    allow_row_storing: bool
    max_model_bytes: int
    never_output: frozenset[str]
    join_only: frozenset[str]
    bounds: dict[str, tuple[float, float]]
    require_dp: bool

    @property
    def forbidden(self) -> set[str]:
        return set(self.never_output | self.join_only)


def _strings(raw: Any, key: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise RequestError("policy", f"policy {key} must be a list of strings")
    return raw


def parse_policy(raw: Any) -> Policy:
    """Validate the EffectivePolicy dict (fail closed on anything missing or mistyped)."""
    if not isinstance(raw, dict):
        raise RequestError("policy", "policy must be an object")
    missing = [key for key in POLICY_KEYS if key not in raw]
    if missing:
        raise RequestError("policy", f"policy lacks {missing}")
    k = raw["k"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise RequestError("policy", "policy k must be an integer >= 2")
    outputs = _strings(raw["outputs"], "outputs")
    if set(outputs) - set(OUTPUT_KINDS):
        raise RequestError("policy", f"policy outputs must be a subset of {list(OUTPUT_KINDS)}")
    for key in ("allow_row_storing", "require_dp"):
        if not isinstance(raw[key], bool):
            raise RequestError("policy", f"policy {key} must be a boolean")
    size = raw["max_model_bytes"]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise RequestError("policy", "policy max_model_bytes must be a positive integer")
    if not isinstance(raw["bounds"], dict):
        raise RequestError("policy", "policy bounds must be an object")
    bounds: dict[str, tuple[float, float]] = {}
    for column, pair in raw["bounds"].items():
        if not (
            isinstance(pair, list | tuple) and len(pair) == 2 and all(_finite(v) for v in pair) and pair[0] < pair[1]
        ):
            raise RequestError("policy", f"policy bounds of {column!r} must be [lo, hi] with lo < hi")
        bounds[column] = (float(pair[0]), float(pair[1]))
    return Policy(
        k=k,
        outputs=frozenset(outputs),
        estimators=tuple(_strings(raw["estimators"], "estimators")),
        allow_row_storing=raw["allow_row_storing"],
        max_model_bytes=size,
        never_output=frozenset(_strings(raw["never_output"], "never_output")),
        join_only=frozenset(_strings(raw["join_only"], "join_only")),
        bounds=bounds,
        require_dp=raw["require_dp"],
    )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _flag(outputs: dict[str, Any], key: str) -> bool:
    value = outputs.get(key, False)
    if not isinstance(value, bool):
        raise RequestError("request", f"outputs.{key} must be a boolean")
    return value


def _read_frame(files: dict[str, bytes]) -> pd.DataFrame:
    if FRAME not in files:
        raise RequestError("frame", f"the request has no {FRAME}")
    frame = wire.frame_from_bytes(files[FRAME])
    names = list(frame.columns)
    if not all(isinstance(c, str) and c for c in names) or len(set(names)) != len(names):
        raise RequestError("frame", "frame column names must be distinct non-empty strings")
    if PID not in names:
        raise RequestError("frame", "the frame has no _pid column")
    if frame[PID].isna().any():
        raise RequestError("frame", "_pid has missing values")
    if not pd.api.types.is_integer_dtype(frame[PID].dtype):
        # integer codes from the runner (cleanroom.runner.recode) are counted as they are; anything
        # else (text pseudonyms in local plugin tests) as text, so that equal units compare equal
        frame[PID] = frame[PID].astype(str)
    return frame


def _release(
    request: dict[str, Any], files: dict[str, bytes], checks: list[dict[str, Any]]
) -> tuple[dict[str, bytes], float, float]:
    def passed(name: str, detail: str) -> None:
        checks.append({"name": name, "passed": True, "detail": detail})

    policy = parse_policy(request.get("policy"))
    passed("policy", f"k={policy.k}")
    job_id = request.get("job_id")
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise RequestError("request", "job_id must match ^[A-Za-z0-9_.:-]{1,128}$")
    outputs = request.get("outputs") or {}
    if not isinstance(outputs, dict):
        raise RequestError("request", "outputs must be an object")
    want_model, want_metrics = _flag(outputs, "model"), _flag(outputs, "metrics")
    want_aggregates = _flag(outputs, "aggregates")
    if set(files) - {FRAME, structure.MOCK_FRAME}:
        raise RequestError("request", "unexpected files in the request")
    denied = [
        kind
        for kind, wanted in (("model", want_model or want_metrics), ("aggregate", want_aggregates))
        if wanted and kind not in policy.outputs
    ]
    if denied:
        raise RequestError("outputs", f"the policy does not allow {' or '.join(denied)} outputs")
    passed("outputs", "requested outputs are allowed by the policy")

    dp_request = request.get("dp") or {}
    epsilon, delta = dp_request.get("epsilon"), dp_request.get("delta")
    if epsilon is not None and not (_finite(epsilon) and epsilon > 0):
        raise RequestError("dp", "dp.epsilon must be a positive number")
    if delta is not None and not (_finite(delta) and 0 < delta < 1):
        raise RequestError("dp", "dp.delta must be a number in (0, 1)")
    if (want_aggregates or want_model or want_metrics) and policy.require_dp and epsilon is None:
        raise RequestError("dp", "the policy requires DP but the job has no DP budget")

    artifacts: dict[str, bytes] = {}
    budget = dp.Budget(float(epsilon or 0.0), float(delta or dp.DEFAULT_DELTA))
    parts = (
        dp_plan.split(budget.epsilon, budget.delta, aggregates=want_aggregates, model=want_model, metrics=want_metrics)
        if epsilon is not None
        else {}
    )
    if not (want_model or want_metrics or want_aggregates):
        return artifacts, 0.0, 0.0
    frame = _read_frame(files)
    passed("frame", f"{len(frame.columns)} columns")
    fixed = structure.fix(request, files, FRAME, frame, checks)  # the mock run: specs, columns, domains
    frame = fixed.frame
    try:
        rule = names.NameRule.from_request(request.get("names"))
    except ValueError as exc:
        raise RequestError("names", f"the request's names are malformed: {exc}") from exc

    if want_aggregates:
        raw_specs = request.get("analysis_specs")
        if not isinstance(raw_specs, list) or not raw_specs:
            raise RequestError("aggregate:spec", "aggregates were requested but there is no analysis spec")
        tables = request.get("table_names")
        if not (
            isinstance(tables, list)
            and len(tables) == len(raw_specs)
            and all(isinstance(t, str) and TABLE_NAME.fullmatch(t) for t in tables)
            and len(set(tables)) == len(tables)
        ):
            raise RequestError(
                "aggregate:spec", "table_names must name each analysis spec, uniquely, matching ^[a-z0-9_-]{1,64}$"
            )
        specs = [aggregates.parse_spec(raw, frame, policy.forbidden) for raw in raw_specs]
        for table, spec in zip(tables, specs, strict=True):
            rule.check(spec.group_by, f"{table}: group-by column", policy.forbidden)
            rule.check(
                [m.column for m in spec.metrics if m.column is not None], f"{table}: metric column", policy.forbidden
            )
        passed("names", "released column names are input columns or derived from them")
        if epsilon is None:
            aggregates.check_nesting(specs, rule.roots)
            aggregates.check_refinement(frame, specs, fixed.domains(specs))
        queries = sum(aggregates.dp_query_count(s) for s in specs)
        for table, spec in zip(tables, specs, strict=True):
            if epsilon is None:
                result = aggregates.compute(fixed.source(frame, spec), spec, policy.k)
            else:
                result = aggregates.compute_dp(
                    fixed.source(frame, spec),
                    spec,
                    policy.k,
                    policy.bounds,
                    parts["aggregates"][0] / queries,
                    parts["aggregates"][1] / len(specs),
                    budget,
                )
            artifacts[f"aggregates/{table}.csv"] = aggregates.to_csv(fixed.finish(result, spec))
            mode = "with DP" if epsilon is not None else "exact"
            passed(f"aggregate:{table}", f"{len(result)} groups, each with at least k units ({mode})")

    if want_model or want_metrics:
        model_spec = request.get("model_spec")
        if model_spec is None:
            raise RequestError("model:spec", "a model was requested but there is no model spec")
        fraction = outputs.get("holdout_fraction", 0.2)
        seed = outputs.get("seed", 0)
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.05 <= fraction <= 0.5:
            raise RequestError("request", "holdout_fraction must be between 0.05 and 0.5")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise RequestError("request", "seed must be an integer in [0, 2**32)")
        made = (
            dp_models.fit_dp(
                frame,
                model_spec,
                allowed=list(policy.estimators),
                forbidden=policy.forbidden,
                bounds=policy.bounds,
                parts=parts,
                budget=budget,
                holdout_fraction=float(fraction),
                job_id=job_id,
                checks=checks,
                names=rule,
                with_metrics=want_metrics,
            )
            if epsilon is not None
            else models.fit_and_check(
                frame,
                model_spec,
                k=policy.k,
                allowed=list(policy.estimators),
                allow_row_storing=policy.allow_row_storing,
                max_model_bytes=policy.max_model_bytes,
                forbidden=policy.forbidden,
                holdout_fraction=float(fraction),
                seed=seed,
                job_id=job_id,
                checks=checks,
                with_metrics=want_metrics,
                names=rule,
                precision=fixed.digits,
            )
        )
        keep = ({"model.skops", "model_card.md"} if want_model else set()) | (
            {"metrics.json"} if want_metrics else set()
        )
        artifacts.update({name: data for name, data in made.items() if name in keep})

    total = sum(len(data) for data in artifacts.values())
    if total > MAX_ARTIFACT_BYTES:
        raise RequestError("artifacts:size", f"artifacts total {total} bytes, over {MAX_ARTIFACT_BYTES}")
    passed("artifacts:size", f"{total} bytes in {len(artifacts)} artifacts")
    return artifacts, budget.epsilon_spent, budget.delta_spent


def run(request: dict[str, Any], files: dict[str, bytes]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Run the release checks; return the response meta and its files (`artifacts/<name>`)."""
    checks: list[dict[str, Any]] = []
    try:
        artifacts, eps, delta = _release(request, files, checks)
    except names.UnsafeName as exc:
        checks.append({"name": "names", "passed": False, "detail": str(exc)})
        return _failure(checks, str(exc)), {}
    except (RequestError, models.ModelError) as exc:
        checks.append({"name": exc.check, "passed": False, "detail": str(exc)})
        return _failure(checks, str(exc)), {}
    except aggregates.AggregateError as exc:
        checks.append({"name": "aggregate:spec", "passed": False, "detail": str(exc)})
        return _failure(checks, str(exc)), {}
    except structure.StructureError as exc:
        checks.append({"name": "structure", "passed": False, "detail": str(exc)})
        return _failure(checks, str(exc)), {}
    except (dp.BudgetError, wire.WireError) as exc:
        name = "dp" if isinstance(exc, dp.BudgetError) else "frame"
        checks.append({"name": name, "passed": False, "detail": str(exc)})
        return _failure(checks, str(exc)), {}
    except Exception as exc:  # noqa: BLE001 - messages of library errors may quote data: class only
        where = traceback.extract_tb(exc.__traceback__)[-1]
        log.error("internal error %s at %s:%s", type(exc).__name__, os.path.basename(where.filename), where.lineno)
        checks.append({"name": "internal", "passed": False, "detail": type(exc).__name__})
        return _failure(checks, f"internal error: {type(exc).__name__}"), {}
    manifest = {name: {"sha256": digest(data), "bytes": len(data)} for name, data in sorted(artifacts.items())}
    meta = {
        "ok": True,
        "error": None,
        "checks": checks,
        "artifacts": manifest,
        "epsilon_spent": eps,
        "delta_spent": delta,
    }
    return meta, {f"artifacts/{name}": data for name, data in artifacts.items()}


def _failure(checks: list[dict[str, Any]], error: str) -> dict[str, Any]:
    return {"ok": False, "error": error, "checks": checks, "artifacts": {}, "epsilon_spent": 0.0, "delta_spent": 0.0}


def warm_up() -> float:
    """Run every check once on made-up data while the phase waits for its request; seconds taken.

    The first fit, split, aggregate and skops round trip in a process pay for lazy imports and
    first-call set-up (about 0.5 s); the container starts before the job needs it (at the claim,
    or earlier in the runner's warm pool), so that time comes off the job. The made-up frame holds
    no job data, and its results are thrown away.
    """
    started = time.monotonic()
    import numpy as np

    rng = np.random.default_rng(0)
    units = 400
    x = rng.normal(size=units)
    frame = pd.DataFrame(
        {
            PID: np.arange(units, dtype=np.int64),
            "x": x,
            "g": np.where(x > 0, "a", "b"),
            "y": 2 * x + rng.normal(size=units),
        }
    )
    policy: dict[str, Any] = {
        "k": 10,
        "outputs": list(OUTPUT_KINDS),
        "estimators": ["ridge"],
        "allow_row_storing": False,
        "max_model_bytes": 1_000_000,
        "never_output": [],
        "join_only": [],
        "bounds": {},
        "require_dp": False,
    }
    request: dict[str, Any] = {
        "job_id": "warm-up",
        "policy": policy,
        "outputs": {"model": True, "metrics": True, "aggregates": True},
        "model_spec": {"estimator": "ridge", "params": {}, "target": "y", "features": ["x"], "task": "regression"},
        "analysis_specs": [
            {"name": "t", "group_by": ["g"], "metrics": [{"agg": "count"}, {"agg": "mean", "column": "y"}]}
        ],
        "table_names": ["t"],
        "dp": {},
        "names": {"schemas": {"warm": {c: ["a", "b"] for c in frame.columns}}, "job_strings": []},
    }
    # DP is the default: warm its path too (OpenDP's import and first measurements take about a second)
    private = {
        **request,
        "policy": {**policy, "require_dp": True, "bounds": {"x": [-4, 4], "y": [-10, 10]}},
        "dp": {"epsilon": 1.0, "delta": 1e-7},
    }
    for warm in (request, private):
        try:
            meta, _ = run(warm, {FRAME: wire.frame_to_bytes(frame)})
            if not meta["ok"]:
                log.warning("warm-up did not pass its checks: %s", meta["error"])
        except Exception as exc:  # noqa: BLE001 - only speed is at stake
            log.warning("warm-up failed: %s", type(exc).__name__)
    return time.monotonic() - started


def main() -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="release: %(message)s")
    # The wire owns stdout; anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    warm = warm_up()
    times: dict[str, float] = {}
    mark = time.monotonic()

    def stage(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        times[name] = now - mark
        mark = now

    wire.wait_for_input(sys.stdin.buffer)
    stage("wait")
    result: dict[str, bytes] = {}
    try:
        request, files = wire.read_message(sys.stdin.buffer, "job.json", MAX_REQUEST_BYTES)
    except wire.WireError as exc:
        meta = _failure([{"name": "request", "passed": False, "detail": str(exc)}], str(exc))
    else:
        stage("read")
        meta, result = run(request, files)
        stage("checks")
    wire.write_message(out, "result.json", meta, result)
    out.close()
    stage("write")
    log.info(
        "ok=%s artifacts=%d; warm-up %.2f s, %s",
        meta["ok"],
        len(meta["artifacts"]),
        warm,
        ", ".join(f"{name} {seconds:.2f} s" for name, seconds in times.items()),
    )
    return 0
