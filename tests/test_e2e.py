"""The motivating scenario through the real stack: HTTP API, runner, Docker sandboxes, CLI-side crypto."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cleanroom import scenario
from cleanroom.client import verify_receipt
from cleanroom.errors import Conflict, IntegrityError, NotFound, PermissionDenied, PolicyError
from tests.scenario_setup import approve_all
from tests.scenario_setup import setup_scenario as shared_setup

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.docker, pytest.mark.slow]


def setup_scenario(room, tmp_path, n=2000):
    return shared_setup(room.org, tmp_path, n)


def test_spend_model_end_to_end(room, runner, tmp_path):
    # DP is the default: 20 000 customers give the DP model and its noisy metrics room to be useful
    retailer, bank, analyst, files, ids = setup_scenario(room, tmp_path, n=20_000)
    spec = scenario.job_spec(ids)
    with pytest.raises(PolicyError, match="not approved"):
        analyst.submit_job(spec)  # a job cannot start until every owner approved
    approve_all(retailer, bank, ids)

    job = analyst.submit_job(spec)
    assert room.end_time_budget(job["id"])["status"] == "succeeded"  # (its time budget is cut short)
    final = analyst.wait_job(job["id"], timeout=300)
    # held for the retailer's review: until then its analyst sees nothing released, as for a failure
    assert final["status"] == "nothing_released" and final["error_class"] is None, final
    assert "reason" not in final and final["finished_at"] is None

    release = retailer.get_release(job["id"])
    assert release["pending_review"] == ["retail.purchases"]
    with pytest.raises(NotFound):
        analyst.get_result(job["id"], tmp_path / "early")
    retailer.approve_release(job["id"])
    assert analyst.get_job(job["id"])["status"] == "released"

    out = tmp_path / "out"
    analyst.get_result(job["id"], out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["differential_privacy"] and metrics["metrics"]["r2"] > 0.3, metrics
    assert metrics["bounds"]["spend"] == [0.0, 2500.0] and metrics["epsilon"] <= 0.5
    table = pd.read_csv(out / "aggregates" / "spend_by_region.csv")
    assert list(table["region"]) == [*sorted(scenario.REGIONS), "other"]  # every declared group, `other` last
    assert (table["count"].dropna() >= 10).all() and table["count"].notna().sum() >= 3

    receipt = json.loads((out / "receipt.json").read_text())
    assert verify_receipt(receipt)["job"] == job["id"]
    assert receipt["body"]["isolation"]["compute"]["network"] is True
    assert set(receipt["body"]["plugins"]) == set(ids.values()) - {ids["clip"]}  # the DP job needs no clip step
    tampered = json.loads(json.dumps(receipt))
    tampered["body"]["outputs"]["metrics.json"]["sha256"] = "0" * 64
    with pytest.raises(IntegrityError):
        verify_receipt(tampered)

    from cleanroom.modelio import predict

    count = predict(out / "model.skops", files["new_customers"], tmp_path / "pred.csv")
    preds = pd.read_csv(tmp_path / "pred.csv")
    assert count == len(preds) > 0 and preds["prediction"].between(0, 5000).mean() > 0.95

    # the API's disk holds no plaintext: a raw id and an email from the raw file appear nowhere
    raw = pd.read_csv(files["retail"]).iloc[0]
    canaries = [str(raw["customer_id"]).encode(), str(raw["email"]).encode()]
    for path in [*room.settings.data_dir.rglob("*"), *runner.settings.runner_home.rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert not any(c in data for c in canaries), path

    assert room.admin.audit_verify()["ok"]


def test_an_owner_rejects_a_release_and_the_recipient_never_gets_it(room, runner, tmp_path):
    retailer, bank, analyst, files, ids = setup_scenario(room, tmp_path, n=1000)
    approve_all(retailer, bank, ids)
    job = analyst.submit_job(scenario.job_spec(ids))
    assert room.end_time_budget(job["id"])["status"] == "succeeded"
    with pytest.raises(PermissionDenied):
        bank.reject_release(job["id"], "retail.purchases", reason="not my dataset")  # only its owner decides
    view = retailer.reject_release(job["id"], reason="the model card shows too much")
    assert view["rejected_by"] == ["retail.purchases"] and not view["downloadable"]
    assert view["rejection_reasons"] == {"retail.purchases": "the model card shows too much"}
    with pytest.raises(NotFound):  # to the analyst, a rejected release is as if the job had failed
        analyst.get_result(job["id"], tmp_path / "never")
    assert analyst.get_job(job["id"])["status"] == "nothing_released"
    with pytest.raises(Conflict, match="rejected this release already"):
        retailer.approve_release(job["id"], "retail.purchases")  # a rejection is final
    assert any(e["action"] == "release.rejected" for e in room.admin.audit_events())
    assert not (tmp_path / "never").exists() or not any((tmp_path / "never").iterdir())


def test_policy_change_voids_approvals_and_bad_ciphertext_fails(room, runner, tmp_path):
    retailer, bank, analyst, files, ids = setup_scenario(room, tmp_path, n=500)
    approve_all(retailer, bank, ids)
    retailer.update_policy("retail.purchases", scenario.RETAIL_POLICY.replace("k = 10", "k = 12"))
    with pytest.raises(PolicyError, match="not approved"):
        analyst.submit_job(scenario.job_spec(ids))


def test_dp_job_spends_budget_and_the_next_past_it_is_refused(room, runner, tmp_path):
    retailer, bank, analyst, files, ids = setup_scenario(room, tmp_path, n=3000)
    approve_all(retailer, bank, ids)
    with pytest.raises(PolicyError, match="at most epsilon 1, delta 1e-07 per job"):
        analyst.submit_job(scenario.job_spec(ids, epsilon=2.0))  # over the per-job cap
    spec = scenario.job_spec(ids)  # the per-job cap: epsilon 1, delta 1e-7
    job = analyst.submit_job(spec)
    final = room.end_time_budget(job["id"])
    assert final["status"] == "succeeded", final
    manifest = retailer.get_release(job["id"])["manifest"]
    assert 0.5 < manifest["epsilon_spent"] <= 1.0 + 1e-9
    analyst.submit_job(spec)
    analyst.submit_job(spec)
    with pytest.raises(PolicyError, match="(bank.customers|retail.purchases).* left of its budget"):
        analyst.submit_job(spec)  # 3 x 1.0 spent of both budgets (3.0 each)
    assert retailer.dataset_budget("retail.purchases")["remaining_epsilon"] == pytest.approx(0.0)


def test_cancel_a_queued_job(room, tmp_path):
    from cleanroom import crypto

    key = crypto.generate_keypair()
    import httpx

    httpx.post(
        room.url + "/runner/register",
        headers={"authorization": f"Bearer {room.runner_token}"},
        json={"enc_public": key.enc_public, "sign_public": key.sign_public},
    ).raise_for_status()
    retailer, bank, analyst, files, ids = setup_scenario(room, tmp_path, n=300)
    approve_all(retailer, bank, ids)
    job = analyst.submit_job(scenario.job_spec(ids))
    assert analyst.cancel_job(job["id"])["status"] == "cancelled"
    from cleanroom.errors import Conflict

    with pytest.raises(Conflict):
        analyst.cancel_job(job["id"])
    other = room.org("other-analyst", "analyst")
    from cleanroom.errors import NotFound

    with pytest.raises(NotFound):
        other.get_job(job["id"])


def test_plugin_test_runs_on_mock_data_in_the_sandbox(room, runner, tmp_path):
    from cleanroom.local.plugin_test import test_plugin

    retailer, bank, analyst, files, ids = setup_scenario(room, tmp_path, n=300)
    result = test_plugin(
        analyst,
        REPO / "plugins" / "one-hot",
        ["retail.purchases"],
        {"columns": ["category"]},
        image=runner.settings.sandbox_image,
        settings=runner.settings,
    )
    assert result["ok"] is True, result
    assert any(c.startswith("category_") for c in result["columns"])
    model = test_plugin(
        analyst,
        REPO / "plugins" / "linear-model",
        ["retail.purchases", "bank.customers"],
        {"target": "spend"},
        image=runner.settings.sandbox_image,
        settings=runner.settings,
    )
    assert model["ok"] and model["model_specs"][0]["spec"]["estimator"] == "ridge"


def test_queue_flooding_gets_429(tmp_path):
    import httpx

    from cleanroom import crypto
    from cleanroom.errors import RateLimited
    from tests.conftest import Room

    small = Room(tmp_path / "api", max_queued_jobs_per_org=2)
    try:
        key = crypto.generate_keypair()
        httpx.post(
            small.url + "/runner/register",
            headers={"authorization": f"Bearer {small.runner_token}"},
            json={"enc_public": key.enc_public, "sign_public": key.sign_public},
        ).raise_for_status()
        retailer, bank, analyst, files, ids = setup_scenario(small, tmp_path, n=300)
        approve_all(retailer, bank, ids)
        spec = scenario.job_spec(ids)
        analyst.submit_job(spec)
        analyst.submit_job(spec)
        before = len(analyst.list_jobs())
        with pytest.raises(RateLimited):
            analyst.submit_job(spec)
        assert len(analyst.list_jobs()) == before  # the refused job left nothing behind
    finally:
        small.stop()
