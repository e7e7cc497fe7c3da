"""The API over real HTTP: health, orgs, auth, errors, audit chain."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from cleanroom.crypto import generate_keypair
from cleanroom.errors import AuthenticationError, Conflict, PermissionDenied, ValidationError


def test_health_and_openapi(room):
    r = httpx.get(room.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    spec = httpx.get(room.url + "/openapi.json").json()
    assert "/datasets/uploads" in spec["paths"]
    operations = [op for path in spec["paths"].values() for op in path.values()]
    assert "HTTPValidationError" not in str(spec)  # the API answers invalid input with 400, not FastAPI's 422
    declared = [op["responses"][s] for op in operations for s in ("400", "422") if s in op["responses"]]
    assert declared and all(
        r["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/Error" for r in declared
    )  # a 422 is an integrity error (a signature that does not verify)
    bad = httpx.post(room.url + "/orgs", json={"name": 5}, headers={"authorization": f"Bearer {room.admin_token}"})
    assert bad.status_code == 400 and {"error", "message"} <= set(bad.json())  # what the schema says


def test_org_create_list_and_token_once(room):
    created = room.admin.create_org("retailer", ["owner"])
    assert created["token"].startswith("crt_")
    names = [o["name"] for o in room.admin.list_orgs()]
    assert "retailer" in names and "runner" not in names
    with room.store.read() as conn:
        hashes = [r[0] for r in conn.execute("SELECT hash FROM tokens")]
    secret = created["token"].split(".", 1)[1]
    assert all(secret not in h for h in hashes)  # stored only as a hash


@pytest.mark.parametrize("header", [None, "Bearer nope", "Bearer crt_0000.bad", "Basic abc"])
def test_bad_tokens_are_401_json(room, header):
    headers = {"authorization": header} if header else {}
    r = httpx.get(room.url + "/datasets", headers=headers)
    assert r.status_code == 401
    assert r.json()["error"] == "unauthenticated"
    assert "Traceback" not in r.text


def test_bad_input_changes_nothing(room):
    before = len(list(room.admin.audit_events()))
    with pytest.raises(ValidationError):
        room.admin.create_org("Bad Name!", ["owner"])
    with pytest.raises(ValidationError):
        room.admin.create_org("okname", ["admin"])
    r = httpx.post(
        room.url + "/orgs",
        content=b"{not json",
        headers={"authorization": f"Bearer {room.admin_token}", "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_input"
    room.admin.create_org("bank", ["owner"])
    with pytest.raises(Conflict):
        room.admin.create_org("bank", ["analyst"])
    assert len(list(room.admin.audit_events())) == before + 1


def test_roles_are_enforced(room):
    analyst = room.org("analyst-co", "analyst")
    with pytest.raises(PermissionDenied):
        analyst.create_org("x-org", ["owner"])
    runner = httpx.get(room.url + "/datasets", headers={"authorization": f"Bearer {room.runner_token}"})
    assert runner.status_code == 403


def test_unknown_route_is_json_404(room):
    r = httpx.get(room.url + "/nope", headers={"authorization": f"Bearer {room.admin_token}"})
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_every_route_has_an_authorisation_rule(room):
    from cleanroom.api.authz import RULES, iter_routes

    names = {getattr(r, "name", None) for r in iter_routes(room.app.routes)}
    assert "submit_job" in names and "runner_claim" in names
    names -= {"openapi", "swagger_ui_html", "swagger_ui_redirect", "redoc_html"}
    missing = sorted(n for n in names if n not in RULES)
    assert not missing, f"routes without an authorisation rule: {missing}"


def test_audit_chain_verifies_and_catches_tampering(room):
    room.admin.create_org("a-org", ["owner"])
    room.admin.create_org("b-org", ["analyst"])
    assert room.admin.audit_verify()["ok"]
    conn = sqlite3.connect(room.store.db_path)
    conn.execute('UPDATE audit SET details = \'{"roles":["admin"]}\' WHERE seq = 2')
    conn.commit()
    result = room.admin.audit_verify()
    assert not result["ok"] and result["broken_at"] == 2


def test_audit_catches_removed_and_truncated_events(room):
    for name in ("c-org", "d-org", "e-org"):
        room.admin.create_org(name, ["owner"])
    assert room.admin.audit_verify()["ok"]  # pins the head in the profile
    conn = sqlite3.connect(room.store.db_path)
    conn.execute("DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)")
    conn.commit()
    result = room.admin.audit_verify()
    assert not result["ok"] and "last seen" in result["reason"]
    conn.execute("DELETE FROM audit WHERE seq = 2")
    conn.commit()
    assert room.admin.audit_verify()["broken_at"] == 2


def test_keys_registered_once(room):
    client = room.org("keyed", "owner")
    me = client.whoami()
    assert me["keys"]["fingerprint"].startswith("SHA256:")
    with pytest.raises(Conflict):
        other = generate_keypair()
        client.request("PUT", "/orgs/me/keys", json={"enc_public": other.enc_public, "sign_public": other.sign_public})


def test_unauthenticated_client_error_type(room):
    from cleanroom.client import Client

    with pytest.raises(AuthenticationError):
        with Client(room.url, "crt_abc.def") as stranger:
            stranger.list_datasets()


def test_an_org_rotates_its_own_token_and_an_admin_rotates_a_lost_one(room):
    from cleanroom.errors import AuthenticationError, NotFound, PermissionDenied

    retailer = room.org("retailer", "owner")
    bank = room.org("bank", "owner")
    old = retailer.token
    result = retailer.rotate_token()
    assert result["token"] != old and retailer.token == result["token"]
    assert retailer.whoami()["name"] == "retailer"  # the client switched to the new token...
    stale = httpx.get(room.url + "/orgs/me", headers={"authorization": f"Bearer {old}"})
    assert stale.status_code == 401  # ...and the old one is dead
    with pytest.raises(PermissionDenied):
        bank.rotate_token("retailer")  # another org cannot
    with pytest.raises(NotFound):
        room.admin.rotate_token("runner")  # the runner's token belongs to its token file
    lost = room.admin.rotate_token("bank")["token"]  # an admin can, for an org that lost its token
    with pytest.raises(AuthenticationError):
        bank.get("/orgs/me")  # its old token is dead
    assert httpx.get(room.url + "/orgs/me", headers={"authorization": f"Bearer {lost}"}).json()["name"] == "bank"
    actions = [e["action"] for e in room.admin.audit_events()]
    assert actions.count("token.rotated") == 2
