"""The compute phase: run a job's approved plugins over its decrypted inputs, inside the sandbox.

    python -I -m cleanroom.sandbox.compute [--max-request-bytes N]

Reads `job.json`, `inputs/<i>.arrow` and `plugins/<plugin_id>.tar` on stdin and writes `result.json`
and `frames/joined.arrow` on stdout (`cleanroom.sandbox.wire`, formats in docs/design.md). Plugin
code runs in this process, so fd 1 is pointed at stderr before anything else happens and the
response goes to a private duplicate of the original stdout: what plugins print lands in the log.

Order: steps with `dataset` run on that input before the join, in job order; the inputs are then
inner-joined on `_pid` (a column held by several inputs becomes `<column>@<dataset>`; a dataset with
several rows per `_pid` is kept as is, so the other side's rows repeat); then the steps without
`dataset` run on the joined frame, model and analysis steps receiving its columns at that point
(sorted by name).

A failing plugin gives `ok: false` with the step, the exception type, where in the plugin it was
raised and, only when the plugin's own code raised it, its message (which goes to the data owners'
log). The exit code is 0 whenever a response was written.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import json
import math
import numbers
import os
import shutil
import sys
import tempfile
import time
import traceback
import types
from collections import Counter
from collections.abc import Callable
from typing import Any

import pandas as pd
import pluggy

from cleanroom.sandbox import hookspecs, wire
from cleanroom.sandbox.bundles import (
    Bundle,
    BundleFormatError,
    ParamsError,
    bundle_id,
    extract_to,
    unpack,
)
from cleanroom.sandbox.bundles import validate_params as _validate_params
from cleanroom.sandbox.vocabulary import PID, STEP_KINDS
from cleanroom.sandbox.vocabulary import TRANSFORM_KINDS as TRANSFORMS

MAX_REQUEST_BYTES = 4 * 2**30
MAX_SPEC_BYTES = 64 * 1024
# Errors whose messages describe code, never data: shown even when raised outside the plugin's files.
SAFE_MESSAGES = (pluggy.PluginValidationError, BundleFormatError, SyntaxError, ImportError)


class ComputeError(Exception):
    """The request or a step broke a rule; the message is meant for the data owners' log."""


class _Clock:
    """How long each stage took; `main` logs them (times only, never data) for the owners' log."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.marks: list[tuple[str, float]] = []

    def reset(self) -> None:
        self.last, self.marks = time.monotonic(), []

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.marks.append((name, now - self.last))
        self.last = now

    def summary(self) -> str:
        return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.marks)


stage = _Clock()


def load_plugin(bundle: Bundle, workdir: str) -> pluggy.PluginManager:
    """Extract a bundle under `workdir`, import its entry as a private package, register its hooks."""
    root = os.path.join(workdir, bundle.id[:16])
    os.mkdir(root, 0o700)
    extract_to(bundle, root)
    package = f"cleanroom_bundle_{bundle.id[:16]}"
    if package not in sys.modules:
        module = types.ModuleType(package)
        module.__path__ = [root]
        module.__spec__ = importlib.machinery.ModuleSpec(package, None, is_package=True)
        module.__spec__.submodule_search_locations = [root]
        sys.modules[package] = module
    entry = importlib.import_module(package + "." + bundle.entry[:-3].replace("/", "."))
    manager = pluggy.PluginManager("cleanroom")
    manager.add_hookspecs(hookspecs)
    manager.register(entry, name=bundle.id)
    manager.check_pending()
    return manager


def describe(label: str, exc: BaseException, root: str) -> str:
    """`label: Type at plugin.py:12: message`, the message only when plugin code raised it itself."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f.filename.startswith(root + os.sep)]
    text = f"{label}: {type(exc).__name__}"
    if ours:
        text += f" at {os.path.relpath(ours[-1].filename, root)}:{ours[-1].lineno}"
    message = " ".join(str(exc).split())[:300]
    if isinstance(exc, SyntaxError):
        message = f"{exc.msg} (line {exc.lineno})"
    if message and (isinstance(exc, SAFE_MESSAGES) or (frames and frames[-1] in ours)):
        text += f": {message}"
    for frame in ours:
        print(f"  {os.path.relpath(frame.filename, root)}:{frame.lineno} in {frame.name}", file=sys.stderr)
    return text


def _guarded(label: str, root: str, func: Callable[..., Any], **kwargs: Any) -> Any:
    try:
        return func(**kwargs)
    except (Exception, SystemExit) as exc:
        message = describe(label, exc, root)
        print(message, file=sys.stderr)
        raise ComputeError(message) from None


def check_frame(result: Any, columns: list[str], pids: pd.Series, label: str) -> pd.DataFrame:
    """The rules every preprocess/features result keeps; `columns` and `pids` are from before the step."""
    if not isinstance(result, pd.DataFrame):
        raise ComputeError(f"{label} returned {type(result).__name__}, not a DataFrame")
    bad = [c for c in result.columns if not isinstance(c, str)]
    if bad:
        raise ComputeError(f"{label} returned a column name that is not a string ({type(bad[0]).__name__})")
    if PID not in result.columns:
        raise ComputeError(f"{label} dropped the {PID} column; plugins must keep it")
    if result.columns.duplicated().any():
        raise ComputeError(
            f"{label} returned a repeated column name {result.columns[result.columns.duplicated()][0]!r}"
        )
    reserved = sorted(c for c in result.columns if c.startswith("_") and c not in columns)
    if reserved:
        raise ComputeError(f"{label} added the column {reserved[0]!r}; names starting with '_' are reserved")
    if not _pids_known(result[PID], pids):
        raise ComputeError(f"{label} changed or invented {PID} values")
    return result.reset_index(drop=True)


def _pids_known(after: pd.Series, before: pd.Series) -> bool:
    """Every `_pid` after a step existed before it (vectorised: a Python-level isin is slow at 1M rows).

    Integer codes (what the runner sends, `cleanroom.runner.recode`) must keep their dtype: values
    of another type that compare equal (1.0, True) would later count as other units.
    """
    if pd.api.types.is_integer_dtype(before.dtype) and after.dtype != before.dtype:
        return False
    new, old = after.to_numpy(), before.to_numpy()
    if len(new) == len(old) and (new == old).all():
        return True
    known = pd.Index(pd.unique(old))
    return bool((known.get_indexer(new) >= 0).all())


def check_spec(result: Any, label: str) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise ComputeError(f"{label} returned {type(result).__name__}, not a spec object")
    try:
        size = len(json.dumps(result, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ComputeError(f"{label} returned a spec that is not plain JSON ({exc})") from None
    if size > MAX_SPEC_BYTES:
        raise ComputeError(f"{label} returned a spec larger than {MAX_SPEC_BYTES} bytes")
    return result


def join(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Inner join on `_pid`; a column held by several inputs becomes `<column>@<dataset>`."""
    counts = Counter(c for frame in frames.values() for c in frame.columns if c != PID)
    renamed = [
        frame.rename(columns={c: f"{c}@{name}" for c in frame.columns if c != PID and counts[c] > 1})
        for name, frame in frames.items()
    ]
    joined = renamed[0]
    for frame in renamed[1:]:
        joined = joined.merge(frame, on=PID, how="inner", sort=False)
    repeated = joined.columns[joined.columns.duplicated()]
    if len(repeated):
        raise ComputeError(f"the join gives a repeated column {repeated[0]!r}")
    return joined.reset_index(drop=True)


def _parse_request(
    meta: dict[str, Any], files: dict[str, bytes]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    inputs, steps, cap = meta.get("inputs"), meta.get("steps"), meta.get("max_output_bytes")
    if (
        not isinstance(inputs, list)
        or not inputs
        or not all(isinstance(i, dict) and isinstance(i.get("dataset"), str) and i.get("file") in files for i in inputs)
    ):
        raise ComputeError("job.json: inputs must be a non-empty list of {dataset, file} naming sent files")
    names = [i["dataset"] for i in inputs]
    if len(set(names)) != len(names):
        raise ComputeError("job.json: an input dataset appears twice")
    if not isinstance(steps, list):
        raise ComputeError("job.json: steps must be a list")
    for n, step in enumerate(steps, 1):
        if (
            not isinstance(step, dict)
            or not isinstance(step.get("plugin_id"), str)
            or step.get("kind") not in STEP_KINDS
            or not isinstance(step.get("params") or {}, dict)
        ):
            raise ComputeError(f"job.json: step {n} needs plugin_id, kind and params")
        if step.get("dataset") is not None and step["dataset"] not in names:
            raise ComputeError(f"job.json: step {n} names a dataset that is not an input")
        if step.get("dataset") is not None and step["kind"] not in TRANSFORMS:
            raise ComputeError(
                f"job.json: step {n} is a {step['kind']} step; only preprocess and features steps run on one input"
            )
    if isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0:
        raise ComputeError("job.json: max_output_bytes must be a positive integer")
    return inputs, steps, cap


def _load_bundle(plugin_id: str, files: dict[str, bytes]) -> Bundle:
    archive = files.get(f"plugins/{plugin_id}.tar")
    if archive is None:
        raise ComputeError(f"plugin {plugin_id[:16]} was not sent")
    if bundle_id(archive) != plugin_id:  # checked before parsing anything
        raise ComputeError(f"plugin {plugin_id[:16]}: the bundle's sha256 does not match its id; refusing it")
    return unpack(archive)


Response = tuple[dict[str, Any], dict[str, bytes]]


def run(meta: dict[str, Any], files: dict[str, bytes], workdir: str) -> Response:
    """Run the request; return the response and its files. Raises ComputeError."""
    inputs, steps, cap = _parse_request(meta, files)
    frames: dict[str, pd.DataFrame] = {}
    for item in inputs:
        frame = wire.frame_from_bytes(files[item["file"]])
        if PID not in frame.columns:
            raise ComputeError(f"input {item['dataset']} has no {PID} column")
        frames[item["dataset"]] = frame
    if len({pd.api.types.is_integer_dtype(f[PID].dtype) for f in frames.values()}) > 1:
        raise ComputeError(f"the inputs' {PID} columns mix integer codes and text")
    stage("inputs")
    loaded: dict[str, tuple[Bundle, pluggy.PluginManager, str]] = {}
    for step in steps:
        pid = step["plugin_id"]
        if pid not in loaded:
            bundle = _load_bundle(pid, files)
            root = os.path.join(workdir, bundle.id[:16])
            manager = _guarded(f"loading plugin {bundle.name}", root, load_plugin, bundle=bundle, workdir=workdir)
            loaded[pid] = (bundle, manager, root)
    files.clear()
    stage("plugins")

    def call(n: int, step: dict[str, Any], **kwargs: Any) -> Any:
        bundle, manager, root = loaded[step["plugin_id"]]
        label = f"step {n} ({bundle.name})"
        if step["kind"] != bundle.kind or step.get("entry", bundle.entry) != bundle.entry:
            raise ComputeError(f"{label}: the step's kind or entry differs from the plugin's manifest")
        try:
            params = _validate_params(bundle.manifest, step.get("params") or {})
        except ParamsError as exc:
            raise ComputeError(f"{label}: {exc}") from None
        name = hookspecs.HOOK_BY_KIND[bundle.kind]
        result = _guarded(label, root, getattr(manager.hook, name), params=params, **kwargs)
        if result is None:
            raise ComputeError(f"{label}: the plugin implements no {name} hook (or it returned None)")
        return label, result

    def transform(n: int, step: dict[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
        columns, pids = list(frame.columns), frame[PID].copy()  # the plugin may change `frame` in place
        label, result = call(n, step, df=frame)
        return check_frame(result, columns, pids, label)

    for n, step in enumerate(steps, 1):
        if step.get("dataset") is not None:
            frames[step["dataset"]] = transform(n, step, frames[step["dataset"]])
    stage("input steps")
    joined = join(frames)
    del frames
    stage("join")
    model_specs: list[dict[str, Any]] = []
    analysis_specs: list[dict[str, Any]] = []
    for n, step in enumerate(steps, 1):
        if step.get("dataset") is not None:
            continue
        if step["kind"] in TRANSFORMS:
            joined = transform(n, step, joined)
        elif step["kind"] == "statistic":  # a block of sample-and-aggregate: the vector is the whole answer
            label, result = call(n, step, df=joined)
            stage("steps")
            return {"ok": True, "error": None, "statistic": block_vector(result)}, {}
        else:
            # sorted: the frame's column order may follow the data (one-hot by frequency), and a spec
            # built from it would then differ from the mock run's (cleanroom.sandbox.release.structure)
            label, result = call(n, step, columns=sorted(str(c) for c in joined.columns))
            target = model_specs if step["kind"] == "model" else analysis_specs
            target.append({"plugin_id": step["plugin_id"], "spec": check_spec(result, label)})
    stage("steps")
    try:
        data = wire.frame_to_bytes(joined)
    except Exception as exc:  # noqa: BLE001 - the type names the problem; its message may hold values
        raise ComputeError(
            f"the joined frame cannot be encoded as Arrow ({type(exc).__name__}): check that "
            "every column holds one type"
        ) from None
    if len(data) > cap:
        raise ComputeError(f"the joined frame is {len(data)} bytes, over the limit of {cap}")
    stage("encode")
    response = {
        "ok": True,
        "error": None,
        "rows": len(joined),
        "columns": [str(c) for c in joined.columns],
        "model_specs": model_specs,
        "analysis_specs": analysis_specs,
    }
    return response, {"frames/joined.arrow": data}


def block_vector(result: Any) -> Any:
    """A statistic's result as JSON: a list of numbers (None for what is not a finite real number); any other
    shape becomes None. Best effort only: the runner checks the answer again (`cleanroom.runner.blocks`)."""
    if hasattr(result, "tolist") and callable(result.tolist):
        try:
            result = result.tolist()
        except Exception:  # noqa: BLE001 - a hostile object: treated as no answer
            return None
    if not isinstance(result, list | tuple) or len(result) > 10_000:
        return None
    out: list[float | None] = []
    for value in result:
        number = None
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            try:
                number = float(value)
            except Exception:  # noqa: BLE001 - a hostile __float__
                number = None
        out.append(number if number is not None and math.isfinite(number) else None)
    return out


def failure(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message[:2000], "rows": 0, "columns": [], "model_specs": [], "analysis_specs": []}


def main(argv: list[str] | None = None) -> int:
    sys.dont_write_bytecode = True
    sys.stdout.flush()
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # from here on, anything written to fd 1 (print, C libraries) goes to the log
    parser = argparse.ArgumentParser(prog="python -I -m cleanroom.sandbox.compute")
    parser.add_argument("--max-request-bytes", type=int, default=MAX_REQUEST_BYTES)
    args = parser.parse_args(argv)
    out: dict[str, bytes] = {}
    stage.reset()
    wire.wait_for_input(sys.stdin.buffer)
    stage("wait")
    try:
        meta, files = wire.read_message(sys.stdin.buffer, "job.json", args.max_request_bytes)
        stage("read")
    except wire.WireError as exc:
        response = failure(f"invalid request: {exc}")
    else:
        workdir = tempfile.mkdtemp(prefix="cleanroom-compute-")
        try:
            response, out = run(meta, files, workdir)
        except (ComputeError, BundleFormatError, ParamsError, wire.WireError) as exc:
            response = failure(str(exc))
        except Exception as exc:  # noqa: BLE001 - always answer; the type is enough to start looking
            traceback.print_exc()
            response = failure(f"compute phase error: {type(exc).__name__}")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.stdout.flush()
    sys.stderr.flush()
    wire.write_message(protocol, "result.json", response, out)
    protocol.close()
    stage("write")
    print(f"compute: {stage.summary()}", file=sys.stderr, flush=True)
    return 0
