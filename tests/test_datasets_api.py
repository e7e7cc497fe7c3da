"""Dataset uploads over HTTP: atomic, verified, and never visible half-written."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from cleanroom import crypto, scenario
from cleanroom.errors import Conflict, NotFound, PolicyError, TooLarge, ValidationError
from cleanroom.policy import parse_policy
from cleanroom.prepare.ingest import new_join_secret, prepare


@pytest.fixture
def owner(room):
    room_key = crypto.generate_keypair()
    # register a room key as the runner would (with the runner's token)
    httpx.post(
        room.url + "/runner/register",
        headers={"authorization": f"Bearer {room.runner_token}"},
        json={"enc_public": room_key.enc_public, "sign_public": room_key.sign_public},
    ).raise_for_status()
    client = room.org("retailer", "owner")
    client.room_key = room_key
    client.analyst = room.org("acme-analytics", "analyst")  # the policy's recipient: the room checks it exists
    return client


def prepared(tmp_path, room_key, n=300):
    files = scenario.write_data(tmp_path / "data", n)
    return prepare(
        files["retail"],
        recipient=room_key.enc_public,
        id_column="customer_id",
        join_secret=new_join_secret(),
        policy=parse_policy(scenario.RETAIL_POLICY),
    )


def declare(client, prep, name="retail.purchases", **overrides):
    body = {"name": name, "policy": scenario.RETAIL_POLICY, **prep.metadata(), **overrides}
    return client.post("/datasets/uploads", json=body)


def nothing_visible(room, client):
    assert client.list_datasets() == []
    blobs = [p for p in (room.settings.data_dir / "blobs").rglob("*") if p.is_file()]
    assert blobs == []


def test_upload_round_trip_and_runner_side_decrypt(room, owner, tmp_path):
    prep = prepared(tmp_path, owner.room_key)
    decl = declare(owner, prep)
    data = prep.ciphertext_path.read_bytes()
    ds = owner.request("PUT", decl["put"], content=data).json()
    assert ds["sha256"] == hashlib.sha256(data).hexdigest() == prep.sha256
    shown = owner.get_dataset("retail.purchases")
    assert shown["row_count"] == prep.row_count and shown["mock"] and "customer_id" not in shown["columns"]
    r = httpx.get(
        room.url + "/runner/datasets/retail.purchases/ciphertext",
        headers={"authorization": f"Bearer {room.runner_token}"},
    )
    from cleanroom.prepare.ingest import decrypt_dataset

    frame = decrypt_dataset(r.content, owner.room_key)
    assert len(frame) == prep.row_count and "_pid" in frame.columns and "email" not in frame.columns
    events = [e.get("action") for e in owner.audit_events()]  # other orgs' events come redacted
    assert "dataset.uploaded" in events


def test_corrupt_truncated_and_plain_uploads_leave_nothing(room, owner, tmp_path):
    prep = prepared(tmp_path, owner.room_key)
    data = prep.ciphertext_path.read_bytes()
    decl = declare(owner, prep)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    with pytest.raises(ValidationError, match="corrupt"):
        owner.request("PUT", decl["put"], content=bytes(flipped))
    with pytest.raises(ValidationError, match="incomplete"):
        owner.request("PUT", decl["put"], content=data[:-10])
    plain = b"customer_id,spend\n" + b"x" * (len(data) - 18)
    with pytest.raises(ValidationError, match="age ciphertext"):
        owner.request("PUT", decl["put"], content=plain)
    nothing_visible(room, owner)
    assert not list((room.settings.data_dir / "blobs" / "tmp").iterdir())
    owner.request("PUT", decl["put"], content=data)  # a retry of the same upload succeeds
    assert [d["name"] for d in owner.list_datasets()] == ["retail.purchases"]


def test_replayed_upload_and_duplicate_name_conflict(room, owner, tmp_path):
    prep = prepared(tmp_path, owner.room_key)
    decl = declare(owner, prep)
    owner.request("PUT", decl["put"], content=prep.ciphertext_path.read_bytes())
    with pytest.raises(Conflict, match="replayed"):
        declare(owner, prep, name="retail.copy")
    with pytest.raises(Conflict, match="exists"):
        declare(owner, prep, sha256="0" * 64)
    with pytest.raises(Conflict, match="done already"):  # the upload is done; other bytes change nothing
        owner.request("PUT", decl["put"], content=b"age-encryption.org/v1\n")


def test_bad_declarations_are_refused_precisely(room, owner, tmp_path):
    prep = prepared(tmp_path, owner.room_key)
    with pytest.raises(PolicyError) as err:
        declare(owner, prep, policy="[privacy]\nk = 1\n")
    assert err.value.details["line"] == 2
    with pytest.raises(ValidationError, match="dataset names"):
        declare(owner, prep, name="Bad Name")
    schema = prep.metadata()["schema"]
    schema = {"columns": [c for c in schema["columns"] if c["name"] != "_pid"]}
    with pytest.raises(ValidationError, match="_pid"):
        declare(owner, prep, schema=schema)
    nothing_visible(room, owner)


def test_upload_size_limit_is_413(tmp_path):
    from tests.conftest import Room

    small = Room(tmp_path / "api", max_upload_bytes=1000)
    try:
        key = crypto.generate_keypair()
        httpx.post(
            small.url + "/runner/register",
            headers={"authorization": f"Bearer {small.runner_token}"},
            json={"enc_public": key.enc_public, "sign_public": key.sign_public},
        ).raise_for_status()
        client = small.org("retailer", "owner")
        prep = prepared(tmp_path, key)
        with pytest.raises(TooLarge):
            declare(client, prep)
        r = httpx.post(
            small.url + "/datasets/uploads",
            headers={"authorization": f"Bearer {client.token}"},
            json={"name": "x", "policy": "", **prep.metadata()},
        )
        assert r.status_code == 413 and r.json()["error"] == "too_large"
    finally:
        small.stop()


def test_analyst_cannot_upload_or_read_ciphertext(room, owner, tmp_path):
    analyst = owner.analyst
    prep = prepared(tmp_path, owner.room_key)
    from cleanroom.errors import PermissionDenied

    with pytest.raises(PermissionDenied):
        declare(analyst, prep)
    r = httpx.get(
        room.url + "/runner/datasets/retail.purchases/ciphertext", headers={"authorization": f"Bearer {analyst.token}"}
    )
    assert r.status_code == 403


def test_room_key_is_pinned_and_a_changed_key_refused(room, owner, tmp_path):
    from cleanroom.errors import IntegrityError

    first = owner.room()["keys"]["fingerprint"]
    assert owner.profile.room_fingerprint == first
    owner.profile.room_fingerprint = "SHA256:" + "0" * 32  # as if the room had presented another key before
    with pytest.raises(IntegrityError, match="key changed"):
        owner.upload_dataset(
            scenario.write_data(tmp_path / "d", 100)["retail"],
            name="retail.x",
            policy=scenario.RETAIL_POLICY,
            id_column="customer_id",
            join_secret=new_join_secret(),
        )
    assert owner.list_datasets() == []


def stored(room):
    """Everything an upload could have left: datasets, upload declarations (name reservations), blobs."""
    with room.store.read() as conn:
        rows = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("datasets", "uploads", "policies")}
    blobs = [p for p in (room.settings.data_dir / "blobs").rglob("*") if p.is_file()]
    return rows, blobs


def test_unknown_recipient_orgs_are_refused_with_the_fix_and_nothing_is_stored(room, owner, tmp_path):
    prep = prepared(tmp_path, owner.room_key)
    typo = scenario.RETAIL_POLICY.replace('"acme-analytics"', '"acme-analytcs"')
    with pytest.raises(PolicyError) as refused:
        declare(owner, prep, policy=typo)
    assert "acme-analytcs" in refused.value.message and "not in this room" in refused.value.message
    assert "did you mean 'acme-analytics'" in refused.value.hint and "org create" in refused.value.hint
    assert stored(room) == ({"datasets": 0, "uploads": 0, "policies": 0}, [])
    declare(owner, prep)  # the control: the org exists (the fixture made it), and the name was not reserved
    assert stored(room)[0]["uploads"] == 1


def test_policy_rules_for_missing_columns_are_refused_at_upload_and_at_publish(room, owner, tmp_path):
    prep = prepared(tmp_path, owner.room_key)
    misspelt = scenario.RETAIL_POLICY.replace("[columns.spend]", "[columns.spnd]")
    with pytest.raises(PolicyError) as refused:
        declare(owner, prep, policy=misspelt)  # sent by hand: the SDK refuses it before encrypting
    assert "'spnd'" in refused.value.message and "did you mean 'spend'" in refused.value.hint
    assert stored(room) == ({"datasets": 0, "uploads": 0, "policies": 0}, [])
    decl = declare(owner, prep)
    owner.request("PUT", decl["put"], content=prep.ciphertext_path.read_bytes())
    with pytest.raises(PolicyError, match="spnd"):
        owner.update_policy("retail.purchases", misspelt)
    with pytest.raises(PolicyError, match="not in this room"):
        owner.update_policy("retail.purchases", scenario.RETAIL_POLICY.replace('"acme-analytics"', '"nobody"'))
    assert owner.get_dataset("retail.purchases")["policy_version"] == 1  # nothing published
    fixed = scenario.RETAIL_POLICY.replace("k = 10", "k = 12")  # the control
    assert owner.update_policy("retail.purchases", fixed)["policy_version"] == 2


def test_the_sdk_refuses_a_mistyped_column_before_anything_is_sent(room, owner, tmp_path):
    files = scenario.write_data(tmp_path / "data", 300)
    text = files["retail"].read_text().splitlines()
    header = text[0].split(",")
    col = header.index("spend")
    cells = text[10].split(",")
    cells[col] = "unknown"
    text[10] = ",".join(cells)
    files["retail"].write_text("\n".join(text) + "\n")
    with pytest.raises(ValidationError, match=r"line 11: 'unknown'") as refused:
        owner.upload_dataset(
            files["retail"],
            name="retail.purchases",
            policy=scenario.RETAIL_POLICY,
            id_column="customer_id",
            join_secret=new_join_secret(),
        )
    assert "--text-column spend" in refused.value.hint
    assert owner.list_datasets() == [] and stored(room) == ({"datasets": 0, "uploads": 0, "policies": 0}, [])
    with pytest.raises(NotFound):
        owner.get_dataset("retail.purchases")
    # the control: told that spend is text (the policy's bounds for it go too), the upload goes through
    done = owner.upload_dataset(
        files["retail"],
        name="retail.purchases",
        policy=scenario.RETAIL_POLICY.replace("[columns.spend]\nbounds = [0, 2500]", ""),
        id_column="customer_id",
        join_secret=new_join_secret(),
        text_columns=["spend"],
    )
    assert done["column_types"]["spend"] == "string" and "email" in done["dropped_columns"]
