"""group-aggregate, called through its hooks."""

from __future__ import annotations

import pytest

COLUMNS = ["_pid", "spend", "visits", "region", "segment"]


def test_spend_by_region(plugin):
    spec = plugin.call(
        COLUMNS,
        name="spend_by_region",
        group_by=["region"],
        metrics=[{"agg": "count"}, {"agg": "mean", "column": "spend"}, {"agg": "sum", "column": "spend"}],
    )
    assert spec == {
        "name": "spend_by_region",
        "group_by": ["region"],
        "metrics": [{"agg": "count"}, {"agg": "mean", "column": "spend"}, {"agg": "sum", "column": "spend"}],
    }


def test_default_is_an_overall_count(plugin):
    assert plugin.call(COLUMNS, name="all") == {"name": "all", "group_by": [], "metrics": [{"agg": "count"}]}


@pytest.mark.parametrize(
    "params, message",
    [
        ({"name": "Bad Name"}, "name must"),
        ({"name": "t", "group_by": ["nope"]}, "not in the frame"),
        ({"name": "t", "group_by": ["_pid"]}, "reserved"),
        ({"name": "t", "metrics": [{"agg": "max", "column": "spend"}]}, "a metric is"),
        ({"name": "t", "metrics": [{"agg": "count", "column": "spend"}]}, "count takes no column"),
        ({"name": "t", "group_by": ["region"], "metrics": [{"agg": "sum", "column": "region"}]}, "both grouped"),
        ({"name": "t", "metrics": []}, "must not be empty"),
    ],
)
def test_refuses_bad_specs(plugin, params, message):
    with pytest.raises(ValueError, match=message):
        plugin.call(COLUMNS, **params)
