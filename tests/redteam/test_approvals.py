"""Malicious API clients and a malicious operator against approvals, policies and job specs (checklist F).

Approval binds to exact bytes: a plugin id is the hash of its bundle, an approval names (plugin,
dataset, policy version, data hash) and is signed on the owner's machine. These attacks run against
the real API over HTTP; no runner is needed (jobs stay queued). The runner's own re-check is called
directly on the context the API hands it, as the runner does before it decrypts anything.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from cleanroom import crypto
from cleanroom.errors import Conflict, IntegrityError, PermissionDenied, PolicyError, ValidationError
from cleanroom.jobspec import FORBIDDEN_KEYS, parse_jobspec
from cleanroom.policy import Policy
from cleanroom.runner.pins import KeyPins
from tests.redteam.conftest import AGGREGATE_CODE, AGGREGATE_PARAMS, job_spec, upload_dataset, write_plugin

ANALYST = "eve-analytics"


@pytest.fixture
def world(room: Any, tmp_path: Path) -> SimpleNamespace:
    """Two owners with a dataset each, an analyst, an aggregate plugin approved by owner A for its data."""
    room_key = crypto.generate_keypair()
    httpx.post(
        room.url + "/runner/register",
        headers={"authorization": f"Bearer {room.runner_token}"},
        json={"enc_public": room_key.enc_public, "sign_public": room_key.sign_public},
    ).raise_for_status()
    w = SimpleNamespace(room=room, tmp=tmp_path, room_key=room_key, n=0, pins=KeyPins(tmp_path / "runner-home"))
    w.alice = room.org("alice-bank", "owner")
    w.bob = room.org("bob-retail", "owner")
    w.eve = room.org(ANALYST, "analyst")
    w.ds_a = upload_dataset(w.alice, tmp_path, "alice.customers", "alice", ANALYST, seed=1)
    w.ds_a2 = upload_dataset(w.alice, tmp_path, "alice.other", "alice2", ANALYST, seed=3)
    w.ds_b = upload_dataset(w.bob, tmp_path, "bob.purchases", "bob", ANALYST, seed=2)
    w.plugin = submit(w, AGGREGATE_CODE)
    w.alice.decide_plugin(w.plugin, w.ds_a)
    return w


def submit(w: SimpleNamespace, code: str, name: str | None = None, version: str = "1.0.0") -> str:
    w.n += 1
    name = name or f"agg-{w.n}"
    folder = write_plugin(w.tmp / f"p{w.n}", name, code, kind="analysis", params=AGGREGATE_PARAMS)
    text = (folder / "cleanroom-plugin.toml").read_text().replace('version = "1.0.0"', f'version = "{version}"')
    (folder / "cleanroom-plugin.toml").write_text(text)
    return str(w.eve.submit_plugin(folder)["id"])


def spec(w: SimpleNamespace, plugin: str, dataset: str, epsilon: float | None = None) -> str:
    w.n += 1
    return job_spec(
        f"job-{w.n}",
        ANALYST,
        dataset,
        [(plugin, {"name": "by_region", "group_by": ["region"]})],
        aggregates=True,
        epsilon=epsilon,
    )


def payload(w: SimpleNamespace, owner: Any, plugin: str, dataset: str, **changes: Any) -> dict[str, Any]:
    ds = owner.get_dataset(dataset)
    p = {
        "type": "plugin-approval",
        "plugin_id": plugin,
        "dataset": dataset,
        "policy_version": ds["policy_version"],
        "policy_sha256": Policy.from_dict(ds["policy"]).sha256(),
        "dataset_sha256": ds["sha256"],
        "decision": "approve",
        "reason": "",
        "org": owner.whoami()["name"],
        "issued_at": time.time(),
    }
    p.update(changes)
    return p


def post_approval(client: Any, plugin: str, p: dict[str, Any], signature: str) -> Any:
    return client.post(f"/plugins/{plugin}/approvals", json={"payload": p, "signature": signature})


def test_changed_code_after_approval_is_refused(world: SimpleNamespace) -> None:
    w = world
    assert w.eve.submit_job(spec(w, w.plugin, w.ds_a))["status"] == "queued"  # control: approved code runs
    evil = submit(w, AGGREGATE_CODE + "\n# one more line\n", name="agg-1", version="1.0.1")
    assert evil != w.plugin
    with pytest.raises(PolicyError, match="not approved"):
        w.eve.submit_job(spec(w, evil, w.ds_a))
    folder = write_plugin(
        w.tmp / "same-version", "agg-1", AGGREGATE_CODE + "\nimport os\n", kind="analysis", params=AGGREGATE_PARAMS
    )
    with pytest.raises(Conflict, match="exists already"):
        w.eve.submit_plugin(folder)  # same name and version, other code: never the same plugin


def test_policy_change_after_approval_is_refused(world: SimpleNamespace) -> None:
    w = world
    assert w.eve.submit_job(spec(w, w.plugin, w.ds_a))["status"] == "queued"
    text = w.alice.get_dataset(w.ds_a)["policy_text"]
    w.alice.update_policy(w.ds_a, text.replace("k = 5", "k = 6"))
    with pytest.raises(PolicyError, match="not approved"):
        w.eve.submit_job(spec(w, w.plugin, w.ds_a))
    w.alice.decide_plugin(w.plugin, w.ds_a)  # control: a fresh approval for the new version
    assert w.eve.submit_job(spec(w, w.plugin, w.ds_a))["status"] == "queued"


def test_an_approval_for_one_dataset_does_not_cover_another(world: SimpleNamespace) -> None:
    w = world
    with pytest.raises(PolicyError, match="not approved"):
        w.eve.submit_job(spec(w, w.plugin, w.ds_a2))  # same owner, other dataset


FORGERIES = [
    "bad signature",
    "signed with another org's key",
    "payload altered after signing",
    "by an org that does not own the dataset",
    "for another org's dataset",
    "for another plugin",
    "stale issued_at",
    "for another policy version",
    "for other data",
    "by the analyst",
    "names another org than the caller",
]


@pytest.mark.parametrize("forgery", FORGERIES)
def test_forged_approvals_are_refused(world: SimpleNamespace, forgery: str) -> None:
    w = world
    target = submit(w, AGGREGATE_CODE)
    alice_keys, bob_keys = w.alice.keys(), w.bob.keys()
    client, plugin, p = w.alice, target, payload(w, w.alice, target, w.ds_a)
    signature = alice_keys.sign(p)
    expected: type[Exception] = IntegrityError
    if forgery == "bad signature":
        signature = signature[:-4] + ("AAAA" if not signature.endswith("AAAA") else "BBBB")
    elif forgery == "signed with another org's key":
        signature = bob_keys.sign(p)
    elif forgery == "payload altered after signing":
        p = {**p, "reason": "approved after all"}
    elif forgery == "by an org that does not own the dataset":
        client, p = w.bob, {**p, "org": "bob-retail"}
        signature, expected = bob_keys.sign(p), PermissionDenied
    elif forgery == "for another org's dataset":
        p = payload(w, w.bob, target, w.ds_b, org="alice-bank")
        signature, expected = alice_keys.sign(p), PermissionDenied
    elif forgery == "for another plugin":
        plugin, expected = w.plugin, ValidationError  # payload names `target`, posted to another plugin
    elif forgery == "stale issued_at":
        p = {**p, "issued_at": time.time() - 3600}
        signature, expected = alice_keys.sign(p), ValidationError
    elif forgery == "for another policy version":
        p = {**p, "policy_version": p["policy_version"] + 1}
        signature, expected = alice_keys.sign(p), Conflict
    elif forgery == "for other data":
        p = {**p, "dataset_sha256": "0" * 64}
        signature, expected = alice_keys.sign(p), Conflict
    elif forgery == "by the analyst":
        client, p = w.eve, {**p, "org": ANALYST}
        signature, expected = w.eve.keys().sign(p), PermissionDenied
    elif forgery == "names another org than the caller":
        client, expected = w.bob, PermissionDenied  # bob replays alice's genuine signed payload
    with pytest.raises(expected):
        post_approval(client, plugin, p, signature)
    with pytest.raises(PolicyError, match="not approved"):
        w.eve.submit_job(spec(w, target, w.ds_a))
    # control: the genuine approval of the same plugin works
    w.alice.decide_plugin(target, w.ds_a)
    assert w.eve.submit_job(spec(w, target, w.ds_a))["status"] == "queued"


def test_replayed_approvals_are_refused(world: SimpleNamespace) -> None:
    w = world
    target = submit(w, AGGREGATE_CODE)
    keys = w.alice.keys()
    first = payload(w, w.alice, target, w.ds_a)
    first_sig = keys.sign(first)
    presigned = payload(w, w.alice, target, w.ds_a)  # signed now, kept back for later
    presigned_sig = keys.sign(presigned)
    approval = post_approval(w.alice, target, first, first_sig)  # control: accepted once
    with pytest.raises(Conflict, match="replay"):
        post_approval(w.alice, target, first, first_sig)
    time.sleep(0.01)
    w.alice.revoke_approval(target, approval["id"])
    with pytest.raises(Conflict):
        post_approval(w.alice, target, first, first_sig)  # after revocation
    with pytest.raises(Conflict, match="predates a revocation"):
        post_approval(w.alice, target, presigned, presigned_sig)
    with pytest.raises(PolicyError, match="not approved"):
        w.eve.submit_job(spec(w, target, w.ds_a))


def verify_context(ctx: dict[str, Any], bundles: dict[str, bytes], pins: Any) -> dict[str, Any]:
    """The runner's re-check of a job's context as the API sent it (`JobContext.verify`)."""
    from cleanroom.runner.context import JobContext

    return JobContext.from_dict(ctx).verify(bundles, pins)


def test_a_job_queued_before_revocation_fails_closed_on_the_runner(world: SimpleNamespace) -> None:
    from cleanroom.errors import JobFailed
    from cleanroom.runner.api_client import RunnerAPI

    w = world
    job = w.eve.submit_job(spec(w, w.plugin, w.ds_a))
    with RunnerAPI(w.room.url, w.room.runner_token) as api:
        ctx = api.context(job["id"])
        bundles = {pid: api.bundle(pid) for pid in ctx["plugins"]}
        verify_context(ctx, bundles, w.pins)  # control: it would run now
        approval = next(a for a in w.alice.get_plugin(w.plugin)["approvals"] if not a["revoked_at"])
        w.alice.revoke_approval(w.plugin, approval["id"])
        with pytest.raises(JobFailed) as failed:
            verify_context(api.context(job["id"]), bundles, w.pins)
    assert failed.value.error_class == "approval_or_policy"


FORBIDDEN_SPECS = {
    "network at the top": "network = true\n",
    "network mode in outputs": '[outputs]\nnetwork_mode = "host"\n',
    "memory limit": 'memory = "64g"\n',
    "timeout": "timeout = 999999\n",
    "privileged": "privileged = true\n",
    "image": 'image = "attacker/image:latest"\n',
    "mounts": 'mounts = ["/var/run/docker.sock:/var/run/docker.sock"]\n',
    "env": '[env]\nLD_PRELOAD = "/tmp/x.so"\n',
    "capabilities in a step": 'cap_add = ["SYS_ADMIN"]\n',
    "pids limit": "pids_limit = 0\n",
    "runtime": 'runtime = "runc"\n',
}


@pytest.mark.parametrize("attack", sorted(FORBIDDEN_SPECS))
def test_a_job_spec_cannot_loosen_isolation(world: SimpleNamespace, attack: str) -> None:
    w = world
    base = spec(w, w.plugin, w.ds_a)
    extra = FORBIDDEN_SPECS[attack]
    if attack == "capabilities in a step":
        evil = base.replace("[[steps]]\n", "[[steps]]\n" + extra, 1)
    elif extra.startswith("[outputs]"):
        evil = base.replace("[outputs]\n", extra, 1)
    elif extra.startswith("["):
        evil = base + extra
    else:
        evil = extra + base
    with pytest.raises(ValidationError):
        parse_jobspec(evil)
    with pytest.raises(ValidationError):
        w.eve.submit_job(evil)
    assert parse_jobspec(base).name  # control
    assert {"network", "memory", "timeout", "privileged", "image", "mounts"} <= FORBIDDEN_KEYS


def test_differencing_queries_run_out_of_dp_budget(room: Any, tmp_path: Path) -> None:
    """Repeat a small-difference aggregate: each job spends epsilon, the budget runs out, the next is refused."""
    w = SimpleNamespace(room=room, tmp=tmp_path, n=0)
    room_key = crypto.generate_keypair()
    httpx.post(
        room.url + "/runner/register",
        headers={"authorization": f"Bearer {room.runner_token}"},
        json={"enc_public": room_key.enc_public, "sign_public": room_key.sign_public},
    ).raise_for_status()
    w.alice = room.org("alice-dp", "owner")
    w.eve = room.org(ANALYST, "analyst")
    ds = upload_dataset(
        w.alice,
        tmp_path,
        "alice.dp",
        "dp",
        ANALYST,
        extra_privacy="epsilon = 1.0",
        extra="[columns.spend]\nbounds = [0, 5000]\n",
    )
    plugin = submit(w, AGGREGATE_CODE)
    w.alice.decide_plugin(plugin, ds)
    accepted = [w.eve.submit_job(spec(w, plugin, ds, epsilon=0.45)) for _ in range(2)]  # control: within budget
    assert [j["status"] for j in accepted] == ["queued", "queued"]
    with pytest.raises(PolicyError, match="budget"):
        w.eve.submit_job(spec(w, plugin, ds, epsilon=0.45))
    with pytest.raises(PolicyError, match="budget"):
        w.eve.submit_job(spec(w, plugin, ds, epsilon=0.2))
    w.eve.cancel_job(accepted[0]["id"])  # a cancel refunds nothing: whether a job ends can depend on the data
    with pytest.raises(PolicyError, match="budget"):
        w.eve.submit_job(spec(w, plugin, ds, epsilon=0.45))
    assert w.eve.submit_job(spec(w, plugin, ds, epsilon=0.1))["status"] == "queued"  # control: 0.1 is left


# --------------------------------------------------------------------------- a malicious operator (API store)


def _operator_sql(room: Any, sql: str, *args: Any) -> None:
    with room.store.tx() as conn:
        conn.execute(sql, args)


def _refused(call: Any, error: type[Exception]) -> bool:
    try:
        call()
    except error:
        return True
    return False


def _context(w: SimpleNamespace, job_id: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    from cleanroom.runner.api_client import RunnerAPI

    with RunnerAPI(w.room.url, w.room.runner_token) as api:
        ctx = api.context(job_id)
        return ctx, {pid: api.bundle(pid) for pid in ctx["plugins"]}


def test_an_operator_inserted_approval_without_a_valid_signature_fails_on_the_runner(world: SimpleNamespace) -> None:
    from cleanroom.errors import JobFailed

    w = world
    target = submit(w, AGGREGATE_CODE)
    p = payload(w, w.alice, target, w.ds_a)
    alice_id = w.alice.whoami()["id"]
    _operator_sql(
        w.room,
        "INSERT INTO approvals (id, plugin_id, dataset, policy_version, dataset_sha256, org_id,"
        " decision, reason, payload, signature, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        "apr_forged",
        target,
        w.ds_a,
        p["policy_version"],
        p["dataset_sha256"],
        alice_id,
        "approve",
        "",
        json.dumps(p),
        crypto.generate_keypair().sign(p),
        time.time(),
    )
    job = w.eve.submit_job(spec(w, target, w.ds_a))  # the API trusts its own table...
    ctx, bundles = _context(w, job["id"])
    with pytest.raises(JobFailed) as failed:  # ...the runner checks the owner's signature and refuses
        verify_context(ctx, bundles, w.pins)
    assert failed.value.error_class == "approval_or_policy"
    good = w.eve.submit_job(spec(w, w.plugin, w.ds_a))
    verify_context(*_context(w, good["id"]), w.pins)  # control: a genuinely approved job passes


def test_an_operator_swapping_plugin_code_fails_on_the_runner(world: SimpleNamespace) -> None:
    from cleanroom.errors import JobFailed

    w = world
    job = w.eve.submit_job(spec(w, w.plugin, w.ds_a))
    ctx, bundles = _context(w, job["id"])
    verify_context(ctx, bundles, w.pins)  # control
    swapped = {pid: data.replace(b"group_by", b"groupXby") for pid, data in bundles.items()}
    with pytest.raises(JobFailed) as failed:
        verify_context(ctx, swapped, w.pins)
    assert failed.value.error_class == "integrity_error"
    forged_ctx = copy.deepcopy(ctx)
    forged_ctx["datasets"][0]["policy"]["privacy"]["k"] = 2  # a weaker policy under the old hash
    with pytest.raises(JobFailed):
        verify_context(forged_ctx, bundles, w.pins)


def test_an_operator_rewriting_a_policy_version_fails_on_the_runner(world: SimpleNamespace) -> None:
    """W3: approvals are signed for the policy's content hash, not only its version number."""
    from cleanroom.errors import JobFailed
    from cleanroom.policy import Policy

    w = world
    ds = w.alice.get_dataset(w.ds_a)
    before = w.eve.submit_job(spec(w, w.plugin, w.ds_a))
    verify_context(*_context(w, before["id"]), w.pins)  # control: under the signed policy it runs
    weaker = copy.deepcopy(ds["policy"])
    weaker["privacy"]["k"] = 2
    weaker["release"]["recipients"] = sorted({*weaker["release"]["recipients"], "operator-org"})
    _operator_sql(
        w.room,
        "UPDATE policies SET policy = ?, sha256 = ? WHERE dataset = ? AND version = ?",
        json.dumps(weaker, sort_keys=True, separators=(",", ":")),
        Policy.from_dict(weaker).sha256(),
        w.ds_a,
        ds["policy_version"],
    )
    job = w.eve.submit_job(spec(w, w.plugin, w.ds_a))
    ctx, bundles = _context(w, job["id"])
    assert ctx["datasets"][0]["policy"]["privacy"]["k"] == 2  # the API now serves the weaker policy...
    with pytest.raises(JobFailed) as failed:  # ...and the runner finds no approval signed for it
        verify_context(ctx, bundles, w.pins)
    assert failed.value.error_class == "approval_or_policy"


def test_an_approval_for_another_policy_text_is_refused_by_the_api(world: SimpleNamespace) -> None:
    w = world
    target = submit(w, AGGREGATE_CODE)
    p = payload(w, w.alice, target, w.ds_a, policy_sha256="0" * 64)
    with pytest.raises(Conflict, match="another policy text"):
        post_approval(w.alice, target, p, w.alice.keys().sign(p))
    good = payload(w, w.alice, target, w.ds_a)  # control
    assert post_approval(w.alice, target, good, w.alice.keys().sign(good))["decision"] == "approve"


def test_an_operator_swapping_an_owners_signing_key_fails_on_the_runner(world: SimpleNamespace) -> None:
    """W4: the runner pins each owner's signing key on first sight and refuses a changed one."""
    from cleanroom.errors import JobFailed

    w = world
    first = w.eve.submit_job(spec(w, w.plugin, w.ds_a))
    verify_context(*_context(w, first["id"]), w.pins)  # the runner has seen alice's genuine key
    assert set(w.pins.pinned()) == {"alice-bank"}
    target = submit(w, AGGREGATE_CODE)
    operator_key = crypto.generate_keypair()
    p = payload(w, w.alice, target, w.ds_a)
    alice_id = w.alice.whoami()["id"]
    _operator_sql(w.room, "UPDATE orgs SET sign_public = ? WHERE id = ?", operator_key.sign_public, alice_id)
    _operator_sql(
        w.room,
        "INSERT INTO approvals (id, plugin_id, dataset, policy_version, dataset_sha256, org_id,"
        " decision, reason, payload, signature, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        "apr_operator",
        target,
        w.ds_a,
        p["policy_version"],
        p["dataset_sha256"],
        alice_id,
        "approve",
        "",
        json.dumps(p),
        operator_key.sign(p),
        time.time(),
    )
    job = w.eve.submit_job(spec(w, target, w.ds_a))
    with pytest.raises(JobFailed) as failed:
        verify_context(*_context(w, job["id"]), w.pins)
    assert failed.value.error_class == "integrity_error" and "pinned" in failed.value.message
    # control: the forged approval is otherwise perfect; a runner that never saw alice's key would accept it
    # (trust on first use is the limit), and so would this runner once its operator drops the pin
    verify_context(*_context(w, job["id"]), KeyPins(w.tmp / "fresh-runner"))
    w.pins.forget("alice-bank")
    verify_context(*_context(w, job["id"]), w.pins)


def test_a_signed_key_rotation_moves_the_runners_pin_and_a_forged_one_does_not(world: SimpleNamespace) -> None:
    from cleanroom.errors import JobFailed

    w = world
    first = w.eve.submit_job(spec(w, w.plugin, w.ds_a))
    verify_context(*_context(w, first["id"]), w.pins)  # pins alice's first key
    before = w.alice.keys()
    old_release = crypto.encrypt_bytes(b"an earlier release", [before.enc_public])
    rotated = w.alice.rotate_keys()
    assert rotated["approvals_revoked"] >= 1 and rotated["keys"]["sign_public"] != before.sign_public
    with pytest.raises(PolicyError, match="not approved"):
        w.eve.submit_job(spec(w, w.plugin, w.ds_a))  # approvals signed with the old key are void
    assert crypto.decrypt_bytes(old_release, w.alice.keys()) == b"an earlier release"  # old key kept for reading
    w.alice.decide_plugin(w.plugin, w.ds_a)  # approve again, with the new key
    job = w.eve.submit_job(spec(w, w.plugin, w.ds_a))
    verify_context(*_context(w, job["id"]), w.pins)  # the runner followed the signed chain
    assert w.pins.pinned()["alice-bank"] == crypto.fingerprint(w.alice.keys().sign_public)

    # an operator forges a rotation to its own key: it cannot sign as alice's current key
    operator_key = crypto.generate_keypair()
    alice_id = w.alice.whoami()["id"]
    p = {
        "type": "key-rotation",
        "org": "alice-bank",
        "old_sign_public": w.alice.keys().sign_public,
        "new_enc_public": operator_key.enc_public,
        "new_sign_public": operator_key.sign_public,
        "issued_at": time.time(),
    }
    _operator_sql(
        w.room,
        "INSERT INTO key_rotations (org_id, payload, old_signature, new_signature, created_at) VALUES (?,?,?,?,?)",
        alice_id,
        json.dumps(p),
        operator_key.sign(p),
        operator_key.sign(p),
        time.time(),
    )
    _operator_sql(w.room, "UPDATE orgs SET sign_public = ? WHERE id = ?", operator_key.sign_public, alice_id)
    target = submit(w, AGGREGATE_CODE)
    forged = payload(w, w.alice, target, w.ds_a)
    _operator_sql(
        w.room,
        "INSERT INTO approvals (id, plugin_id, dataset, policy_version, dataset_sha256, org_id,"
        " decision, reason, payload, signature, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        "apr_forged_rot",
        target,
        w.ds_a,
        forged["policy_version"],
        forged["dataset_sha256"],
        alice_id,
        "approve",
        "",
        json.dumps(forged),
        operator_key.sign(forged),
        time.time(),
    )
    job = w.eve.submit_job(spec(w, target, w.ds_a))
    with pytest.raises(JobFailed) as failed:
        verify_context(*_context(w, job["id"]), w.pins)
    assert failed.value.error_class == "integrity_error" and "pinned" in failed.value.message


def test_key_rotation_statements_are_checked_by_the_api(world: SimpleNamespace) -> None:
    w = world
    old = w.alice.keys()
    new = crypto.generate_keypair()
    p = {
        "type": "key-rotation",
        "org": "alice-bank",
        "old_sign_public": old.sign_public,
        "new_enc_public": new.enc_public,
        "new_sign_public": new.sign_public,
        "issued_at": time.time(),
    }

    def send(payload: dict[str, Any], old_sig: str, new_sig: str) -> Any:
        return w.alice.post(
            "/orgs/me/keys/rotate", json={"payload": payload, "old_signature": old_sig, "new_signature": new_sig}
        )

    with pytest.raises(IntegrityError):
        send(p, new.sign(p), new.sign(p))  # not signed by the registered key
    with pytest.raises(IntegrityError):
        send(p, old.sign(p), old.sign(p))  # the new key's holder did not sign
    with pytest.raises(PermissionDenied):
        send({**p, "org": "bob-retail"}, old.sign({**p, "org": "bob-retail"}), new.sign({**p, "org": "bob-retail"}))
    stale = {**p, "issued_at": time.time() - 3600}
    with pytest.raises(ValidationError, match="stale"):
        send(stale, old.sign(stale), new.sign(stale))
    assert w.alice.get("/orgs/me")["keys"]["sign_public"] == old.sign_public  # nothing changed
    assert send(p, old.sign(p), new.sign(p))["keys"]["sign_public"] == new.sign_public  # control
    with pytest.raises(Conflict):
        send(p, old.sign(p), new.sign(p))  # a replay names a key that is no longer registered
