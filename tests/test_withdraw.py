"""Withdrawing a dataset: owner only, audited; queued jobs over it are cancelled, running ones finish, new
ones are refused; it leaves other orgs' lists; its ciphertext survives until a sweep and is gone after;
receipts of past releases still verify."""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest

from cleanroom import crypto, scenario
from cleanroom.errors import Conflict, NotFound, PermissionDenied
from tests.scenario_setup import setup_scenario

DAY = 86400


@pytest.fixture
def world(room, tmp_path):
    room_key = crypto.generate_keypair()  # registered as the runner would, so owners can encrypt to it
    httpx.post(
        room.url + "/runner/register",
        headers={"authorization": f"Bearer {room.runner_token}"},
        json={"enc_public": room_key.enc_public, "sign_public": room_key.sign_public},
    ).raise_for_status()
    retailer, bank, analyst, files, ids = setup_scenario(room.org, tmp_path, n=300, approve=True)
    return room, retailer, bank, analyst, ids


def names(client):
    return sorted(d["name"] for d in client.list_datasets())


def blob_path(room, digest):
    return room.settings.data_dir / "blobs" / digest[:2] / digest


def age_blobs(room):
    t = time.time() - 3 * DAY
    for path in (room.settings.data_dir / "blobs").rglob("*"):
        if path.is_file() and len(path.name) == 64:
            os.utime(path, (t, t))


def test_owner_withdraws_queued_jobs_are_cancelled_new_jobs_refused_and_analysts_no_longer_see_it(world):
    room, retailer, bank, analyst, ids = world
    queued = analyst.submit_job(scenario.job_spec(ids))
    assert names(analyst) == ["bank.customers", "retail.purchases"]

    result = retailer.withdraw_dataset("retail.purchases")
    assert result["cancelled_jobs"] == [queued["id"]] and result["running_jobs"] == []
    assert result["withdrawn_at"] is not None

    # the queued job never touched the data: cancelled, and its analyst sees nothing released
    assert retailer.get_job(queued["id"])["status"] == "cancelled"
    assert "withdrawn" in retailer.get_job(queued["id"])["reason"]
    assert analyst.get_job(queued["id"])["status"] == "cancelled"  # never started: the data was not touched
    # a new job over it is refused, with what to do
    with pytest.raises(Conflict, match="withdrawn by its owner") as refused:
        analyst.submit_job(scenario.job_spec(ids))
    assert "inputs" in (refused.value.hint or "")
    assert len(room.admin.list_jobs()) == 1  # nothing stored by the refusal
    # gone from the analyst's and the other owner's lists; the owner sees it as withdrawn
    assert names(analyst) == names(bank) == ["bank.customers"]  # (the control: bank.customers stays)
    with pytest.raises(NotFound, match="withdrawn"):
        analyst.get_dataset("retail.purchases")
    mine = {d["name"]: d for d in retailer.list_datasets()}
    assert mine["retail.purchases"]["withdrawn_at"] is not None and mine["bank.customers"]["withdrawn_at"] is None
    assert retailer.get_dataset("retail.purchases")["withdrawn_at"] is not None
    # no new approval or policy either, and no second withdraw
    with pytest.raises(Conflict, match="withdrawn"):
        retailer.decide_plugin(ids["impute"], "retail.purchases")
    # no new policy either, and no second withdraw
    with pytest.raises(Conflict, match="withdrawn"):
        retailer.update_policy("retail.purchases", scenario.RETAIL_POLICY.replace("k = 10", "k = 12"))
    with pytest.raises(Conflict, match="withdrawn already"):
        retailer.withdraw_dataset("retail.purchases")
    actions = [e.get("action") for e in retailer.audit_events()]
    assert "dataset.withdrawn" in actions and room.admin.audit_verify()["ok"]


def test_only_the_owner_withdraws(world):
    room, retailer, bank, analyst, ids = world
    for other in (bank, analyst, room.admin):
        with pytest.raises(PermissionDenied):
            other.withdraw_dataset("retail.purchases")
    assert names(analyst) == ["bank.customers", "retail.purchases"]  # nothing changed
    with pytest.raises(NotFound):
        retailer.withdraw_dataset("no.such.dataset")
    retailer.withdraw_dataset("retail.purchases")  # the control: its owner can
    assert names(analyst) == ["bank.customers"]


def test_ciphertext_survives_until_a_sweep_and_a_running_job_keeps_it(world):
    room, retailer, bank, analyst, ids = world
    retail = retailer.get_dataset("retail.purchases")["sha256"]
    bank_blob = bank.get_dataset("bank.customers")["sha256"]
    job = analyst.submit_job(scenario.job_spec(ids))
    runner = {"authorization": f"Bearer {room.runner_token}"}
    claimed = httpx.post(room.url + "/runner/claim", headers=runner).json()["job"]
    assert claimed == job["id"]

    result = retailer.withdraw_dataset("retail.purchases")
    assert result["running_jobs"] == [job["id"]] and result["cancelled_jobs"] == []
    assert blob_path(room, retail).exists()
    # the running job still reads its input (running jobs finish)
    r = httpx.get(room.url + "/runner/datasets/retail.purchases/ciphertext", headers=runner)
    assert r.status_code == 200 and r.headers["x-sha256"] == retail
    age_blobs(room)
    swept = room.admin.storage_sweep(grace_seconds=3600)
    assert retail not in swept["deleted"] and blob_path(room, retail).exists()

    # once the job ended, the next sweep removes the withdrawn ciphertext, and nothing else of the data
    httpx.post(
        room.url + f"/runner/jobs/{job['id']}/finish",
        headers=runner,
        json={"status": "failed", "reason": "test", "error_class": "test"},
    ).raise_for_status()
    assert any(o["blob"] == retail for o in room.admin.storage_check()["orphans"])
    swept = room.admin.storage_sweep(grace_seconds=3600)
    assert retail in swept["deleted"] and not blob_path(room, retail).exists()
    assert bank_blob not in swept["deleted"] and blob_path(room, bank_blob).exists()  # the control
    check = room.admin.storage_check()
    assert check["ok"] and check["missing"] == [], check  # a withdrawn dataset needs no blob
    events = [e for e in room.admin.audit_events() if e.get("action") == "storage.swept"]
    assert retail in json.dumps(events[-1]["details"])


@pytest.mark.docker
@pytest.mark.slow
def test_receipts_of_past_releases_still_verify_after_withdraw_and_sweep(room, runner, tmp_path):
    from cleanroom.client import verify_receipt

    retailer, bank, analyst, files, ids = setup_scenario(room.org, tmp_path, n=2000, approve=True)
    job = analyst.submit_job(scenario.job_spec(ids))
    assert room.end_time_budget(job["id"])["status"] == "succeeded"
    retailer.approve_release(job["id"])
    bank.withdraw_dataset("bank.customers")
    age_blobs(room)
    swept = room.admin.storage_sweep(grace_seconds=3600)
    assert bank.get_dataset("bank.customers")["sha256"] in swept["deleted"]
    out = tmp_path / "out"
    analyst.get_result(job["id"], out)  # checks the receipt's signature and every artifact against it
    receipt = json.loads((out / "receipt.json").read_text())
    assert verify_receipt(receipt)["job"] == job["id"]
