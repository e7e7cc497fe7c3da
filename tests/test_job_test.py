"""`cleanroom job test`: the motivating job on the inputs' mock data in the real sandbox image, through the
CLI as users run it; it prints what would be released, reports a typo with its reason, and stores and
charges nothing in the room."""

from __future__ import annotations

import json

import pytest

from cleanroom import scenario
from cleanroom.profile import Profile
from tests.scenario_setup import approve_all, setup_scenario
from tests.test_cli import run
from tests.test_dp_ledger import register_room_key

pytestmark = [pytest.mark.docker]


def spec_names(spec: str, ids: dict[str, str]) -> set[str]:
    return {name for name, pid in ids.items() if pid in spec}


def _room_state(room, retailer, analyst):
    return (
        analyst.list_jobs(),
        retailer.list_jobs(),
        retailer.dataset_budget("retail.purchases"),
        len(list(room.admin.audit_events())),
    )


def test_job_test_shows_the_release_and_failures_and_changes_nothing(room, tmp_path):
    from tests.dockerutil import require_docker, require_image

    image = require_image(require_docker(), "CLEANROOM_SANDBOX_IMAGE")
    register_room_key(room)  # no runner: `job test` needs none
    retailer, bank, analyst, _, ids = setup_scenario(room.org, tmp_path, 300)
    Profile(name="acme", url=room.url, token=analyst.token).save()
    spec = scenario.job_spec(ids)
    good = tmp_path / "spend-model.toml"
    good.write_text(spec)
    analyst.whoami()
    before = _room_state(room, retailer, analyst)

    # the motivating spec: what would be released, in words
    shown = run("job", "test", str(good), "--image", image, profile="acme").stdout
    assert "would release" in shown and "table spend_by_region" in shown, shown
    assert "model card" in shown and "coefficients" in shown and "metrics" in shown and "ridge" in shown
    # and as JSON: the table, the model card with its coefficients, the metrics, every check passed
    result = json.loads(run("--json", "job", "test", str(good), "--image", image, profile="acme").stdout)
    assert result["ok"] is True and result["failed_at"] is None
    assert result["tables"]["spend_by_region"].splitlines()[0].startswith("region")
    assert "target: `spend`" in result["model_card"] and set(result["metrics"]["metrics"]) >= {"r2", "rmse"}
    assert set(result["coefficients"]["features"]) == set(result["metrics"]["features"])
    assert result["checks"] and all(c["passed"] for c in result["checks"])
    # no owner has approved anything yet: the job runs here all the same, and says what submit will ask for
    assert {(m["plugin"], m["dataset"]) for m in result["approvals_missing"]} == {
        (name, ds)
        for name in scenario.PLUGINS
        if name in spec_names(spec, ids)
        for ds in ("retail.purchases", "bank.customers")
    }
    assert "still needs retailer's approval for retail.purchases" in shown

    # a typo in a feature name: refused as `job submit` would, with the check and its reason
    typo = tmp_path / "typo.toml"
    typo.write_text(spec.replace('target = "spend",', 'target = "spend", features = ["visitz"],'))
    failed = run("--json", "job", "test", str(typo), "--image", image, profile="acme", ok=False)
    assert failed.returncode == 1
    out = json.loads(failed.stdout)
    assert out["failed_at"] == "submit" and "'visitz'" in out["reason"] and "names" in out["reason"]
    # a typo in a step's column: the plugin's own message, from the mock run (no data in it)
    step = tmp_path / "step.toml"
    step.write_text(spec.replace('columns = ["category", "segment"]', 'columns = ["category", "segmnet"]'))
    failed = run("job", "test", str(step), "--image", image, profile="acme", ok=False)
    assert failed.returncode == 1
    assert "would fail at compute" in failed.stdout and "segmnet" in failed.stdout, failed.stdout

    # nothing was stored or charged: no job, the same budget, no audit event
    assert _room_state(room, retailer, analyst) == before
    # control: once both owners approved, nothing is missing
    approve_all(retailer, bank, ids)
    result = json.loads(run("--json", "job", "test", str(good), "--image", image, profile="acme").stdout)
    assert result["ok"] is True and result["approvals_missing"] == []
