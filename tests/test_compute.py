"""The compute phase, run as the sandbox runs it: `python -I -m cleanroom.sandbox.compute`, no environment."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cleanroom import bundle
from cleanroom.sandbox import wire
from cleanroom.sandbox.compute import phase as compute

REPO = Path(__file__).resolve().parent.parent
RETAIL, BANK = "retail.purchases", "bank.customers"


def built_in(name: str) -> tuple[str, bytes]:  # (plugin id, canonical archive)
    archive = bundle.pack(REPO / "plugins" / name)
    return bundle.bundle_id(archive), archive


Plugin = tuple[str, bytes]
Step = dict[str, Any]


def make_plugin(folder: Path, name: str, code: str, kind: str = "preprocess", params: str = "") -> Plugin:
    folder = folder / name
    folder.mkdir()
    (folder / "cleanroom-plugin.toml").write_text(
        f'name = "{name}"\nversion = "1.0.0"\nkind = "{kind}"\nentry = "plugin.py"\n{params}'
    )
    (folder / "plugin.py").write_text("from cleanroom.hookspecs import hookimpl\n\n\n" + code)
    archive = bundle.pack(folder)
    return bundle.bundle_id(archive), archive


def step(plugin: Plugin, params: dict[str, Any] | None = None, dataset: str | None = None) -> Step:
    manifest = bundle.unpack(plugin[1]).manifest
    return {
        "plugin_id": plugin[0],
        "name": manifest["name"],
        "kind": manifest["kind"],
        "entry": manifest["entry"],
        "params": params or {},
        "dataset": dataset,
    }


def run_compute(
    inputs: dict[str, pd.DataFrame],
    steps: list[Step],
    plugins: list[Plugin],
    *,
    tamper: dict[str, bytes] | None = None,
    raw: bytes | None = None,
    cwd: Path | None = None,
    max_output_bytes: int = 1 << 28,
) -> tuple[dict[str, Any], dict[str, bytes], str]:
    files = {f"inputs/{i}.arrow": wire.frame_to_bytes(df) for i, df in enumerate(inputs.values())}
    files.update({f"plugins/{pid}.tar": archive for pid, archive in plugins})
    files.update(tamper or {})
    meta = {
        "job_id": "job-1",
        "steps": steps,
        "max_output_bytes": max_output_bytes,
        "inputs": [{"dataset": name, "file": f"inputs/{i}.arrow"} for i, name in enumerate(inputs)],
    }
    request = io.BytesIO()
    wire.write_message(request, "job.json", meta, files)
    proc = subprocess.run(
        [sys.executable, "-I", "-m", "cleanroom.sandbox.compute"],
        input=raw if raw is not None else request.getvalue(),
        capture_output=True,
        env={},
        cwd=cwd,
        timeout=300,
    )
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, stderr
    result, out = wire.read_message(io.BytesIO(proc.stdout), "result.json", 1 << 30)
    return result, out, stderr


def scenario(n: int = 300, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    pids = np.array([f"{i:064x}" for i in rng.choice(10**9, size=int(n * 1.25), replace=False)])
    retail_ids, bank_ids = pids[:n], pids[int(n * 0.25) :]
    retail = pd.DataFrame(
        {
            "_pid": retail_ids,
            "email": [f"c{i}@example.com" for i in range(n)],
            "spend": rng.gamma(3, 100, n).round(2),
            "visits": rng.poisson(12, n),
            "category": rng.choice(["grocery", "electronics", "fashion", "home"], n),
            "region": rng.choice(["north", "south", "east", "west"], n),
            "last_purchase": (pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 365, n), unit="D")).strftime(
                "%Y-%m-%d"
            ),
        }
    )
    bank = pd.DataFrame(
        {
            "_pid": bank_ids,
            "full_name": [f"Customer {i}" for i in range(n)],
            "phone": [f"+44 20 7946 {i:04d}" for i in range(n)],
            "age": rng.integers(18, 85, n),
            "income": rng.lognormal(10.6, 0.4, n).round(2),
            "tenure_years": rng.integers(0, 30, n).astype(float),
            "segment": rng.choice(["mass", "affluent", "private"], n),
        }
    )
    bank.loc[rng.random(n) < 0.05, "tenure_years"] = np.nan
    return retail, bank


def test_the_motivating_scenario_end_to_end(tmp_path: Path) -> None:
    retail, bank = scenario()
    names = (
        "drop-identifiers",
        "date-parts",
        "impute",
        "one-hot",
        "scale",
        "linear-model",
        "gradient-boosting",
        "group-aggregate",
    )
    plugins = {name: built_in(name) for name in names}
    steps = [
        step(plugins["drop-identifiers"], dataset=RETAIL),
        step(
            plugins["date-parts"],
            {"column": "last_purchase", "parts": ["month", "days_since"], "reference_date": "2027-01-01"},
            dataset=RETAIL,
        ),
        step(plugins["drop-identifiers"], dataset=BANK),
        step(plugins["impute"]),
        step(plugins["one-hot"], {"columns": ["region", "category", "segment"], "keep_original": True}),
        step(plugins["scale"], {"exclude": ["spend"]}),
        step(plugins["linear-model"], {"target": "spend", "alpha": 2.0}),
        step(plugins["gradient-boosting"], {"target": "spend", "min_samples_leaf": 15}),
        step(
            plugins["group-aggregate"],
            {
                "name": "spend_by_region",
                "group_by": ["region"],
                "metrics": [{"agg": "count"}, {"agg": "mean", "column": "spend"}, {"agg": "sum", "column": "spend"}],
            },
        ),
    ]
    result, out, _ = run_compute({RETAIL: retail, BANK: bank}, steps, list(plugins.values()), cwd=tmp_path)
    assert result["ok"], result["error"]
    joined = wire.frame_from_bytes(out["frames/joined.arrow"])
    expected = retail.merge(bank, on="_pid")
    assert result["rows"] == len(joined) == len(expected) == 225
    assert result["columns"] == list(joined.columns)
    assert not {"email", "full_name", "phone", "last_purchase"} & set(joined.columns)
    assert {"region_north", "category_home", "segment_private", "last_purchase_days_since", "region"} <= set(
        joined.columns
    )
    assert joined["tenure_years"].notna().all() and abs(joined["age"].mean()) < 1e-9
    spend = joined.set_index("_pid")["spend"].sort_index()
    assert spend.equals(expected.set_index("_pid")["spend"].sort_index())
    [ridge, boosting] = result["model_specs"]
    assert ridge == {
        "plugin_id": plugins["linear-model"][0],
        "spec": {
            "estimator": "ridge",
            "params": {"fit_intercept": True, "alpha": 2.0},
            "target": "spend",
            "features": None,
            "task": "regression",
        },
    }
    assert boosting["spec"]["estimator"] == "gradient_boosting_regressor"
    assert result["analysis_specs"] == [
        {
            "plugin_id": plugins["group-aggregate"][0],
            "spec": {
                "name": "spend_by_region",
                "group_by": ["region"],
                "metrics": [{"agg": "count"}, {"agg": "mean", "column": "spend"}, {"agg": "sum", "column": "spend"}],
            },
        }
    ]
    assert list(tmp_path.iterdir()) == []  # nothing written in the working directory


def test_join_suffixes_clashes_and_keeps_repeated_pids() -> None:
    a = pd.DataFrame({"_pid": ["p1", "p2", "p3"], "region": ["n", "s", "e"], "x": [1, 2, 3]})
    b = pd.DataFrame({"_pid": ["p1", "p1", "p2", "p9"], "region": ["N", "N", "S", "W"], "y": [10, 11, 20, 90]})
    result, out, _ = run_compute({"org.a": a, "org.b": b}, [], [])
    assert result["ok"] and result["rows"] == 3 and result["model_specs"] == []
    joined = wire.frame_from_bytes(out["frames/joined.arrow"])
    assert list(joined.columns) == ["_pid", "region@org.a", "x", "region@org.b", "y"]
    assert joined["_pid"].tolist() == ["p1", "p1", "p2"] and joined["y"].tolist() == [10, 11, 20]


def test_a_plugin_error_gives_ok_false_with_the_error_class(tmp_path: Path) -> None:
    frame = pd.DataFrame({"_pid": ["p1", "p2"], "email": ["alice@example.com", "bob@example.com"]})
    own = make_plugin(
        tmp_path, "boom", "@hookimpl\ndef preprocess(df, params):\n    raise ValueError('column email is not usable')\n"
    )
    result, out, log = run_compute({"org.a": frame}, [step(own)], [own])
    error = "step 1 (boom): ValueError at plugin.py:6: column email is not usable"
    assert result == {"ok": False, "error": error, "rows": 0, "columns": [], "model_specs": [], "analysis_specs": []}
    assert out == {} and "plugin.py:6 in preprocess" in log
    inside = make_plugin(
        tmp_path, "cast", "@hookimpl\ndef preprocess(df, params):\n    return df.astype({'email': 'int64'})\n"
    )
    result, _, log = run_compute({"org.a": frame}, [step(inside)], [inside])
    assert not result["ok"] and result["error"].startswith("step 1 (cast): ValueError at plugin.py:6")
    assert "alice" not in result["error"] and "alice" not in log  # raised inside pandas: type and place only


def test_plugin_output_on_stdout_does_not_corrupt_the_protocol(tmp_path: Path) -> None:
    code = (
        "import os\nimport sys\n\n\n@hookimpl\ndef preprocess(df, params):\n"
        "    print('hello from the plugin ' * 5000)\n"
        "    sys.stdout.buffer.write(b'result.json' + bytes(1024))\n"
        "    os.write(1, b'raw bytes on fd 1\\n')\n"
        "    return df\n"
    )
    noisy = make_plugin(tmp_path, "noisy", code)
    frame = pd.DataFrame({"_pid": ["p1", "p2"], "v": [1.5, 2.5]})
    result, out, log = run_compute({"org.a": frame}, [step(noisy, dataset="org.a")], [noisy])
    assert result["ok"] and result["rows"] == 2
    assert wire.frame_from_bytes(out["frames/joined.arrow"]).equals(frame)
    assert "hello from the plugin" in log and "raw bytes on fd 1" in log


def test_a_tampered_bundle_is_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"_pid": ["p1"], "v": [1]})
    good = make_plugin(tmp_path, "good", "@hookimpl\ndef preprocess(df, params):\n    return df\n")
    evil = make_plugin(tmp_path, "evil", "@hookimpl\ndef preprocess(df, params):\n    return df.iloc[:0]\n")
    flipped = bytearray(good[1])
    flipped[good[1].index(b"return df")] ^= 0x20
    for data in (evil[1], bytes(flipped)):
        result, out, _ = run_compute({"org.a": frame}, [step(good)], [], tamper={f"plugins/{good[0]}.tar": data})
        assert not result["ok"] and "sha256 does not match" in result["error"] and out == {}


def test_a_plugin_that_drops_pid_is_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"_pid": ["p1", "p2"], "v": [1, 2]})
    plugin = make_plugin(
        tmp_path,
        "nopid",
        "@hookimpl\ndef features(df, params):\n    return df.drop(columns=['_pid'])\n",
        kind="features",
    )
    result, out, _ = run_compute({"org.a": frame}, [step(plugin)], [plugin])
    assert not result["ok"] and out == {}
    assert result["error"] == "step 1 (nopid) dropped the _pid column; plugins must keep it"


@pytest.mark.parametrize(
    "body, message",
    [
        ("return df.assign(_pid=df['_pid'] + 'x')", "changed or invented _pid values"),
        ("return df.assign(_secret=1)", "'_secret'; names starting with '_' are reserved"),
        ("return df.rename(columns={'v': 3})", "column name that is not a string"),
        ("return df.to_dict()", "returned dict, not a DataFrame"),
        ("return None", "implements no preprocess hook"),
    ],
)
def test_broken_results_are_refused(tmp_path: Path, body: str, message: str) -> None:
    """The same checks, in process (`compute.run` is what the subprocess runs)."""
    frame = pd.DataFrame({"_pid": ["p1", "p2"], "v": [1, 2]})
    plugin = make_plugin(tmp_path, "broken", f"@hookimpl\ndef preprocess(df, params):\n    {body}\n")
    meta = {
        "inputs": [{"dataset": "org.a", "file": "in"}],
        "steps": [step(plugin, dataset="org.a")],
        "max_output_bytes": 1 << 20,
    }
    files = {"in": wire.frame_to_bytes(frame), f"plugins/{plugin[0]}.tar": plugin[1]}
    with pytest.raises(compute.ComputeError, match=message):
        compute.run(meta, files, str(tmp_path))


@pytest.mark.slow  # one subprocess per bad request
def test_request_and_params_errors_are_answered(tmp_path: Path) -> None:
    frame = pd.DataFrame({"_pid": ["p1"], "v": [1]})
    result, _, _ = run_compute({}, [], [], raw=b"not a tar stream" * 64)
    assert not result["ok"] and result["error"].startswith("invalid request")
    agg = built_in("group-aggregate")
    result, _, _ = run_compute({"org.a": frame}, [step(agg)], [agg])
    assert not result["ok"]
    assert "step 1 (group-aggregate): group-aggregate needs the param 'name'" in result["error"]
    result, _, _ = run_compute({"org.a": frame}, [step(agg, {"name": "t"}, dataset="org.a")], [agg])
    assert not result["ok"] and "only preprocess and features steps run on one input" in result["error"]
    typo = make_plugin(tmp_path, "typo", "@hookimpl\ndef preproces(df, params):\n    return df\n")
    result, _, _ = run_compute({"org.a": frame}, [step(typo)], [typo])
    assert not result["ok"] and "loading plugin typo: PluginValidationError" in result["error"]
    assert "unknown hook 'preproces'" in result["error"]
    result, _, _ = run_compute({"org.a": frame}, [], [], max_output_bytes=10)
    assert not result["ok"] and "over the limit of 10" in result["error"]


@pytest.mark.parametrize(
    "body, message",
    [
        ("return df.assign(_pid=df['_pid'].astype('float64'))", "changed or invented _pid values"),
        ("return df.assign(_pid=df['_pid'].astype(object))", "changed or invented _pid values"),
        ("return df.assign(_pid=df['_pid'] == 1)", "changed or invented _pid values"),
        ("return df.assign(_pid=df['_pid'] + 100)", "changed or invented _pid values"),
        ("return df.iloc[::2]", None),
        ("return df.assign(_pid=df['_pid'].iloc[::-1].to_numpy())", None),
    ],
)
def test_integer_codes_keep_their_type(tmp_path: Path, body: str, message: str | None) -> None:
    """The runner sends `_pid` as int64 codes: a step may drop or reorder rows, not retype or invent codes."""
    frame = pd.DataFrame({"_pid": np.array([7, 1, 3, 1], dtype=np.int64), "v": [1, 2, 3, 4]})
    plugin = make_plugin(tmp_path, "codes", f"@hookimpl\ndef preprocess(df, params):\n    {body}\n")
    meta = {
        "inputs": [{"dataset": "org.a", "file": "in"}],
        "steps": [step(plugin, dataset="org.a")],
        "max_output_bytes": 1 << 20,
    }
    files = {"in": wire.frame_to_bytes(frame), f"plugins/{plugin[0]}.tar": plugin[1]}
    if message is None:
        response, out = compute.run(meta, files, str(tmp_path))
        assert response["ok"] and wire.frame_from_bytes(out["frames/joined.arrow"])["_pid"].dtype == np.int64
    else:
        with pytest.raises(compute.ComputeError, match=message):
            compute.run(meta, files, str(tmp_path))


def test_join_on_integer_codes_and_no_mixing_with_text() -> None:
    a = pd.DataFrame({"_pid": np.array([11, 22, 33], dtype=np.int64), "region": ["n", "s", "e"], "x": [1, 2, 3]})
    b = pd.DataFrame({"_pid": np.array([11, 11, 22, 99], dtype=np.int64), "y": [10, 11, 20, 90]})
    result, out, log = run_compute({"org.a": a, "org.b": b}, [], [])
    assert result["ok"] and result["rows"] == 3
    joined = wire.frame_from_bytes(out["frames/joined.arrow"])
    assert joined["_pid"].dtype == np.int64 and joined["_pid"].tolist() == [11, 11, 22]
    assert joined["y"].tolist() == [10, 11, 20]
    assert "compute: wait" in log and ", read " in log and "join" in log  # stage timings, no values
    text = b.assign(_pid=["11", "11", "22", "99"])
    result, _, _ = run_compute({"org.a": a, "org.b": text}, [], [])
    assert not result["ok"] and result["error"] == "the inputs' _pid columns mix integer codes and text"
