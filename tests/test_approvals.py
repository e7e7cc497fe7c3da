"""Owner approvals: bound to (plugin hash, dataset, policy version, data), signed on the owner's machine."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest

from cleanroom import crypto, scenario
from cleanroom.errors import Conflict, IntegrityError, PermissionDenied, PolicyError, ValidationError
from cleanroom.profile import load_or_create_keys
from tests.scenario_setup import setup_scenario

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def world(room, tmp_path):
    key = crypto.generate_keypair()
    httpx.post(
        room.url + "/runner/register",
        headers={"authorization": f"Bearer {room.runner_token}"},
        json={"enc_public": key.enc_public, "sign_public": key.sign_public},
    ).raise_for_status()
    retailer, bank, analyst, _, ids = setup_scenario(room.org, tmp_path, 300)
    return retailer, bank, analyst, ids


def payload(client, plugin_id, dataset, **changes):
    ds = client.get_dataset(dataset)
    p = {
        "type": "plugin-approval",
        "plugin_id": plugin_id,
        "dataset": dataset,
        "policy_version": ds["policy_version"],
        "policy_sha256": ds["policy_sha256"],
        "dataset_sha256": ds["sha256"],
        "decision": "approve",
        "reason": "",
        "org": client.whoami()["name"],
        "issued_at": time.time(),
    }
    p.update(changes)
    return p


def send(client, plugin_id, p, signer=None):
    pair = signer or client.keys()
    return client.post(f"/plugins/{plugin_id}/approvals", json={"payload": p, "signature": pair.sign(p)})


def test_valid_approval_then_job_accepted(world):
    retailer, bank, analyst, ids = world
    for pid in ids.values():
        send(retailer, pid, payload(retailer, pid, "retail.purchases"))
    with pytest.raises(PolicyError, match="bank"):
        analyst.submit_job(scenario.job_spec(ids))  # until every owner approved
    for pid in ids.values():
        bank.decide_plugin(pid, "bank.customers")
    assert analyst.submit_job(scenario.job_spec(ids))["status"] == "queued"


def test_an_analyst_cannot_run_another_analysts_approved_plugins(world, room):
    retailer, bank, analyst, ids = world
    for pid in ids.values():
        retailer.decide_plugin(pid, "retail.purchases")
        bank.decide_plugin(pid, "bank.customers")
    rival = room.org("rival-analytics", "analyst")
    spec = scenario.job_spec(ids, recipient="acme-analytics")
    with pytest.raises(PolicyError, match="unknown plugin"):
        rival.submit_job(spec)  # the ids are approved, but not rival's to use
    assert analyst.submit_job(spec)["status"] == "queued"  # control: their author can


def test_wrong_org_cannot_approve_for_a_dataset(world):
    retailer, bank, analyst, ids = world
    pid = ids["impute"]
    with pytest.raises(PermissionDenied):
        send(bank, pid, payload(bank, pid, "retail.purchases"))
    with pytest.raises(PermissionDenied):
        send(analyst, pid, payload(analyst, pid, "retail.purchases"))


def test_wrong_hash_old_policy_and_other_data_are_refused(world):
    retailer, _, _, ids = world
    pid, other = ids["impute"], ids["scale"] if "scale" in ids else ids["one-hot"]
    with pytest.raises(ValidationError, match="another plugin"):
        send(retailer, pid, payload(retailer, other, "retail.purchases"))
    with pytest.raises(Conflict, match="policy version"):
        send(retailer, pid, payload(retailer, pid, "retail.purchases", policy_version=0))
    with pytest.raises(Conflict, match="other data"):
        send(retailer, pid, payload(retailer, pid, "retail.purchases", dataset_sha256="0" * 64))


def test_bad_signature_and_foreign_key_are_refused(world):
    retailer, bank, _, ids = world
    pid = ids["impute"]
    p = payload(retailer, pid, "retail.purchases")
    with pytest.raises(IntegrityError):
        send(retailer, pid, p, signer=crypto.generate_keypair())
    bank_key, _ = load_or_create_keys("bank")
    with pytest.raises(IntegrityError):
        send(retailer, pid, p, signer=bank_key)
    tampered = dict(p)
    sig = retailer.keys().sign(p)
    tampered["reason"] = "changed after signing"
    with pytest.raises(IntegrityError):
        retailer.post(f"/plugins/{pid}/approvals", json={"payload": tampered, "signature": sig})


def test_replay_and_stale_approvals_are_refused(world):
    retailer, _, _, ids = world
    pid = ids["impute"]
    p = payload(retailer, pid, "retail.purchases")
    sig = retailer.keys().sign(p)
    first = retailer.post(f"/plugins/{pid}/approvals", json={"payload": p, "signature": sig})
    with pytest.raises(Conflict, match="replay"):
        retailer.post(f"/plugins/{pid}/approvals", json={"payload": p, "signature": sig})
    retailer.revoke_approval(pid, first["id"])
    with pytest.raises(Conflict):
        retailer.post(f"/plugins/{pid}/approvals", json={"payload": p, "signature": sig})
    with pytest.raises(ValidationError, match="stale"):
        send(retailer, pid, payload(retailer, pid, "retail.purchases", issued_at=time.time() - 3600))
    actions = [e.get("action") for e in retailer.audit_events()]  # other orgs' events come redacted
    assert "plugin.approval_revoked" in actions


def test_policy_change_voids_old_approvals(world):
    retailer, bank, analyst, ids = world
    for pid in ids.values():
        retailer.decide_plugin(pid, "retail.purchases")
        bank.decide_plugin(pid, "bank.customers")
    retailer.update_policy("retail.purchases", scenario.RETAIL_POLICY.replace("k = 10", "k = 15"))
    with pytest.raises(PolicyError, match="policy version 2"):
        analyst.submit_job(scenario.job_spec(ids))


def test_new_plugin_version_starts_unapproved_and_shows_a_diff(world, tmp_path):
    import shutil

    retailer, bank, analyst, ids = world
    retailer.decide_plugin(ids["impute"], "retail.purchases")
    folder = tmp_path / "impute"
    shutil.copytree(REPO / "plugins" / "impute", folder)
    manifest = folder / "cleanroom-plugin.toml"
    manifest.write_text(manifest.read_text().replace('version = "1.0.0"', 'version = "1.0.1"'))
    with open(folder / "plugin.py", "a") as f:
        f.write("\n# a harmless change\n")
    new = analyst.submit_plugin(folder)
    assert new["id"] != ids["impute"] and new["approvals"] == []
    shown = retailer.get_plugin(new["id"])
    assert shown["diff_against"]["id"] == ids["impute"]
    assert "+# a harmless change" in shown["diff_against"]["diff"]


def test_job_lists_page_over_only_the_jobs_a_caller_may_see(world, room):
    retailer, bank, analyst, ids = world
    for pid in ids.values():
        retailer.decide_plugin(pid, "retail.purchases")
        bank.decide_plugin(pid, "bank.customers")
    mine = [analyst.submit_job(scenario.job_spec(ids))["id"] for _ in range(3)]
    rival = room.org("rival-analytics", "analyst")
    assert rival.list_jobs() == []  # other analysts' jobs are not theirs to list
    first = analyst.page("/jobs", limit=2)
    second = analyst.page("/jobs", limit=2, after=first["next"])
    assert [len(p["items"]) for p in (first, second)] == [2, 1] and second["next"] is None
    assert [j["id"] for p in (first, second) for j in p["items"]] == mine[::-1]  # newest first, no repeats
    with pytest.raises(ValidationError, match="cursor"):
        analyst.page("/jobs", limit=2, after="not-a-cursor")
    assert {j["id"] for j in retailer.list_jobs()} == set(mine)  # the owner of an input sees them
    assert [j["id"] for j in analyst.list_jobs(status="queued", limit=1)] == [mine[-1]]
    assert analyst.list_jobs(status="succeeded") == []
    with pytest.raises(ValidationError):
        analyst.list_jobs(limit=0)


def _finish_with_release(room, room_key, analyst, owners, job_id, detail):
    """Finish a job through the runner's routes as the runner does: one encrypted artifact, a manifest whose
    check detail is `detail`, and a receipt signed by the room key binding the manifest's digest."""
    runner = {"authorization": f"Bearer {room.runner_token}"}
    assert httpx.post(room.url + "/runner/claim", headers=runner).json()["job"] == job_id
    plain = b'{"metrics": {"r2": 0.5}}'
    readers = [c.keys().enc_public for c in (analyst, *owners)]
    art = httpx.put(
        f"{room.url}/runner/jobs/{job_id}/artifacts/metrics.json",
        headers=runner,
        content=crypto.encrypt_bytes(plain, readers),
    ).json()
    outputs = {"metrics.json": {"sha256": crypto.digest(plain), "bytes": len(plain)}}
    manifest = {
        "job_id": job_id,
        "outputs": outputs,
        "epsilon_spent": 0.0,
        "recipient": "acme-analytics",
        "checks": [{"name": "min_group_size", "passed": True, "detail": detail}],
        "encrypted_to": ["acme-analytics", "bank", "retailer"],
    }
    body = {
        "type": "cleanroom-receipt",
        "version": 1,
        "job_id": job_id,
        "outputs": outputs,
        "manifest_sha256": crypto.digest(manifest),
    }
    receipt = {
        "body": body,
        "signature": room_key.sign(body),
        "room_keys": {
            "enc_public": room_key.enc_public,
            "sign_public": room_key.sign_public,
            "fingerprint": crypto.fingerprint(room_key.enc_public + room_key.sign_public),
        },
    }
    done = httpx.post(
        f"{room.url}/runner/jobs/{job_id}/finish",
        headers=runner,
        json={
            "status": "succeeded",
            "release": {
                "manifest": manifest,
                "receipt": receipt,
                "artifacts": {"metrics.json": {"blob": art["blob"], "size": art["size"]}},
                "review_by": ["bank.customers", "retail.purchases"],
            },
        },
    ).json()
    return done["release_id"]


@pytest.mark.parametrize("detail", ["grouped by ålder and 地域", "grouped by age"], ids=["non-ascii", "ascii"])
def test_a_release_decision_signs_the_manifest_digest_the_receipt_binds(room, tmp_path, detail):
    """The owner signs `manifest_sha256` over the manifest the room shows (stored as ASCII-escaped JSON), the
    API checks it against its own, and the receipt binds the runner's: one digest of one value, so a release
    whose check detail names a non-ASCII column is approved and delivered like an ASCII one (control)."""
    from cleanroom.client import manifest_sha256

    room_key = crypto.generate_keypair()
    httpx.post(
        room.url + "/runner/register",
        headers={"authorization": f"Bearer {room.runner_token}"},
        json={"enc_public": room_key.enc_public, "sign_public": room_key.sign_public},
    ).raise_for_status()
    retailer, bank, analyst, _, ids = setup_scenario(room.org, tmp_path, 300, approve=True)
    job_id = analyst.submit_job(scenario.job_spec(ids))["id"]
    release_id = _finish_with_release(room, room_key, analyst, (retailer, bank), job_id, detail)

    shown = retailer.get_release(release_id)
    signed = shown["receipt"]["body"]["manifest_sha256"]
    assert manifest_sha256(shown["manifest"]) == crypto.digest(shown["manifest"]) == signed
    # a decision over the stored text's hash (the old form) names another manifest whenever the text is escaped
    escaped = hashlib.sha256(json.dumps(shown["manifest"], sort_keys=True, separators=(",", ":")).encode())
    old = {
        "type": "release-approval",
        "release_id": release_id,
        "dataset": "retail.purchases",
        "manifest_sha256": escaped.hexdigest(),
        "org": "retailer",
        "issued_at": time.time(),
    }
    if detail.isascii():
        assert old["manifest_sha256"] == signed
    else:
        assert old["manifest_sha256"] != signed
        with pytest.raises(Conflict, match="another manifest"):
            retailer.post(
                f"/releases/{release_id}/approve", json={"payload": old, "signature": retailer.keys().sign(old)}
            )
        assert retailer.get_release(release_id)["approved_by"] == []  # nothing was recorded

    retailer.approve_release(release_id, expect_manifest_sha256=signed)
    bank.approve_release(release_id, expect_manifest_sha256=signed)
    assert sorted(bank.get_release(release_id)["approved_by"]) == ["bank.customers", "retail.purchases"]
    with room.store.read() as conn:
        payloads = [
            json.loads(r[0])
            for r in conn.execute("SELECT payload FROM release_approvals WHERE release_id = ?", (release_id,))
        ]
    assert [p["manifest_sha256"] for p in payloads] == [signed, signed]
    room.end_time_budget(job_id)
    got = analyst.get_result(job_id, tmp_path / "out")  # checks the shown manifest against the receipt too
    assert (tmp_path / "out" / "metrics.json").read_bytes() == b'{"metrics": {"r2": 0.5}}' and got["files"]
