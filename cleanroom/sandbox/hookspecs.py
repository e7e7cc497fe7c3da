"""The analysis-plugin contract: the hooks a plugin bundle may implement (see docs/plugins.md).

Imported inside the sandbox image, so it imports nothing but pluggy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "HOOK_BY_KIND",
    "analysis_spec",
    "block_statistic",
    "features",
    "hookimpl",
    "hookspec",
    "model_spec",
    "preprocess",
]

hookspec = pluggy.HookspecMarker("cleanroom")
hookimpl = pluggy.HookimplMarker("cleanroom")

# The hook that the compute phase calls for each plugin kind of the manifest. Every hook is
# firstresult: the first non-None result wins, and None means "not handled" (an error in a job).
HOOK_BY_KIND = {
    "preprocess": "preprocess",
    "features": "features",
    "model": "model_spec",
    "analysis": "analysis_spec",
    "statistic": "block_statistic",
}


@hookspec(firstresult=True)
def preprocess(df: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame | None:
    """Clean one input (or the joined frame) and return a DataFrame that keeps `_pid`."""


@hookspec(firstresult=True)
def features(df: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame | None:
    """Derive feature columns and return a DataFrame that keeps `_pid`."""


@hookspec(firstresult=True)
def model_spec(columns: list[str], params: dict[str, Any]) -> dict[str, Any] | None:
    """Return a model spec (estimator, params, target, features, task) over these columns."""


@hookspec(firstresult=True)
def analysis_spec(columns: list[str], params: dict[str, Any]) -> dict[str, Any] | None:
    """Return an aggregate spec (name, group_by, metrics) over these columns."""


@hookspec(firstresult=True)
def block_statistic(df: pd.DataFrame, params: dict[str, Any]) -> list[float] | None:
    """Return the statistic of one block of units: a list of numbers, one per declared output."""
