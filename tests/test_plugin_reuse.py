"""Plugins are content-addressed for everyone: a second analyst submits the same built-in plugin bytes,
uses them in its jobs (the owners' approvals of those bytes cover it), and sees only its own view."""

from __future__ import annotations

import httpx
import pytest

from cleanroom import crypto, scenario
from cleanroom.errors import Conflict, NotFound, PolicyError
from tests.scenario_setup import REPO, setup_scenario

PRIVATE = "for acme's Q3 churn project only"


@pytest.fixture
def world(room, tmp_path):
    key = crypto.generate_keypair()
    httpx.post(
        room.url + "/runner/register",
        headers={"authorization": f"Bearer {room.runner_token}"},
        json={"enc_public": key.enc_public, "sign_public": key.sign_public},
    ).raise_for_status()
    retailer, bank, acme, _, ids = setup_scenario(room.org, tmp_path, 300)
    for pid in ids.values():
        retailer.decide_plugin(pid, "retail.purchases", reason=PRIVATE)
        bank.decide_plugin(pid, "bank.customers")
    return retailer, bank, acme, ids


def test_a_second_analyst_reuses_the_same_bytes_and_sees_its_own_view(world, room, tmp_path):
    retailer, _, acme, ids = world
    rival = room.org("rival-analytics", "analyst")
    spec = scenario.job_spec(ids, recipient="acme-analytics")
    with pytest.raises(PolicyError, match="unknown plugin"):
        rival.submit_job(spec)  # refusal first: the ids are not rival's until it submits the bytes
    with pytest.raises(NotFound, match="^plugin not found$"):
        rival.get_plugin(ids["impute"])

    views = {}
    for name, pid in ids.items():
        view = views[name] = rival.submit_plugin(REPO / "plugins" / name)
        assert view["id"] == pid and view["created"] is False
        assert view["submitted_by"] == "rival-analytics"  # its own view: acme is named nowhere
        assert "acme" not in str(view) and PRIVATE not in str(view)
        in_effect = {(a["dataset"], a["decision"]) for a in view["approvals"]}
        assert in_effect == {("retail.purchases", "approve"), ("bank.customers", "approve")}
        assert all(a["reason"] == "" for a in view["approvals"])
    again = rival.submit_plugin(REPO / "plugins" / "impute")  # a second re-submit changes nothing
    assert again["created"] is False and again["created_at"] == views["impute"]["created_at"]

    # its lists, its reads by id and by name@version show its view only
    listed = rival.list_plugins()
    assert {p["id"] for p in listed} == set(ids.values())
    assert {p["submitted_by"] for p in listed} == {"rival-analytics"}
    full = rival.get_plugin("impute@1.0.0")
    assert full["id"] == ids["impute"] and "acme" not in str(full) and PRIVATE not in str(full)

    # the owners' approvals of the bytes cover the second analyst's job
    assert rival.submit_job(spec)["status"] == "queued"
    # control: the first submitter and the owners still see the plugin as acme's, with the reason
    for client in (acme, retailer):
        mine = client.get_plugin(ids["impute"])
        assert mine["submitted_by"] == "acme-analytics"
        assert PRIVATE in {a["reason"] for a in mine["approvals"]}
    # acme's audit log does not tell it that rival reuses its plugins
    readable = [e for e in acme.audit_events() if not e.get("redacted")]
    assert not any(e["action"].startswith("plugin.") and "rival" in str(e) for e in readable)
    mine = [e for e in rival.audit_events() if e.get("action") == "plugin.resubmitted"]
    assert len(mine) == len(ids)  # control: the re-submits are audited, in rival's own scope
    # the name stays acme's lineage: rival cannot publish a new version of "impute"
    folder = REPO / "plugins" / "impute"
    with pytest.raises(Conflict, match="belongs to another org"):
        rival.submit_plugin(_bumped(folder, tmp_path))


def test_decisions_after_the_resubmit_show_in_full(world, room):
    retailer, _, _, ids = world
    rival = room.org("rival-analytics", "analyst")
    rival.submit_plugin(REPO / "plugins" / "impute")
    retailer.decide_plugin(ids["impute"], "retail.purchases", decision="reject", reason="not this quarter")
    view = rival.get_plugin(ids["impute"])
    assert [(a["decision"], a["reason"]) for a in view["approvals"] if a["dataset"] == "retail.purchases"] == [
        ("reject", "not this quarter")
    ]  # the earlier approval is revoked by the rejection: not shown


def _bumped(folder, tmp):
    import shutil

    out = tmp / "impute-rival"
    shutil.copytree(folder, out)
    manifest = out / "cleanroom-plugin.toml"
    manifest.write_text(manifest.read_text().replace('version = "1.0.0"', 'version = "1.0.9"'))
    (out / "plugin.py").write_text((out / "plugin.py").read_text() + "\n# rival's\n")
    return out
