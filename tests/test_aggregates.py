"""Aggregates: k distinct units, no trace of suppressed groups, forbidden columns, DP."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from cleanroom.sandbox.release import aggregates, dp
from cleanroom.sandbox.release.aggregates import AggregateError


def frame() -> pd.DataFrame:
    """north: 40 units x 2 rows; south: 12 units; tiny: 12 rows from only 3 units."""
    rows = []
    for i in range(40):
        rows += [{"_pid": f"n{i}", "region": "north", "spend": 10.0 + i, "email": f"n{i}@x"}] * 2
    for i in range(12):
        rows.append({"_pid": f"s{i}", "region": "south", "spend": 100.0, "email": f"s{i}@x"})
    for i in range(12):
        rows.append({"_pid": f"t{i % 3}", "region": "tiny", "spend": 5000.0 + i, "email": "t@x"})
    return pd.DataFrame(rows)


SPEC = {
    "name": "spend_by_region",
    "group_by": ["region"],
    "metrics": [{"agg": "count"}, {"agg": "sum", "column": "spend"}, {"agg": "mean", "column": "spend"}],
}


def parse(spec: dict, forbidden: set[str] | None = None) -> aggregates.AggregateSpec:
    return aggregates.parse_spec(spec, frame(), forbidden or set())


def test_groups_need_k_distinct_units_not_rows() -> None:
    table = aggregates.compute(frame(), parse(SPEC), k=10)
    # tiny has 12 rows but only 3 units: suppressed at k=10
    assert list(table["region"]) == ["north", "south"]
    north = table.set_index("region").loc["north"]
    assert north["count"] == 80 and north["sum_spend"] == pytest.approx(2 * sum(10.0 + i for i in range(40)))
    assert aggregates.compute(frame(), parse(SPEC), k=13)["region"].tolist() == ["north"]


def test_suppressed_groups_leave_no_trace() -> None:
    table = aggregates.compute(frame(), parse(SPEC), k=10)
    text = aggregates.to_csv(table).decode()
    assert "tiny" not in text and "5000" not in text and "suppress" not in text.lower()
    # no grand total: the released sums add up to the released groups only
    released_total = frame().query("region != 'tiny'")["spend"].sum()
    assert table["sum_spend"].sum() == pytest.approx(released_total)
    assert len(pd.read_csv(io.StringIO(text))) == 2


def test_all_groups_suppressed_gives_an_empty_table() -> None:
    table = aggregates.compute(frame(), parse(SPEC), k=1000)
    assert aggregates.to_csv(table).decode().strip() == "region,count,sum_spend,mean_spend"


def test_empty_group_by_is_one_group_when_large_enough() -> None:
    spec = {"name": "overall", "group_by": [], "metrics": [{"agg": "count"}]}
    assert aggregates.compute(frame(), parse(spec), k=10)["count"].tolist() == [104]
    assert aggregates.compute(frame(), parse(spec), k=100).empty


def test_rows_with_missing_values_are_dropped_per_spec() -> None:
    df = frame()
    df.loc[df["region"] == "south", "spend"] = np.nan
    spec = aggregates.parse_spec(SPEC, df, set())
    assert aggregates.compute(df, spec, k=10)["region"].tolist() == ["north"]


@pytest.mark.parametrize("column", ["email", "_pid"])
def test_forbidden_and_reserved_columns_cannot_be_grouped(column: str) -> None:
    spec = {**SPEC, "group_by": [column]}
    with pytest.raises(AggregateError, match="forbid|reserved"):
        parse(spec, forbidden={"email"})


def test_forbidden_columns_cannot_be_aggregated() -> None:
    spec = {**SPEC, "metrics": [{"agg": "sum", "column": "spend"}]}
    with pytest.raises(AggregateError, match="forbids"):
        parse(spec, forbidden={"spend"})


def test_join_only_is_refused_like_never_output() -> None:
    with pytest.raises(AggregateError, match="forbids"):
        parse({**SPEC, "group_by": ["region"]}, forbidden={"region"})


@pytest.mark.parametrize("agg", ["min", "max", "median", "first"])
def test_single_row_aggs_are_refused(agg: str) -> None:
    with pytest.raises(AggregateError, match="agg must be"):
        parse({**SPEC, "metrics": [{"agg": agg, "column": "spend"}]})


@pytest.mark.parametrize(
    "spec",
    [
        {**SPEC, "name": "../etc"},
        {**SPEC, "name": "A"},
        {**SPEC, "name": "x" * 65},
        {**SPEC, "extra": 1},
        {**SPEC, "group_by": "region"},
        {**SPEC, "group_by": ["nope"]},
        {**SPEC, "metrics": []},
        {**SPEC, "metrics": [{"agg": "sum", "column": "email"}]},
        {**SPEC, "metrics": [{"agg": "count", "column": "spend"}]},
        {**SPEC, "metrics": [{"agg": "count"}, {"agg": "count"}]},
        {**SPEC, "metrics": [{"agg": "sum", "column": "region"}]},
    ],
)
def test_malformed_specs_are_refused(spec: dict) -> None:
    with pytest.raises(AggregateError):
        parse(spec)


def test_nested_group_bys_are_refused_without_dp() -> None:
    df = frame()
    df["band"] = "a"
    fine = aggregates.parse_spec({**SPEC, "name": "fine", "group_by": ["region", "band"]}, df, set())
    coarse = aggregates.parse_spec({**SPEC, "name": "coarse", "group_by": ["region"]}, df, set())
    with pytest.raises(AggregateError, match="derived from a subset"):
        aggregates.check_nesting([fine, coarse])
    aggregates.check_nesting([coarse, coarse])


def test_dp_adds_noise_suppresses_and_spends_exactly() -> None:
    big = pd.DataFrame(
        {
            "_pid": [f"u{i}" for i in range(3000)],
            "region": ["north"] * 2000 + ["south"] * 995 + ["tiny"] * 5,
            "spend": np.linspace(0, 100, 3000),
        }
    )
    spec = aggregates.parse_spec(SPEC, big, set())
    budget = dp.Budget(epsilon=1.0, delta=1e-6)
    queries = aggregates.dp_query_count(spec)
    assert queries == 2  # one count + one summed column shared by sum and mean
    table = aggregates.compute_dp(big, spec, 10, {"spend": (0.0, 100.0)}, 1.0 / queries, 1e-6, budget)
    assert budget.epsilon_spent == pytest.approx(1.0, rel=1e-9)
    assert 0 < budget.delta_spent <= 1e-6
    assert table["region"].tolist() == ["north", "south"]
    exact = aggregates.compute(big, spec, 10)
    assert not np.allclose(table["sum_spend"], exact["sum_spend"])
    assert np.allclose(table["count"], exact["count"], atol=60)
    assert ((table["mean_spend"] >= 0) & (table["mean_spend"] <= 100)).all()


def test_dp_keeps_one_row_per_unit() -> None:
    df = pd.DataFrame({"_pid": ["a"] * 5000 + [f"u{i}" for i in range(400)], "region": "north", "spend": 1.0})
    spec = aggregates.parse_spec({**SPEC, "metrics": [{"agg": "count"}]}, df, set())
    table = aggregates.compute_dp(df, spec, 10, {}, 2.0, 1e-6, dp.Budget(2.0, 1e-6))
    assert abs(int(table["count"].iloc[0]) - 401) < 40  # units, not the 5400 rows


def test_dp_sums_need_bounds_and_refuse_std() -> None:
    spec = parse(SPEC)
    with pytest.raises(AggregateError, match="needs policy bounds"):
        aggregates.compute_dp(frame(), spec, 10, {}, 0.5, 1e-6, dp.Budget(1.0, 1e-6))
    std = parse({**SPEC, "metrics": [{"agg": "std", "column": "spend"}]})
    with pytest.raises(AggregateError, match="not available with DP"):
        aggregates.compute_dp(frame(), std, 10, {"spend": (0, 1)}, 0.5, 1e-6, dp.Budget(1.0, 1e-6))


def test_dp_small_groups_are_suppressed_by_the_noisy_threshold() -> None:
    spec = parse({**SPEC, "metrics": [{"agg": "count"}]})
    for _ in range(20):
        table = aggregates.compute_dp(frame(), spec, 10, {}, 1.0, 1e-6, dp.Budget(1.0, 1e-6))
        assert "tiny" not in table["region"].tolist()
