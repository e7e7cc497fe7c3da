"""What a dataset publishes: declared facts only (names, types, declared bounds and domains); mock rows
drawn from them; the owner's own summaries stay on the owner's machine as suggestions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cleanroom.policy import parse_policy
from cleanroom.prepare.mock import StatsCollector, suggest_policy
from cleanroom.published import Column, Schema, declared_stats, make_mock, publish, published_schema

POLICY = parse_policy(
    "[columns.spend]\nbounds = [0, 500]\n[columns.region]\ndomain = ['n', 's']\n[columns.age]\nbounds = [18.5, 90.5]\n"
)
SCHEMA = Schema(
    [
        Column("_pid", "string", False, stats={}),
        Column("spend", "number"),
        Column("age", "integer"),
        Column("region", "string"),
        Column("note", "string"),
        Column("ok", "boolean"),
        Column("day", "date"),
    ]
)


def test_published_stats_are_the_policy_declarations_and_nothing_else():
    published = {c.name: c.stats for c in published_schema(SCHEMA, POLICY).columns}
    assert published == {
        "_pid": {},
        "spend": {"declared": True, "min": 0.0, "max": 500.0},
        "age": {"declared": True, "min": 19, "max": 90},  # integers inside the bounds
        "region": {"declared": True, "categories": {"n": 1, "s": 1}},
        "note": {"declared": True},
        "ok": {"declared": True},
        "day": {"declared": True},
    }


def test_summaries_computed_from_rows_never_reach_the_published_schema():
    rows = Schema([Column("spend", "number"), Column("region", "string")])
    import pyarrow as pa

    collector = StatsCollector(rows.columns)
    collector.update(
        pa.record_batch(
            [pa.array(np.linspace(0, 4321.5, 100)), pa.array(["n"] * 60 + ["x"] * 40)], names=["spend", "region"]
        )
    )
    computed = Schema([collector.column(c) for c in rows.columns])
    assert "mean" in computed.column("spend").stats  # the owner's view (control)
    published = published_schema(computed, POLICY)
    assert published.column("spend").stats == {"declared": True, "min": 0.0, "max": 500.0}
    assert "'x'" not in str(published.to_dict()) and "4321" not in str(published.to_dict())
    suggestion = suggest_policy(computed)
    assert "[columns.spend]\nbounds = [" in suggestion and 'domain = ["n", "x"]' in suggestion
    assert parse_policy(suggestion).column_rule("spend").bounds is not None  # a valid policy snippet


def test_mock_rows_come_from_the_declarations():
    mock = make_mock(published_schema(SCHEMA, POLICY), n=500, seed=3)
    assert mock["spend"].dropna().between(0, 500).all() and mock["spend"].dropna().std() > 100  # uniform
    assert mock["age"].dropna().between(19, 90).all()
    assert set(mock["region"].dropna()) == {"n", "s"}
    assert not set(mock["note"].dropna()) & {"n", "s"}  # undeclared text: random tokens only


def test_the_api_side_publish_replaces_whatever_a_client_sent():
    sent = {
        "columns": [
            {"name": "_pid", "type": "string", "nullable": False, "stats": {}},
            {"name": "spend", "type": "number", "stats": {"mean": 1234.5, "min": 3.2, "max": 4321.0}},
            {"name": "secret", "type": "string", "stats": {}},
        ]
    }
    schema, mock = publish(sent, POLICY.to_dict(), 20)
    stats = {c["name"]: c.get("stats") for c in schema["columns"]}
    assert stats["spend"] == {"declared": True, "min": 0.0, "max": 500.0}
    assert stats["secret"] == {}  # an override's "publish nothing" stays nothing
    assert len(mock) == 20 and all(0 <= row["spend"] <= 500 for row in mock if row["spend"] is not None)
    frame = pd.DataFrame(mock)
    assert 1234.5 not in set(frame["spend"]) and 4321.0 not in set(frame["spend"])


def test_declared_stats_ignore_bounds_on_text_and_domains_on_numbers():
    rule = parse_policy("[columns.x]\nbounds = [0, 1]\ndomain = ['a']\n").column_rule("x")
    assert declared_stats(Column("x", "string"), rule) == {"declared": True, "categories": {"a": 1}}
    assert declared_stats(Column("x", "number"), rule) == {"declared": True, "min": 0.0, "max": 1.0}
