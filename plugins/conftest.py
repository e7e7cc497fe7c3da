"""Fixtures for the built-in plugins' tests: the `plugin` of the test's folder, loaded as the sandbox does.

`plugin.hook` is a pluggy PluginManager's hook relay with the bundle registered (packed, unpacked,
extracted and imported by `cleanroom.sandbox.compute.phase.load_plugin`); `plugin.call(df_or_columns,
**params)` fills in the manifest's defaults, calls the plugin kind's hook and applies the compute
phase's checks to the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cleanroom import bundle
from cleanroom.hookspecs import HOOK_BY_KIND
from cleanroom.sandbox.compute import phase as compute


class LoadedPlugin:
    def __init__(self, folder: Path, workdir: Path) -> None:
        self.archive = bundle.pack(folder)
        self.bundle = bundle.unpack(self.archive)
        self.manifest = self.bundle.manifest
        self.pm = compute.load_plugin(self.bundle, str(workdir))
        self.hook = self.pm.hook

    def params(self, **params: Any) -> dict[str, Any]:
        return bundle.validate_params(self.manifest, params)

    def call(self, data: pd.DataFrame | list[str], **params: Any) -> Any:
        hook = getattr(self.hook, HOOK_BY_KIND[self.manifest["kind"]])
        label = self.manifest["name"]
        if self.manifest["kind"] == "statistic":  # a block's answer, as the compute phase sends it
            return compute.block_vector(hook(df=data, params=self.params(**params)))
        if isinstance(data, pd.DataFrame):
            columns, pids = list(data.columns), data["_pid"].copy()
            return compute.check_frame(hook(df=data, params=self.params(**params)), columns, pids, label)
        return compute.check_spec(hook(columns=list(data), params=self.params(**params)), label)


@pytest.fixture
def plugin(request: pytest.FixtureRequest, tmp_path: Path) -> LoadedPlugin:
    return LoadedPlugin(Path(request.path).parent, tmp_path)
