"""drop-identifiers, called through its hooks."""

from __future__ import annotations

import pandas as pd
import pytest


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "_pid": ["a", "b"],
            "Email": ["x@y", "z@w"],
            "full_name": ["A", "B"],
            "home_phone": ["1", "2"],
            "age": [30, 40],
            "region": ["n", "s"],
            "zip": ["1", "2"],
        }
    )


def test_drops_identifier_looking_columns(plugin):
    out = plugin.call(frame())
    assert list(out.columns) == ["_pid", "age", "region"]


def test_drops_named_columns_and_keeps_allowed_identifiers(plugin):
    out = plugin.call(frame(), columns=["region"], keep=["zip"])
    assert list(out.columns) == ["_pid", "age", "zip"]


def test_only_named_columns_when_identifier_like_is_off(plugin):
    out = plugin.call(frame(), columns=["age"], identifier_like=False)
    assert "Email" in out.columns and "age" not in out.columns


def test_missing_and_reserved_columns_are_errors(plugin):
    with pytest.raises(ValueError, match="no column"):
        plugin.call(frame(), columns=["nope"])
    assert "age" in plugin.call(frame(), columns=["nope"], missing_ok=True).columns
    with pytest.raises(ValueError, match="reserved"):
        plugin.call(frame(), columns=["_pid"])


def test_hook_through_the_plugin_manager(plugin):
    out = plugin.hook.preprocess(df=frame(), params=plugin.params(identifier_like=False, columns=["zip"]))
    assert "zip" not in out.columns and "_pid" in out.columns
