"""Mock samples: same columns and types, plausible values, and nothing copied from real rows."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cleanroom.prepare.mock import StatsCollector
from cleanroom.prepare.schema import infer_schema
from cleanroom.published import Column, Schema, make_mock, to_records

RARE = "Quillon-Rare-4471"


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Schema]:
    rng = np.random.default_rng(7)
    n = 3000
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 91, n),
            "spend": rng.lognormal(4, 0.5, n).round(4),
            "region": rng.choice(["north", "south", "east"], n),
            "member": rng.random(n) < 0.25,
            "day": (pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 365, n), "D")).strftime("%Y-%m-%d"),
            "at": (pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 10**6, n), "s")).strftime(
                "%Y-%m-%dT%H:%M:%S"
            ),
            "note": [f"free text {i}" for i in range(n)],
        }
    )
    frame.loc[5, "note"] = RARE
    frame.loc[rng.random(n) < 0.2, "spend"] = np.nan
    path = tmp_path_factory.mktemp("mock") / "real.csv"
    frame.to_csv(path, index=False)
    return frame, infer_schema(path)


def test_same_columns_and_types(real: tuple[pd.DataFrame, Schema]) -> None:
    _, schema = real
    mock = make_mock(schema, n=250, seed=3)
    assert list(mock.columns) == schema.names and len(mock) == 250
    expected = pa.Table.from_batches([], schema=schema.arrow_schema()).to_pandas().dtypes
    assert mock.dtypes.to_dict() == expected.to_dict()


def test_values_are_plausible(real: tuple[pd.DataFrame, Schema]) -> None:
    frame, schema = real
    mock = make_mock(schema, n=2000, seed=1)
    published = schema.column("age").stats
    assert mock["age"].between(published["min"], published["max"]).all()
    assert mock["age"].mean() == pytest.approx(frame["age"].mean(), rel=0.1)
    spend = mock["spend"].dropna()
    spend_stats = schema.column("spend").stats
    assert spend.between(spend_stats["min"], spend_stats["max"]).all()
    assert mock["spend"].isna().mean() == pytest.approx(0.2, abs=0.05)
    assert set(mock["region"]) == {"north", "south", "east"}
    assert mock["member"].mean() == pytest.approx(0.25, abs=0.05)
    days = pd.to_datetime(mock["day"])
    assert days.min() >= pd.Timestamp("2021-01-01") and days.max() <= pd.Timestamp("2021-12-31")
    assert mock["at"].min() >= pd.Timestamp(schema.column("at").stats["min"])


def test_nothing_is_copied_from_real_rows(real: tuple[pd.DataFrame, Schema]) -> None:
    frame, schema = real
    mock = make_mock(schema, n=1000, seed=0)
    text = json.dumps(to_records(mock, schema)) + json.dumps(schema.to_dict())
    assert RARE not in text and "free text" not in text
    assert not set(mock["spend"].dropna()) & set(frame["spend"].dropna())
    assert not set(mock["at"].astype(str)) & set(pd.to_datetime(frame["at"]).astype(str))


def test_deterministic_by_seed(real: tuple[pd.DataFrame, Schema]) -> None:
    _, schema = real
    pd.testing.assert_frame_equal(make_mock(schema, 50, seed=9), make_mock(schema, 50, seed=9))
    assert not make_mock(schema, 50, seed=9).equals(make_mock(schema, 50, seed=10))


def test_pid_and_schemas_without_summaries() -> None:
    schema = {
        "columns": [
            {"name": "_pid", "type": "string", "nullable": False},
            {"name": "n", "type": "integer"},
            {"name": "x", "type": "number"},
            {"name": "t", "type": "datetime", "timezone": "UTC"},
            {"name": "d", "type": "date"},
            {"name": "s", "type": "string"},
            {"name": "b", "type": "boolean"},
        ]
    }
    mock = make_mock(schema, n=20)
    assert mock["_pid"].str.fullmatch("[0-9a-f]{64}").all() and mock["_pid"].is_unique
    assert str(mock["t"].dt.tz) == "UTC" and mock.notna().all().all()


def test_records_are_json(real: tuple[pd.DataFrame, Schema]) -> None:
    _, schema = real
    records = to_records(make_mock(schema, n=30), schema)
    json.dumps(records)
    assert all(isinstance(r["age"], int) for r in records)
    assert all(r["spend"] is None or isinstance(r["spend"], float) for r in records)
    dt.date.fromisoformat(records[0]["day"])
    dt.datetime.fromisoformat(records[0]["at"])


def test_integer_gaps_come_back_as_integers() -> None:
    schema = Schema([Column("n", "integer", stats={"min": 1, "max": 3, "null_fraction": 0.5})])
    records = to_records(make_mock(schema, n=40), schema)
    assert {type(r["n"]) for r in records} == {int, type(None)}


def test_stats_merge_across_batches_like_one_pass() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(5, 2, 10_000)
    col = Column("x", "number")
    whole, parts = StatsCollector([col]), StatsCollector([col])
    whole.update(pa.record_batch({"x": values}))
    for chunk in np.array_split(values, 7):
        parts.update(pa.record_batch({"x": chunk}))
    for key in ("min", "max", "mean", "std"):
        assert parts.stats("x")[key] == pytest.approx(whole.stats("x")[key], rel=1e-5)
    assert whole.stats("x")["std"] == pytest.approx(values.std(), rel=1e-5)


def test_summaries_of_a_column_with_no_values() -> None:
    stats = StatsCollector([Column("x", "number"), Column("s", "string")])
    stats.update(
        pa.record_batch({"x": pa.array([None, float("nan")], pa.float64()), "s": pa.array([None, None], pa.string())})
    )
    assert stats.stats("x") == {"null_fraction": 0.5}
    assert stats.stats("s") == {"null_fraction": 1.0}
    assert len(make_mock(Schema([stats.column(Column("x", "number"))]), n=5)) == 5


def test_mock_of_an_override_file(tmp_path: Path) -> None:
    stats = {"categories": {"a": 30, "b": 20}, "other_fraction": 0.0}
    schema = Schema([Column("kind", "string", stats=stats)])
    assert set(make_mock(schema, n=100)["kind"]) == {"a", "b"}


class ReferenceCategories:
    """The counting rule, one value at a time in a dict (what _Categories does with Arrow arrays)."""

    def __init__(self, cap: int) -> None:
        self.counts: dict[str, int] = {}
        self.cap = cap

    def update(self, values: list[str]) -> None:
        found: dict[str, int] = {}
        for v in values:
            found[v] = found.get(v, 0) + 1
        for value, count in found.items():
            self.counts[value] = self.counts.get(value, 0) + count
        if len(self.counts) > self.cap:
            import heapq

            self.counts = dict(heapq.nlargest(self.cap // 2, self.counts.items(), key=lambda p: p[1]))

    def frequent(self) -> dict[str, int]:
        import heapq

        top = heapq.nlargest(50, self.counts.items(), key=lambda p: (p[1], p[0]))
        return {v: c for v, c in sorted(top, key=lambda p: (-p[1], p[0])) if c >= 20}


def test_category_counts_match_the_one_value_at_a_time_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from cleanroom.prepare import mock

    monkeypatch.setattr(mock, "_COUNTER_CAP", 300)  # prune often
    rng = np.random.default_rng(5)
    got, want = mock._Categories(), ReferenceCategories(300)
    for _ in range(40):
        values = [f"v{int(i)}" for i in rng.zipf(1.3, 500) % 5000] + [f"u{int(i)}" for i in rng.integers(0, 10**6, 100)]
        got.update(pa.array(values))
        want.update(values)
        assert got.counts == want.counts and list(got.counts) == list(want.counts)
    assert got.frequent() == want.frequent() and len(got.frequent()) > 5


def test_published_ranges_never_hold_a_real_extreme() -> None:
    rng = np.random.default_rng(4)
    values = np.append(rng.normal(50_000, 8_000, 5_000).round(2), 9_876_543.21)  # one person's income
    stats = StatsCollector([Column("income", "number"), Column("n", "integer"), Column("d", "date")])
    days = pd.to_datetime("2021-03-07") + pd.to_timedelta(rng.integers(0, 200, len(values)), "D")
    stats.update(
        pa.record_batch(
            {"income": values, "n": (values // 1000).astype("int64"), "d": pa.array(days.date, pa.date32())}
        )
    )
    income = stats.stats("income")
    # the outlier is cut off at mean + 3 std (both published anyway), far below its value
    assert income["max"] < values.max() / 10
    assert income["max"] >= income["mean"] + 3 * income["std"] * 0.99
    assert income["min"] not in set(values) and income["max"] not in set(values)
    assert income["min"] <= np.sort(values)[10] and income["max"] >= np.sort(values)[-20]  # still plausible
    assert float(f"{income['max']:.2g}") == income["max"]  # rounded outward to two significant digits
    assert isinstance(stats.stats("n")["min"], int)
    d = stats.stats("d")
    assert d["min"] == "2021-03-01" and d["max"].endswith(("-30", "-31", "-28", "-29"))
