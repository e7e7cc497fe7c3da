"""Red team: sample-and-aggregate with a hostile statistic, through the real API, runner and Docker sandboxes.

The analyst's own approved plugin targets one person (the row with `target = 1`): it returns that
person's secret, crashes only when the person is in its block, or sleeps past the block's time only
then. Each job's analyst-visible status and release have the same form as a harmless control's, and
the released value is the noisy aggregate the release documents (scale (hi - lo) / (m epsilon)). The
output distribution itself is audited in tests/test_sample_aggregate.py (the runs here are few and
small: 4 blocks, 200 people).
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cleanroom.prepare.ingest import new_join_secret

pytestmark = pytest.mark.docker

POLICY = """\
[outputs]
allowed = ["aggregate"]

[privacy]
k = 10
epsilon = 10.0

[release]
recipients = ["acme-analytics"]
review = false

[columns.secret]
bounds = [0, 100]
[columns.target]
bounds = [0, 1]
"""

PLUGIN = textwrap.dedent('''
    """A statistic that tries to leak one person: by value, by crashing, or by taking too long."""
    import time

    from cleanroom.hookspecs import hookimpl


    @hookimpl
    def block_statistic(df, params):
        here = bool((df["target"] == 1).any())
        mode = params["mode"]
        if mode == "leak" and here:
            return [float(df.loc[df["target"] == 1, "secret"].iloc[0])]
        if mode == "crash" and here:
            raise RuntimeError("the target is in this block")
        if mode == "sleep" and here:
            time.sleep(600)
        return [0.0]
''')

MANIFEST = """\
name = "targeted-statistic"
version = "1.0.0"
kind = "statistic"
entry = "plugin.py"
description = "Returns 0 for every block, except what `mode` does when the target is present."

[params.mode]
type = "string"
required = true
description = "harmless, leak, crash or sleep"
"""

M, EPSILON, HI = 4, 1.0, 100.0


def job(plugin_id: str, mode: str) -> str:
    return f"""\
name = "sa-{mode}"
recipient = "acme-analytics"

[[inputs]]
dataset = "clinic.people"

[[steps]]
plugin = "{plugin_id}"
params = {{ mode = "{mode}" }}

[outputs]
epsilon = {EPSILON}

[outputs.sample_and_aggregate]
blocks = {M}
block_seconds = 10
outputs = [{{ name = "secret_stat", lo = 0, hi = {HI}, default = {HI} }}]
"""


@pytest.fixture
def world(room, runner, tmp_path):
    owner, analyst = room.org("clinic", "owner"), room.org("acme-analytics", "analyst")
    rng = np.random.default_rng(2)
    n = 200
    people = pd.DataFrame(
        {
            "person": [f"P{i:05d}" for i in range(n)],
            "secret": rng.uniform(0, 100, n).round(2),
            "target": [1] + [0] * (n - 1),
        }
    )
    people.loc[0, "secret"] = 100.0
    path = tmp_path / "people.csv"
    people.to_csv(path, index=False)
    owner.upload_dataset(path, name="clinic.people", policy=POLICY, id_column="person", join_secret=new_join_secret())
    folder = tmp_path / "targeted-statistic"
    folder.mkdir()
    (folder / "plugin.py").write_text(PLUGIN)
    (folder / "cleanroom-plugin.toml").write_text(MANIFEST)
    plugin_id = analyst.submit_plugin(folder)["id"]
    owner.decide_plugin(plugin_id, "clinic.people")  # approved: assume approved code is hostile
    return room, owner, analyst, plugin_id


def run(room, analyst, plugin_id: str, mode: str, out: Path) -> tuple[dict, dict, dict]:
    job_id = analyst.submit_job(job(plugin_id, mode))["id"]
    admin_view = room.end_time_budget(job_id, timeout=400)
    view = analyst.get_job(job_id)
    result = analyst.get_result(job_id, out / mode)
    document = json.loads((out / mode / "sample_and_aggregate.json").read_text())
    return admin_view, view, {"result": result, "document": document}


def form(value):
    """The shape of a JSON value: keys and types, not the numbers."""
    if isinstance(value, dict):
        return {k: form(v) for k, v in value.items()}
    if isinstance(value, list):
        return [form(v) for v in value]
    return type(value).__name__


def test_hostile_statistics_release_the_same_form_as_a_harmless_one_with_documented_noise(world, tmp_path):
    room, owner, analyst, plugin_id = world
    cost = analyst.job_cost(job(plugin_id, "harmless"))
    part = cost["plan"]["parts"]["sample_and_aggregate"]
    scale = HI / (M * EPSILON)
    assert cost["admitted"] and part["outputs"]["secret_stat"]["noise_scale"] == pytest.approx(scale)

    runs = {mode: run(room, analyst, plugin_id, mode, tmp_path) for mode in ("harmless", "leak", "crash", "sleep")}
    control_admin, control_view, control = runs["harmless"]
    for mode, (admin_view, view, got) in runs.items():
        assert admin_view["status"] == "succeeded", (mode, admin_view.get("reason"))  # a failed block is no failure
        assert view["status"] == control_view["status"] and set(view) == set(control_view), mode
        doc = got["document"]
        assert form(doc) == form(control["document"]), mode  # same structure, names, nothing per block
        assert set(got["result"]) == set(control["result"])
        (entry,) = doc["outputs"]
        assert (doc["blocks"], doc["epsilon"], entry["name"]) == (M, EPSILON, "secret_stat")
        assert entry["noise_scale"] == pytest.approx(scale, rel=1e-9)
        half = scale * math.log(20)
        assert entry["interval_95"] == pytest.approx([entry["value"] - half, entry["value"] + half])
        # the exact mean of the clipped blocks: 0 everywhere but the target's block (100 by leak or by default)
        exact = 0.0 if mode == "harmless" else HI / M
        assert abs(entry["value"] - exact) <= scale * math.log(1e6), mode  # a 1e-6 Laplace tail
    files = sorted(p.name for p in (tmp_path / "leak").iterdir())
    assert "sample_and_aggregate.json" in files and not any("block" in f for f in files)
    budget = owner.dataset_budget("clinic.people")
    assert budget["spent_epsilon"] == pytest.approx(4 * EPSILON + 1e-12)  # charged at submission, failures too
