"""The mock run's inputs (cleanroom.runner.mockrun) and the runner leaving never_output columns out
(cleanroom.runner.recode): the mock inputs must reach the compute phase with the types the real ones have."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from cleanroom.prepare.mock import StatsCollector
from cleanroom.published import Column, Schema, make_mock, to_records
from cleanroom.runner import mockrun, recode
from cleanroom.sandbox import wire
from cleanroom.sandbox.compute import phase as compute


def owner_table(n: int = 400, seed: int = 0) -> pa.Table:
    """A real input as the runner decrypts it: `_pid` text, the schema's Arrow types, gaps in `visits`."""
    rng = np.random.default_rng(seed)
    visits = pa.array(rng.poisson(10, n), pa.int64(), mask=rng.random(n) < 0.05)
    return pa.table(
        {
            "_pid": pa.array([f"{i:064x}" for i in range(n)], pa.string()),
            "region": pa.array(rng.choice(["north", "south"], n)),
            "visits": visits,
            "spend": pa.array(rng.gamma(3, 100, n)),
            "joined": pa.array(pd.to_datetime("2024-01-01") + pd.to_timedelta(rng.integers(0, 300, n), unit="D")).cast(
                pa.date32()
            ),
            "email": pa.array([f"p{i}@example.org" for i in range(n)]),
        }
    )


def dataset(table: pa.Table, name: str = "shop.sales") -> dict:
    """The dataset record the API keeps: the schema with its summaries and the mock rows."""
    types = {"region": "string", "visits": "integer", "spend": "number", "joined": "date", "email": "string"}
    columns = [Column(c, types[c]) for c in types]
    stats = StatsCollector(columns)
    for batch in table.select(list(types)).to_batches():
        stats.update(batch)
    schema = Schema([Column("_pid", "string", nullable=False, stats={})] + [stats.column(c) for c in columns])
    return {"name": name, "schema": schema.to_dict(), "mock": to_records(make_mock(schema, n=100), schema)}


def test_mock_inputs_reach_the_compute_phase_with_the_real_inputs_types() -> None:
    table = owner_table()
    real = recode.recode_inputs({"a": recode.write_table(table)}, drop=["email"])["a"]
    mocked = recode.write_table(mockrun.mock_table(dataset(table), drop=["email"]))
    real_df, mock_df = wire.frame_from_bytes(real), wire.frame_from_bytes(mocked)
    assert list(real_df.columns) == list(mock_df.columns) == ["_pid", "region", "visits", "spend", "joined"]
    assert dict(real_df.dtypes) == dict(mock_df.dtypes)  # visits has gaps in both, so float64 in both
    assert mock_df["_pid"].tolist() == list(range(len(mock_df)))


def test_mock_inputs_join_row_by_row() -> None:
    """Mock `_pid`s of two datasets are unrelated random strings; as row numbers, the join keeps the rows."""
    a, b = dataset(owner_table(seed=1), "a.one"), dataset(owner_table(seed=2), "b.two")
    b["schema"]["columns"] = [c for c in b["schema"]["columns"] if c["name"] in ("_pid", "spend")]
    frames = {ds["name"]: mockrun.mock_table(ds).to_pandas() for ds in (a, b)}
    joined = compute.join(frames)
    assert len(joined) == 100 and "spend@a.one" in joined.columns


def test_never_output_columns_are_left_out_of_every_input() -> None:
    table = owner_table()
    both = {"a": recode.write_table(table), "b": recode.write_table(table.select(["_pid", "email"]))}
    out = recode.recode_inputs(both, drop=["email"])
    assert wire.frame_from_bytes(out["a"]).columns.tolist() == ["_pid", "region", "visits", "spend", "joined"]
    assert wire.frame_from_bytes(out["b"]).columns.tolist() == ["_pid"]
    assert b"example.org" not in out["a"] + out["b"]
    # control: without `drop` the column is passed on
    kept = recode.recode_inputs({"a": recode.write_table(table)})["a"]
    assert "email" in wire.frame_from_bytes(kept).columns
    assert mockrun.dropped_columns([dataset(table)], ["email", "not_there"]) == {"shop.sales": ["email"]}


def test_the_mock_runs_outcome_is_what_the_release_reads() -> None:
    result = {
        "ok": True,
        "model_specs": [{"plugin_id": "p", "spec": {"estimator": "ridge"}}],
        "analysis_specs": [{"plugin_id": "q", "spec": {"name": "t"}}],
    }
    specs, frame = mockrun.outcome(result, {"frames/joined.arrow": b"x"}, {"model": True, "aggregates": True})
    assert specs == {"model_spec": {"estimator": "ridge"}, "analysis_specs": [{"name": "t"}]} and frame == b"x"
    try:
        mockrun.outcome({"ok": False, "error": "step 1 (x): KeyError"}, {}, {})
    except mockrun.MockRunFailed as exc:
        assert "mock data" in str(exc)
    else:
        raise AssertionError("a failed mock run must fail the job")


def test_declared_domains_are_published_categories_for_the_release() -> None:
    """A policy's `domain` joins the schema's published categories: released names may use them and
    group-by domains hold them (every declared category is reported, even one the data lacks)."""
    from cleanroom.policy import parse_policy
    from cleanroom.runner.context import JobContext

    ds = dataset(owner_table())
    ds["policy"] = parse_policy('[columns.region]\ndomain = ["north", "south", "east"]\n').to_dict()
    names = JobContext.from_dict({"datasets": [ds], "job": {"spec": {"steps": []}}}).released_names()
    assert names["schemas"]["shop.sales"]["region"] == ["east", "north", "south"]
    ds["policy"] = parse_policy("").to_dict()  # control: the summary's categories only
    names = JobContext.from_dict({"datasets": [ds], "job": {"spec": {"steps": []}}}).released_names()
    assert names["schemas"]["shop.sales"]["region"] == ["north", "south"]
