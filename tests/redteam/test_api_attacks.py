"""Malicious API clients and bundles, each next to a harmless control that succeeds.

These go through the real API over HTTP; the ones that need a job use a real runner and sandboxes.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from cleanroom import crypto, scenario
from cleanroom.errors import (
    BundleError,
    Conflict,
    IntegrityError,
    NotFound,
    PermissionDenied,
    PolicyError,
    TooLarge,
    ValidationError,
)
from tests.scenario_setup import setup_scenario

REPO = Path(__file__).resolve().parents[2]


def _register_room_key(room):
    key = crypto.generate_keypair()
    httpx.post(
        room.url + "/runner/register",
        headers={"authorization": f"Bearer {room.runner_token}"},
        json={"enc_public": key.enc_public, "sign_public": key.sign_public},
    ).raise_for_status()


def _world(room, tmp_path, with_key=True):
    if with_key:
        _register_room_key(room)
    retailer, bank, analyst, _, ids = setup_scenario(room.org, tmp_path, 1000, approve=True)
    return retailer, bank, analyst, ids


@pytest.fixture
def world(room, tmp_path):
    return _world(room, tmp_path)


def _signed(client, plugin_id, dataset, **changes):
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


def test_plugin_code_changed_after_approval_cannot_run(world, tmp_path):
    retailer, bank, analyst, ids = world
    assert analyst.submit_job(scenario.job_spec(ids))["status"] == "queued"  # control
    folder = tmp_path / "impute"
    shutil.copytree(REPO / "plugins" / "impute", folder)
    (folder / "plugin.py").write_text((folder / "plugin.py").read_text() + "\nLEAK = True\n")
    manifest = folder / "cleanroom-plugin.toml"
    manifest.write_text(manifest.read_text().replace('version = "1.0.0"', 'version = "1.0.1-evil"'))
    evil = analyst.submit_plugin(folder)["id"]
    with pytest.raises(PolicyError, match="not approved"):
        analyst.submit_job(scenario.job_spec({**ids, "impute": evil}))


def test_same_name_and_version_with_other_code_is_refused(world, tmp_path):
    _, _, analyst, ids = world
    folder = tmp_path / "impute"
    shutil.copytree(REPO / "plugins" / "impute", folder)
    (folder / "plugin.py").write_text((folder / "plugin.py").read_text() + "\n# swapped\n")
    with pytest.raises(Conflict, match="bump the version|exists already"):
        analyst.submit_plugin(folder)
    assert analyst.submit_plugin(REPO / "plugins" / "impute")["id"] == ids["impute"]  # control: same bytes


def test_policy_loosened_after_approval_voids_the_approvals(world):
    retailer, _, analyst, ids = world
    retailer.update_policy("retail.purchases", scenario.RETAIL_POLICY.replace("k = 10", "k = 2"))
    with pytest.raises(PolicyError, match="not approved"):
        analyst.submit_job(scenario.job_spec(ids))


def test_forged_approval_signatures_are_refused(world):
    retailer, bank, _, ids = world
    pid = ids["impute"]
    p = _signed(retailer, pid, "retail.purchases")
    for signer in (crypto.generate_keypair(), bank.keys()):
        with pytest.raises(IntegrityError):
            retailer.post(f"/plugins/{pid}/approvals", json={"payload": p, "signature": signer.sign(p)})
    retailer.post(f"/plugins/{pid}/approvals", json={"payload": p, "signature": retailer.keys().sign(p)})


def test_approval_replayed_onto_another_dataset_or_plugin_is_refused(world):
    retailer, bank, _, ids = world
    pid, other = ids["impute"], ids["one-hot"]
    p = _signed(retailer, pid, "retail.purchases")
    sig = retailer.keys().sign(p)
    with pytest.raises(ValidationError, match="another plugin"):
        retailer.post(f"/plugins/{other}/approvals", json={"payload": p, "signature": sig})
    moved = {**p, "dataset": "bank.customers"}
    with pytest.raises(PermissionDenied):
        retailer.post(f"/plugins/{pid}/approvals", json={"payload": moved, "signature": sig})


def test_analyst_cannot_approve_its_own_plugin(world):
    _, _, analyst, ids = world
    pid = ids["impute"]
    with pytest.raises(PermissionDenied):
        analyst.post(
            f"/plugins/{pid}/approvals",
            json={"payload": _signed(analyst, pid, "retail.purchases"), "signature": analyst.keys().sign({})},
        )


@pytest.mark.parametrize(
    "knob",
    [
        "network = true",
        'image = "evil:latest"',
        "privileged = true",
        '[limits]\nmemory = "64g"',
        '[env]\nLD_PRELOAD = "/tmp/x.so"',
        'runtime = "runc"',
    ],
)
def test_job_spec_cannot_loosen_isolation(world, knob):
    _, _, analyst, ids = world
    spec = scenario.job_spec(ids)
    head, _, rest = spec.partition("[[inputs]]")
    with pytest.raises(ValidationError):
        analyst.submit_job(head + knob + "\n\n[[inputs]]" + rest)
    assert analyst.submit_job(spec)["status"] == "queued"  # control


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


MANIFEST = b'name = "x"\nversion = "1.0.0"\nkind = "preprocess"\nentry = "plugin.py"\n'


@pytest.mark.parametrize(
    "members",
    [
        [_file("cleanroom-plugin.toml", MANIFEST), _file("../../etc/cron.d/x", b"* * * * * root sh")],
        [_file("cleanroom-plugin.toml", MANIFEST), _file("/abs/plugin.py", b"")],
        [
            _file("cleanroom-plugin.toml", MANIFEST),
            (lambda i: (setattr(i, "type", tarfile.SYMTYPE), setattr(i, "linkname", "/etc/shadow"), (i, None))[-1])(
                tarfile.TarInfo("plugin.py")
            ),
        ],
        [_file("cleanroom-plugin.toml", MANIFEST), _file("plugin.py", b"\0" * (30 * 2**20))],
    ],
    ids=["zip-slip", "absolute", "symlink", "bomb"],
)
def test_hostile_bundles_are_refused_and_nothing_is_stored(room, members):
    analyst = room.org("acme-analytics", "analyst")
    archive = _tar(members)
    with pytest.raises((BundleError, ValidationError, TooLarge)) as err:
        analyst.post("/plugins", content=archive, headers={"content-type": "application/x-tar"})
    assert err.value.status_code in (400, 413)
    assert analyst.list_plugins() == []
    assert analyst.submit_plugin(REPO / "plugins" / "impute")["created"]  # control


def test_other_orgs_cannot_read_jobs_logs_or_releases_by_id(world, room):
    _, _, analyst, ids = world
    job = analyst.submit_job(scenario.job_spec(ids))
    rival = room.org("rival", "analyst")
    with pytest.raises(NotFound):
        rival.get_job(job["id"])
    with pytest.raises((NotFound, PermissionDenied)):
        rival.request("GET", f"/jobs/{job['id']}/logs")
    with pytest.raises(NotFound):
        rival.get_release(job["id"])
    for bad in ("../../etc/passwd", "job_%2e%2e", "x" * 5000):
        r = httpx.get(f"{room.url}/jobs/{bad}", headers={"authorization": f"Bearer {rival.token}"})
        assert r.status_code in (404, 414) and "Traceback" not in r.text
    assert analyst.get_job(job["id"])["id"] == job["id"]  # control


def test_runner_token_and_stolen_admin_routes(room, world):
    _, _, analyst, _ = world
    runner = {"authorization": f"Bearer {room.runner_token}"}
    assert httpx.get(room.url + "/datasets", headers=runner).status_code == 403
    assert (
        httpx.post(room.url + "/runner/claim", headers={"authorization": f"Bearer {analyst.token}"}).status_code == 403
    )
    assert (
        httpx.get(
            room.url + "/runner/datasets/retail.purchases/ciphertext",
            headers={"authorization": f"Bearer {analyst.token}"},
        ).status_code
        == 403
    )
    assert httpx.post(room.url + "/runner/claim", headers=runner).status_code == 200  # control


def test_room_key_takeover_is_refused(room):
    _register_room_key(room)
    other = crypto.generate_keypair()
    r = httpx.post(
        room.url + "/runner/register",
        headers={"authorization": f"Bearer {room.runner_token}"},
        json={"enc_public": other.enc_public, "sign_public": other.sign_public},
    )
    assert r.status_code == 409


def test_plaintext_upload_is_refused(room, tmp_path):
    _register_room_key(room)
    owner = room.org("retailer", "owner")
    plain = b"_pid,spend\nabc,1\n" * 10
    decl = owner.post(
        "/datasets/uploads",
        json={
            "name": "plain.data",
            "policy": "[privacy]\nk = 10\n",
            "row_count": 10,
            "mock": [],
            "dropped": [],
            "schema": {"columns": [{"name": "_pid", "type": "string"}]},
            "sha256": hashlib.sha256(plain).hexdigest(),
            "size": len(plain),
        },
    )
    with pytest.raises(ValidationError, match="age ciphertext"):
        owner.request("PUT", decl["put"], content=plain)
    assert owner.list_datasets() == []


# through the whole stack ------------------------------------------------------------------------


def _evil_plugin(tmp_path, name, kind, body):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "cleanroom-plugin.toml").write_text(
        f'name = "{name}"\nversion = "1.0.0"\nkind = "{kind}"\nentry = "plugin.py"\n'
    )
    (folder / "plugin.py").write_text("from cleanroom.hookspecs import hookimpl\n\n\n" + body)
    return folder


def _swap_step(spec, old_id, new_id):
    """The spec with the step of `old_id` replaced by a parameterless step of `new_id`."""
    import re

    return re.sub(
        r'\[\[steps\]\]\nplugin = "' + old_id + r'"\nparams = \{(?:[^{}]|\{[^{}]*\})*\}\n',
        f'[[steps]]\nplugin = "{new_id}"\n',
        spec,
    )


def _job_with(ids, extra_step_id, model=True, aggregates=True, params="{}"):
    spec = scenario.job_spec(ids)
    step = f'[[steps]]\nplugin = "{extra_step_id}"\nparams = {params}\n\n'
    return spec.replace("[[steps]]", step + "[[steps]]", 1)  # first: preprocess steps come first


@pytest.mark.docker
@pytest.mark.slow
def test_rows_smuggled_through_an_aggregate_or_a_model_are_not_released(room, runner, tmp_path):
    retailer, bank, analyst, ids = _world(room, tmp_path, with_key=False)
    per_row = _evil_plugin(
        tmp_path,
        "per-row-table",
        "analysis",
        "@hookimpl\ndef analysis_spec(columns, params):\n"
        "    return {'name': 'rows', 'group_by': ['_pid', 'spend'],"
        " 'metrics': [{'agg': 'count'}]}\n",
    )
    knn = _evil_plugin(
        tmp_path,
        "knn-model",
        "model",
        "@hookimpl\ndef model_spec(columns, params):\n"
        "    return {'estimator': 'k_neighbors_regressor', 'params': {'n_neighbors': 1},"
        " 'target': 'spend', 'features': None, 'task': 'regression'}\n",
    )
    evil = {p: analyst.submit_plugin(p)["id"] for p in (per_row, knn)}
    for pid in evil.values():
        retailer.decide_plugin(pid, "retail.purchases")
        bank.decide_plugin(pid, "bank.customers")
    spec = _swap_step(scenario.job_spec(ids), ids["group-aggregate"], evil[per_row])
    assert evil[per_row] in spec and ids["group-aggregate"] not in spec
    job = analyst.submit_job(spec)
    final = room.end_time_budget(job["id"])  # the admin's view: what happened
    assert final["status"] == "failed" and final["error_class"] == "release_check_failed"
    seen = analyst.wait_job(job["id"], timeout=300)  # the analyst's: only that nothing was released
    assert seen["status"] == "nothing_released" and seen["error_class"] is None
    assert "reason" not in seen and seen["release_id"] is None
    spec = _swap_step(scenario.job_spec(ids), ids["linear-model"], evil[knn])
    assert evil[knn] in spec
    with pytest.raises(PolicyError):  # k-neighbours is not in the retailer's estimator list...
        job = analyst.submit_job(spec)
        final = room.end_time_budget(job["id"])
        assert final["status"] == "failed"  # ...and if it were, the release phase would refuse it
        raise PolicyError("refused at release")
    ok = analyst.submit_job(scenario.job_spec(ids))  # control: the honest job still runs and releases
    assert room.end_time_budget(ok["id"])["status"] == "succeeded"


@pytest.mark.docker
@pytest.mark.slow
def test_exit_codes_and_error_messages_do_not_reach_the_analyst(room, runner, tmp_path):
    retailer, bank, analyst, ids = _world(room, tmp_path, with_key=False)
    leak = _evil_plugin(
        tmp_path,
        "exit-leak",
        "preprocess",
        "@hookimpl\ndef preprocess(df, params):\n    import os\n"
        "    if len(df) <= 100:\n        return df\n"  # the mock run's rows pass; the real ones fail
        "    raise RuntimeError('SECRET ' + str(df['spend'].iloc[0]))\n",
    )
    pid = analyst.submit_plugin(leak)["id"]
    retailer.decide_plugin(pid, "retail.purchases")
    bank.decide_plugin(pid, "bank.customers")
    job = analyst.submit_job(_job_with(ids, pid))
    final = room.end_time_budget(job["id"])  # the admin sees the class; the analyst sees nothing released
    assert final["status"] == "failed" and final["error_class"] == "plugin_error"
    seen = analyst.wait_job(job["id"], timeout=300)
    assert seen["status"] == "nothing_released" and seen["error_class"] is None and "reason" not in seen
    shown = httpx.get(f"{room.url}/jobs/{job['id']}", headers={"authorization": f"Bearer {analyst.token}"}).text
    assert "SECRET" not in shown and "plugin_error" not in shown
    assert "SECRET" in retailer.job_logs(job["id"])  # the owners (only) read the log, decrypted locally
    with pytest.raises(PermissionDenied):
        analyst.job_logs(job["id"])
