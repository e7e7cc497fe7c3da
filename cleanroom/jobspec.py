"""Job specs: what an analyst asks the room to run, and the check that the policies allow it.

A job spec names inputs, approved plugins (by id) and outputs; it never carries isolation
settings. The room's operator sets those, so a client cannot turn on the network or raise a limit.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import re
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from cleanroom import ledger
from cleanroom.errors import PolicyError, ValidationError
from cleanroom.policy import (
    Checker,
    EffectivePolicy,
    Policy,
    combine,
    dotted,
    load_toml,
    type_name,
)
from cleanroom.sandbox.vocabulary import DATASET_NAME, JOB_NAME, ORG_NAME, STEP_KINDS, TRANSFORM_KINDS
from cleanroom.sandbox.vocabulary import SHA256_HEX as PLUGIN_ID

__all__ = [
    "FORBIDDEN_KEYS",
    "BlockOutput",
    "JobOutputs",
    "JobSpec",
    "SampleAggregate",
    "Step",
    "check_job",
    "check_time_budget",
    "parse_jobspec",
]

FORBIDDEN_KEYS = frozenset(
    {
        "network",
        "network_mode",
        "image",
        "runtime",
        "mounts",
        "volumes",
        "privileged",
        "env",
        "environment",
        "limits",
        "memory",
        "mem_limit",
        "cpu",
        "cpus",
        "pids_limit",
        "timeout",
        "user",
        "cap_add",
        "capabilities",
        "security_opt",
        "devices",
        "tmpfs",
        "entrypoint",
        "command",
        "working_dir",
    }
)
MAX_INPUTS = 8
MAX_STEPS = 20
MAX_PARAMS_BYTES = 64_000
MIN_TIME_BUDGET, MAX_TIME_BUDGET = 10, 86400
# sample-and-aggregate (cleanroom.runner.blocks): one fresh container per block, so m is bounded
MIN_BLOCKS, MAX_BLOCKS, MAX_BLOCK_OUTPUTS = 2, 256, 32
MIN_BLOCK_SECONDS, MAX_BLOCK_SECONDS, DEFAULT_BLOCK_SECONDS = 5, 3600, 30
BLOCK_OVERHEAD_SECONDS = 15  # container start and teardown per block, counted against time_budget
AGGREGATES = ("mean", "median")
OUTPUT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class Step:
    plugin: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    dataset: str | None = None  # set: runs on that input only, before the join


@dataclass(frozen=True)
class BlockOutput:
    """One coordinate of a sample-and-aggregate release: its name, declared range and default."""

    name: str
    lo: float
    hi: float
    default: float


@dataclass(frozen=True)
class SampleAggregate:
    """`[outputs.sample_and_aggregate]`: the job's one `statistic` step runs once per block of units."""

    blocks: int
    outputs: tuple[BlockOutput, ...]
    aggregate: str = "mean"
    block_seconds: int = DEFAULT_BLOCK_SECONDS

    def to_dict(self) -> dict[str, Any]:
        return {
            "blocks": self.blocks,
            "aggregate": self.aggregate,
            "block_seconds": self.block_seconds,
            "outputs": [{"name": o.name, "lo": o.lo, "hi": o.hi, "default": o.default} for o in self.outputs],
        }


@dataclass(frozen=True)
class JobOutputs:
    model: bool = False
    metrics: bool = False
    aggregates: bool = False
    holdout_fraction: float = 0.2
    seed: int = 0
    epsilon: float | None = None
    delta: float | None = None
    bounds: tuple[tuple[str, tuple[float, float]], ...] = ()  # declared clipping bounds for DP (not data)
    sample_and_aggregate: SampleAggregate | None = None


@dataclass(frozen=True)
class JobSpec:
    name: str
    recipient: str
    inputs: tuple[str, ...]
    steps: tuple[Step, ...]
    outputs: JobOutputs
    join: str = "inner"
    time_budget: int | None = None  # seconds from the start until the analyst learns the outcome (room default)

    def dataset_names(self) -> tuple[str, ...]:
        return self.inputs

    def plugin_ids(self) -> tuple[str, ...]:
        """Every plugin of the job once, in step order."""
        return tuple(dict.fromkeys(step.plugin for step in self.steps))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the API stores and sends to the runner."""
        o = self.outputs
        return {
            "name": self.name,
            "recipient": self.recipient,
            **({"time_budget": self.time_budget} if self.time_budget is not None else {}),
            "inputs": [{"dataset": name} for name in self.inputs],
            "join": {"how": self.join},
            "steps": [
                {"plugin": s.plugin, "params": copy.deepcopy(s.params), "dataset": s.dataset} for s in self.steps
            ],
            "outputs": {
                "model": o.model,
                "metrics": o.metrics,
                "aggregates": o.aggregates,
                "holdout_fraction": o.holdout_fraction,
                "seed": o.seed,
                "epsilon": o.epsilon,
                **({"delta": o.delta} if o.delta is not None else {}),
                **({"bounds": {c: [lo, hi] for c, (lo, hi) in o.bounds}} if o.bounds else {}),
                **({"sample_and_aggregate": o.sample_and_aggregate.to_dict()} if o.sample_and_aggregate else {}),
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """Reload `to_dict()`; as strict as `parse_jobspec`."""
        return _build(dict(data), Checker(None, ValidationError))


def parse_jobspec(text: str) -> JobSpec:
    """Parse and validate a job spec (TOML); `ValidationError` names the line of the problem."""
    data, lines = load_toml(text, "job spec", ValidationError)
    return _build(data, Checker(lines, ValidationError))


def _forbidden(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            here = path + (key,)
            found += [here] if str(key).lower() in FORBIDDEN_KEYS else _forbidden(item, here)
        return found
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _forbidden(item, path + (i,))]
    return []


def _jsonable(ck: Checker, path: tuple[Any, ...], value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _jsonable(ck, path + (key,), item)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _jsonable(ck, path + (i,), item)
    elif isinstance(value, datetime.date | datetime.time):
        ck.fail(
            path, f"{dotted(path)} is a date or time: params hold strings, numbers, booleans, arrays and tables only"
        )
    elif isinstance(value, float) and not math.isfinite(value):
        ck.fail(path, f"{dotted(path)} must be a finite number")


def _build(data: dict[str, Any], ck: Checker) -> JobSpec:
    bad = _forbidden(data)
    if bad:
        path = min(bad, key=lambda p: ck.lines.line_of(p) if ck.lines else 0)
        ck.fail(path, f"the job spec cannot set {path[-1]!r}: isolation is set by the room's policy")
    ck.table((), data, ("name", "recipient", "inputs", "join", "steps", "outputs", "time_budget"), "the job spec")
    for key in ("name", "recipient", "inputs", "steps", "outputs"):
        if key not in data:
            ck.fail((), f"the job spec needs {key!r}")
    name = ck.typed(("name",), data["name"], "string")
    if not JOB_NAME.fullmatch(name):
        ck.fail(("name",), f"job name {name!r} must be 1-63 characters: a-z, 0-9, '_', '.', '-'")
    recipient = ck.typed(("recipient",), data["recipient"], "string")
    if not ORG_NAME.fullmatch(recipient):
        ck.fail(("recipient",), f"recipient {recipient!r} is not a valid org name")
    time_budget = data.get("time_budget")
    if time_budget is not None:
        time_budget = ck.typed(("time_budget",), time_budget, "int")
        if not MIN_TIME_BUDGET <= time_budget <= MAX_TIME_BUDGET:
            ck.fail(
                ("time_budget",),
                f"time_budget is the seconds from the job's start to its outcome, "
                f"{MIN_TIME_BUDGET} to {MAX_TIME_BUDGET} (got {time_budget})",
            )

    inputs: list[str] = []
    raw_inputs = ck.typed(("inputs",), data["inputs"], "list")
    if not 1 <= len(raw_inputs) <= MAX_INPUTS:
        ck.fail(("inputs",), f"a job has 1 to {MAX_INPUTS} inputs (got {len(raw_inputs)})")
    for i, item in enumerate(raw_inputs):
        path = ("inputs", i)
        item = ck.table(path, item, ("dataset",), f"inputs[{i}]")
        if "dataset" not in item:
            ck.fail(path, f"inputs[{i}] needs 'dataset'")
        dataset = ck.typed(path + ("dataset",), item["dataset"], "string")
        if not DATASET_NAME.fullmatch(dataset):
            ck.fail(path + ("dataset",), f"{dataset!r} is not a valid dataset name")
        if dataset in inputs:
            ck.fail(path + ("dataset",), f"dataset {dataset!r} is an input twice")
        inputs.append(dataset)

    join = ck.table(("join",), data.get("join", {}), ("how",), "[join]")
    how = ck.typed(("join", "how"), join.get("how", "inner"), "string")
    if how != "inner":
        ck.fail(("join", "how"), f"join how = {how!r} is not supported: only 'inner' (on _pid)")

    steps: list[Step] = []
    raw_steps = ck.typed(("steps",), data["steps"], "list")
    if not 1 <= len(raw_steps) <= MAX_STEPS:
        ck.fail(("steps",), f"a job has 1 to {MAX_STEPS} steps (got {len(raw_steps)})")
    for i, item in enumerate(raw_steps):
        path = ("steps", i)
        item = ck.table(path, item, ("plugin", "params", "dataset"), f"steps[{i}]")
        if "plugin" not in item:
            ck.fail(path, f"steps[{i}] needs 'plugin' (a plugin id)")
        plugin = ck.typed(path + ("plugin",), item["plugin"], "string")
        if not PLUGIN_ID.fullmatch(plugin):
            ck.fail(path + ("plugin",), f"steps[{i}].plugin must be a plugin id: 64 lowercase hex characters")
        params = item.get("params", {})
        if not isinstance(params, dict):
            ck.fail(path + ("params",), f"steps[{i}].params must be a table, got {type_name(params)}")
        _jsonable(ck, path + ("params",), params)
        if len(json.dumps(params)) > MAX_PARAMS_BYTES:
            ck.fail(path + ("params",), f"steps[{i}].params is larger than {MAX_PARAMS_BYTES} bytes")
        dataset = item.get("dataset")
        if dataset is not None:
            ck.typed(path + ("dataset",), dataset, "string")
            if dataset not in inputs:
                ck.fail(path + ("dataset",), f"steps[{i}] runs on {dataset!r}, which is not an input")
        steps.append(Step(plugin, params, dataset))

    out = ck.table(("outputs",), data["outputs"], JobOutputs.__dataclass_fields__, "[outputs]")
    flags = {key: ck.typed(("outputs", key), out.get(key, False), "bool") for key in ("model", "metrics", "aggregates")}
    sa = _sample_aggregate(ck, out["sample_and_aggregate"], time_budget) if "sample_and_aggregate" in out else None
    if sa is not None and any(flags.values()):
        ck.fail(
            ("outputs", "sample_and_aggregate"),
            "sample_and_aggregate is the job's only output: set model, "
            "metrics and aggregates to false (or leave them out)",
        )
    if not any(flags.values()) and sa is None:
        ck.fail(
            ("outputs",),
            "the job asks for nothing: set model, metrics or aggregates to true, or add [outputs.sample_and_aggregate]",
        )
    if flags["metrics"] and not flags["model"]:
        ck.fail(("outputs", "metrics"), "metrics = true needs model = true")
    holdout = ck.typed(("outputs", "holdout_fraction"), out.get("holdout_fraction", 0.2), "number")
    if not 0.05 <= holdout <= 0.5:
        ck.fail(("outputs", "holdout_fraction"), f"holdout_fraction must be in [0.05, 0.5] (got {holdout:g})")
    seed = ck.typed(("outputs", "seed"), out.get("seed", 0), "int")
    if not 0 <= seed < 2**32:
        ck.fail(("outputs", "seed"), f"seed must be in [0, 2**32) (got {seed})")
    epsilon = out.get("epsilon")
    if epsilon is not None:
        epsilon = ck.typed(("outputs", "epsilon"), epsilon, "number")
        if epsilon <= 0:
            ck.fail(("outputs", "epsilon"), f"epsilon must be greater than 0 (got {epsilon:g})")
    delta = out.get("delta")
    if delta is not None:
        delta = ck.typed(("outputs", "delta"), delta, "number")
        if not 0 < delta <= 1e-3:
            ck.fail(("outputs", "delta"), f"delta must be in (0, 0.001] (got {delta:g})")
    bounds: list[tuple[str, tuple[float, float]]] = []
    raw_bounds = out.get("bounds", {})
    if not isinstance(raw_bounds, dict):
        ck.fail(
            ("outputs", "bounds"), f"outputs.bounds must be a table of column = [lo, hi], got {type_name(raw_bounds)}"
        )
    for column, pair in raw_bounds.items():
        path = ("outputs", "bounds", column)
        if not isinstance(pair, list) or len(pair) != 2:
            ck.fail(path, f"bounds of {column!r} must be [lo, hi]")
        lo, hi = (ck.typed(path, v, "number") for v in pair)
        if lo >= hi:
            ck.fail(path, f"bounds of {column!r} need lo < hi (got [{lo:g}, {hi:g}])")
        bounds.append((column, (lo, hi)))
    return JobSpec(
        name=name,
        recipient=recipient,
        inputs=tuple(inputs),
        steps=tuple(steps),
        join=how,
        time_budget=time_budget,
        outputs=JobOutputs(
            **flags,
            holdout_fraction=holdout,
            seed=seed,
            epsilon=epsilon,
            delta=delta,
            bounds=tuple(sorted(bounds)),
            sample_and_aggregate=sa,
        ),
    )


def _sample_aggregate(ck: Checker, raw: Any, time_budget: int | None) -> SampleAggregate:
    """`[outputs.sample_and_aggregate]`: every number of the release's structure, fixed before any data."""
    path = ("outputs", "sample_and_aggregate")
    raw = ck.table(path, raw, ("blocks", "aggregate", "outputs", "block_seconds"), "[outputs.sample_and_aggregate]")
    for key in ("blocks", "outputs"):
        if key not in raw:
            ck.fail(path, f"[outputs.sample_and_aggregate] needs {key!r}")
    blocks = ck.typed(path + ("blocks",), raw["blocks"], "int")
    if not MIN_BLOCKS <= blocks <= MAX_BLOCKS:
        ck.fail(
            path + ("blocks",),
            f"blocks (m, the number of disjoint unit blocks) must be {MIN_BLOCKS} to {MAX_BLOCKS} (got {blocks})",
        )
    aggregate = ck.typed(path + ("aggregate",), raw.get("aggregate", "mean"), "string")
    if aggregate not in AGGREGATES:
        ck.fail(path + ("aggregate",), f"aggregate must be one of {', '.join(AGGREGATES)} (got {aggregate!r})")
    seconds = ck.typed(path + ("block_seconds",), raw.get("block_seconds", DEFAULT_BLOCK_SECONDS), "int")
    if not MIN_BLOCK_SECONDS <= seconds <= MAX_BLOCK_SECONDS:
        ck.fail(
            path + ("block_seconds",),
            f"block_seconds must be {MIN_BLOCK_SECONDS} to {MAX_BLOCK_SECONDS} (got {seconds})",
        )
    if time_budget is not None and blocks * (seconds + BLOCK_OVERHEAD_SECONDS) > time_budget:
        ck.fail(
            path + ("blocks",),
            f"{blocks} blocks of up to {seconds} s (+{BLOCK_OVERHEAD_SECONDS} s each to "
            f"start a container) may not end within time_budget = {time_budget}: lower blocks or "
            "block_seconds, or raise time_budget",
        )
    items = ck.typed(path + ("outputs",), raw["outputs"], "list")
    if not 1 <= len(items) <= MAX_BLOCK_OUTPUTS:
        ck.fail(path + ("outputs",), f"outputs lists 1 to {MAX_BLOCK_OUTPUTS} numbers (got {len(items)})")
    outputs: list[BlockOutput] = []
    for i, item in enumerate(items):
        here = path + ("outputs", i)
        item = ck.table(here, item, ("name", "lo", "hi", "default"), f"sample_and_aggregate.outputs[{i}]")
        for key in ("name", "lo", "hi", "default"):
            if key not in item:
                ck.fail(here, f"sample_and_aggregate.outputs[{i}] needs {key!r} (name, lo, hi and default)")
        name = ck.typed(here + ("name",), item["name"], "string")
        if not OUTPUT_NAME.fullmatch(name) or name in {o.name for o in outputs}:
            ck.fail(
                here + ("name",),
                f"output name {name!r} must be unique and 1-63 characters: a letter, then "
                "letters, digits, '_', '.', '-'",
            )
        lo, hi, default = (float(ck.typed(here + (k,), item[k], "number")) for k in ("lo", "hi", "default"))
        if lo >= hi:
            ck.fail(here, f"output {name!r} needs lo < hi (got [{lo:g}, {hi:g}])")
        if not lo <= default <= hi:
            ck.fail(here + ("default",), f"output {name!r}: default {default:g} must be within [{lo:g}, {hi:g}]")
        outputs.append(BlockOutput(name, lo, hi, default))
    return SampleAggregate(blocks=blocks, outputs=tuple(outputs), aggregate=aggregate, block_seconds=seconds)


def check_job(
    spec: JobSpec,
    *,
    datasets: Mapping[str, Mapping[str, Any]],
    plugins: Mapping[str, Mapping[str, Any]],
    approvals: Set[tuple[str, str, int, str]],
    recipient_exists: bool,
    budget_remaining: Mapping[str, Any] | None = None,
) -> EffectivePolicy:
    """Decide whether `spec` may run now; return its effective policy or raise `PolicyError`.

    The API builds every argument from its store, as plain values:

    - `datasets[name] = {"owner": org name, "policy": Policy (or its to_dict()),
      "policy_version": int, "sha256": ciphertext sha256 hex}` for (at least) every input.
    - `plugins[plugin_id] = {"name": str, "kind": "preprocess"|"features"|"model"|"analysis",
      "manifest": the parsed cleanroom-plugin.toml dict}` for (at least) every plugin of the job.
    - `approvals`: `(plugin_id, dataset, policy_version, dataset_sha256)` of every approval that is
      granted, not revoked and given by the dataset's current owner.
    - `recipient_exists`: whether an org named `spec.recipient` is in the room.
    - `budget_remaining[name]`: DP budget left for this job's recipient, `(epsilon, delta)` or a number
      (epsilon; delta unchecked), from the ledger (`cleanroom.ledger`); None or absent: not checked
      here (the API's ledger admits the charge atomically with the job).
    """
    missing = [name for name in spec.inputs if name not in datasets]
    if missing:
        raise PolicyError(f"unknown dataset {missing[0]!r}", details={"dataset": missing[0]})
    if not recipient_exists:
        raise PolicyError(f"no org named {spec.recipient!r} in the room", details={"recipient": spec.recipient})
    for pid in spec.plugin_ids():
        if pid not in plugins:
            raise PolicyError(f"unknown plugin {pid[:12]}", details={"plugin": pid})
    policies = {name: _policy(datasets[name]["policy"]) for name in spec.inputs}
    _check_steps(spec, plugins)

    for name, policy in policies.items():
        owner = datasets[name]["owner"]
        if spec.recipient not in policy.recipients and spec.recipient != owner:
            allowed = ", ".join(policy.recipients) or "nobody but its owner"
            raise PolicyError(
                f"dataset {name!r} does not allow releases to {spec.recipient!r} (its policy allows: {allowed})",
                details={"dataset": name},
            )
        wanted = [
            ("model", spec.outputs.model),
            ("aggregate", spec.outputs.aggregates or spec.outputs.sample_and_aggregate is not None),
        ]
        for kind in (kind for kind, on in wanted if on and kind not in policy.outputs):
            raise PolicyError(f"dataset {name!r} does not allow {kind} outputs", details={"dataset": name})
    ledger.check_dp_job(spec, policies, plugins, budget_remaining)
    if spec.outputs.sample_and_aggregate is not None and ledger.job_budget(spec, policies) is None:
        raise PolicyError(
            "sample_and_aggregate is a differentially private release: at least one input must "
            "use differential privacy (every input of this job is in exact mode, where owners "
            "review releases instead)"
        )

    owners = {name: datasets[name]["owner"] for name in spec.inputs}
    absent = []
    for i, step in enumerate(spec.steps):
        for name in [step.dataset] if step.dataset else spec.inputs:
            ds = datasets[name]
            if (step.plugin, name, ds["policy_version"], ds["sha256"]) not in approvals:
                absent.append((i, step.plugin, name))
    if absent:
        i, pid, name = absent[0]
        more = f" ({len(absent) - 1} more missing)" if len(absent) > 1 else ""
        raise PolicyError(
            f"plugin {plugins[pid]['name']!r} ({pid[:12]}) is not approved by {owners[name]!r} for dataset "
            f"{name!r} at policy version {datasets[name]['policy_version']} and its current data{more}",
            hint=f"ask {owners[name]} to review and approve the plugin",
            details={"missing_approvals": [{"step": s, "plugin": p, "dataset": d} for s, p, d in absent]},
        )
    return ledger.with_job_budget(combine(policies, owners=owners), spec)


def check_time_budget(spec: JobSpec, default_seconds: float) -> None:
    """Refuse a sample-and-aggregate job whose blocks may not all end within its time budget (the spec's,
    else the room's default): its outcome would then come late, and when depends on the blocks."""
    sa = spec.outputs.sample_and_aggregate
    budget = spec.time_budget or default_seconds
    if sa is not None and sa.blocks * (sa.block_seconds + BLOCK_OVERHEAD_SECONDS) > budget:
        raise PolicyError(
            f"{sa.blocks} blocks of up to {sa.block_seconds} s (+{BLOCK_OVERHEAD_SECONDS} s each to "
            f"start a container) may not end within the job's time budget of {budget:g} s: lower "
            "blocks or block_seconds, or set a larger time_budget"
        )


def _a(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


def _policy(value: Policy | Mapping[str, Any]) -> Policy:
    return value if isinstance(value, Policy) else Policy.from_dict(value)


def _check_steps(spec: JobSpec, plugins: Mapping[str, Mapping[str, Any]]) -> None:
    from cleanroom.bundle import validate_params  # written alongside; imported late to keep this light

    kinds = [plugins[step.plugin]["kind"] for step in spec.steps]
    for i, (step, kind) in enumerate(zip(spec.steps, kinds, strict=True)):
        label = f"step {i} ({plugins[step.plugin]['name']!r}, {step.plugin[:12]})"
        if step.dataset is not None and step.dataset not in spec.inputs:
            raise PolicyError(
                f"{label} runs on {step.dataset!r}, which is not an input of the job", details={"step": i}
            )
        if kind not in STEP_KINDS:
            raise PolicyError(f"{label} has unknown kind {kind!r}", details={"step": i})
        if kind in ("model", "analysis", "statistic") and step.dataset:
            raise PolicyError(
                f"{label} is {_a(kind)} step: it runs on the joined inputs, drop 'dataset'", details={"step": i}
            )
        if i and kind in TRANSFORM_KINDS and kinds[i - 1] in ("model", "analysis"):
            raise PolicyError(
                f"{label} is {_a(kind)} step after {_a(kinds[i - 1])} step: preprocess and features steps come first",
                details={"step": i},
            )
        if step.dataset and i and not spec.steps[i - 1].dataset:
            raise PolicyError(
                f"{label} runs on {step.dataset!r} before the join: put it before the steps on the joined inputs",
                details={"step": i},
            )
        try:
            validate_params(plugins[step.plugin]["manifest"], step.params)
        except ValidationError as exc:
            raise PolicyError(f"{label}: {exc.message}", hint=exc.hint, details={"step": i}) from None
    models, analyses = kinds.count("model"), kinds.count("analysis")
    if spec.outputs.model and models != 1:
        raise PolicyError(f"model = true needs exactly one model step (the job has {models})")
    if not spec.outputs.model and models:
        raise PolicyError("the job has a model step but does not ask for a model: set model = true")
    if spec.outputs.aggregates and not analyses:
        raise PolicyError("aggregates = true needs at least one analysis step")
    if not spec.outputs.aggregates and analyses:
        raise PolicyError("the job has analysis steps but does not ask for aggregates: set aggregates = true")
    statistics = kinds.count("statistic")
    if spec.outputs.sample_and_aggregate is not None and statistics != 1:
        raise PolicyError(
            f"sample_and_aggregate needs exactly one statistic step (the job has {statistics}): "
            "it produces each block's output vector"
        )
    if spec.outputs.sample_and_aggregate is None and statistics:
        raise PolicyError(
            "the job has a statistic step but no [outputs.sample_and_aggregate]: a statistic's "
            "output leaves only as a noisy aggregate over blocks"
        )
    if statistics and kinds[-1] != "statistic":
        raise PolicyError("the statistic step must be the job's last step")
