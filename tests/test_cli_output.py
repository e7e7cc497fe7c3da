"""What the CLI prints: tables and short summaries for people by default, the API's exact JSON with
--json, copy-paste commands with the user's --profile, and `model predict` on the recipient's machine.

The commands run in-process through click's CliRunner against a real API over HTTP (no Docker: a
finished job is reported through the runner's own routes, as test_authz_matrix does)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from click.testing import CliRunner, Result
from sklearn.linear_model import LinearRegression

from cleanroom import scenario
from cleanroom.cli import admin, base, data, jobs, plugins, room, server  # noqa: F401  (register commands)
from cleanroom.crypto import encrypt_bytes, generate_keypair
from cleanroom.profile import Profile
from tests.scenario_setup import setup_scenario


def spec(ids: dict[str, str]) -> str:
    """The scenario's job with a small charge: each dataset's lifetime budget (epsilon 3) covers every job here."""
    return scenario.job_spec(ids, epsilon=0.2)


def cli(*args: str, profile: str | None = None, ok: bool = True, stdin: str | None = None) -> Result:
    done = CliRunner().invoke(
        base.cli, [*(["--profile", profile] if profile else []), *args], input=stdin, prog_name="cleanroom"
    )
    if ok:
        assert done.exit_code == 0, f"{args}: {done.stdout[-2000:]} {done.stderr[-2000:]} {done.exception!r}"
    return done


def said(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines at the terminal's width


class World:
    def __init__(self, tmp: Path) -> None:
        from tests.conftest import Room

        self.home = tmp / "home"
        self.room = Room(tmp / "api-data")
        keys = generate_keypair()  # the runner's first start: the room key
        self.runner = {"authorization": f"Bearer {self.room.runner_token}"}
        httpx.post(
            self.room.url + "/runner/register",
            headers=self.runner,
            json={"enc_public": keys.enc_public, "sign_public": keys.sign_public},
        ).raise_for_status()
        self.retailer, self.bank, self.analyst, self.files, self.ids = setup_scenario(
            self.room.org, tmp, n=200, approve=True
        )
        for name, client in (("retailer", self.retailer), ("bank", self.bank), ("analyst", self.analyst)):
            Profile(name=name, url=self.room.url, token=client.token).save()
        Profile(name="admin", url=self.room.url, token=self.room.admin_token).save()
        self.releases = [self.finished_job(), self.finished_job(), self.finished_job()]

    def finished_job(self) -> dict[str, Any]:
        """A job that ran and produced `metrics.json`, held for the retailer's review."""
        job = self.analyst.submit_job(spec(self.ids))["id"]
        claimed = httpx.post(self.room.url + "/runner/claim", headers=self.runner).json()["job"]
        assert claimed == job, "setup: another job was queued"
        readers = [c.keys().enc_public for c in (self.analyst, self.retailer, self.bank)]
        plain = b'{"metrics": {"r2": 0.5}}'
        art = httpx.put(
            self.room.url + f"/runner/jobs/{job}/artifacts/metrics.json",
            headers=self.runner,
            content=encrypt_bytes(plain, readers),
        ).json()
        manifest = {
            "job_id": job,
            "outputs": {"metrics.json": {"sha256": hashlib.sha256(plain).hexdigest(), "bytes": len(plain)}},
            "checks": [{"name": "k", "passed": True, "detail": "every group holds 10 units"}],
            "epsilon_spent": 0.5,
            "recipient": "acme-analytics",
        }
        done = httpx.post(
            self.room.url + f"/runner/jobs/{job}/finish",
            headers=self.runner,
            json={
                "status": "succeeded",
                "reason": "",
                "release": {
                    "manifest": manifest,
                    "receipt": {"body": {}, "signature": "", "room_keys": {}},
                    "artifacts": {"metrics.json": {"blob": art["blob"], "size": art["size"]}},
                    "review_by": ["retail.purchases"],
                },
            },
        )
        done.raise_for_status()
        return {"job": job, "release": done.json()["release_id"], "ciphertext_size": art["size"]}


@pytest.fixture(scope="module")
def module_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("cli-output")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLEANROOM_HOME", str(tmp / "home"))
        for var in ("CLEANROOM_URL", "CLEANROOM_TOKEN", "CLEANROOM_PROFILE"):
            mp.delenv(var, raising=False)
        w = World(tmp)
        try:
            yield w
        finally:
            w.room.stop()


@pytest.fixture
def world(module_world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("CLEANROOM_HOME", str(module_world.home))  # the orgs' profiles and keys
    return module_world


# datasets ------------------------------------------------------------------------------------------


def test_dataset_show_prints_the_schema_as_a_table_and_the_policy_not_the_mock_rows(world):
    ds = world.analyst.get_dataset("retail.purchases")
    done = cli("dataset", "show", "retail.purchases", profile="analyst")
    text = done.stdout
    assert "schema" in text and "published (declared in the policy)" in text
    spend = next(line for line in text.splitlines() if " spend " in line)
    assert "number" in spend and "bounds [0.0, 2500.0]" in spend and "no" in spend  # nullable: no
    assert "domain east, north, south, west" in said(text) and "domain electronics, fashion" in said(text)
    assert "nullable=" not in text and "stats=" not in text and "{" not in text  # no raw dicts or JSON
    assert "differential privacy: epsilon 3, delta 1e-06" in said(text) and "k = 10" in text
    assert "recipients: acme-analytics; review: yes" in said(text)
    assert ds["sha256"] in text and re.search(r"^dropped before upload +email$", text, re.M)
    assert not any(row["_pid"][:12] in text for row in ds["mock"])  # the mock rows stay out by default
    assert len(text.splitlines()) < 40, text
    assert "cleanroom --profile analyst dataset show retail.purchases --mock 10" in said(done.stderr)
    # --mock N shows N of them (the control)
    shown = cli("dataset", "show", "retail.purchases", "--mock", "3", profile="analyst").stdout
    assert "mock rows (synthetic; 3 of 100)" in shown
    assert sum(row["_pid"][:8] in shown for row in ds["mock"]) == 3
    # --json: exactly the API's object
    assert json.loads(cli("--json", "dataset", "show", "retail.purchases", profile="analyst").stdout) == ds


def test_dataset_list_is_a_table_and_json_with_the_flag(world):
    human = cli("dataset", "list", profile="analyst").stdout
    assert "retail.purchases" in human and "bank.customers" in human and "┃" in human
    assert not human.lstrip().startswith("[")
    assert json.loads(cli("--json", "dataset", "list", profile="analyst").stdout) == world.analyst.list_datasets()


def test_whoami_and_room_info_are_summaries(world):
    me = world.analyst.whoami()
    human = cli("whoami", profile="analyst").stdout
    assert re.search(r"^org +acme-analytics$", human, re.M) and me["keys"]["fingerprint"] in human
    assert "{" not in human
    assert json.loads(cli("--json", "whoami", profile="analyst").stdout) == world.analyst.get("/orgs/me")
    info = cli("room", "info", profile="analyst").stdout
    assert world.room.url in info and world.analyst.room()["keys"]["fingerprint"] in info and "{" not in info
    assert json.loads(cli("--json", "room", "info", profile="analyst").stdout) == world.analyst.room()


# jobs and releases ---------------------------------------------------------------------------------


def test_job_status_is_a_summary_with_the_next_command(world):
    job = world.releases[0]["job"]
    done = cli("job", "status", job, profile="retailer")
    assert re.search(rf"^job +{job}$", done.stdout, re.M) and re.search(r"^status +succeeded$", done.stdout, re.M)
    assert "spec" not in done.stdout and "{" not in done.stdout
    assert f"cleanroom --profile retailer release show {job}" in said(done.stderr)
    assert json.loads(cli("--json", "job", "status", job, profile="retailer").stdout) == world.retailer.get_job(job)


def test_job_submit_prints_the_id_alone_and_the_wait_command_with_the_profile(world, tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(spec(world.ids))
    done = cli("job", "submit", str(path), profile="analyst")
    job = done.stdout.strip()
    assert re.fullmatch(r"job_\w+", job), done.stdout  # JOB=$(cleanroom job submit ...) still works
    assert f"next: follow it: cleanroom --profile analyst job wait {job}" in said(done.stderr)
    cancelled = cli("job", "cancel", job, profile="analyst").stdout
    assert cancelled.strip() == f"{job}: cancelled"
    # without --profile (the default profile), the hint has none either
    Profile(name="default", url=world.room.url, token=world.analyst.token).save()
    again = cli("job", "submit", str(path))
    assert f"next: follow it: cleanroom job wait {again.stdout.strip()}" in said(again.stderr)
    as_json = json.loads(cli("--json", "job", "cancel", again.stdout.strip(), profile="analyst").stdout)
    assert as_json == world.analyst.get_job(again.stdout.strip()) and as_json["status"] == "cancelled"


def test_error_hints_from_the_room_carry_the_profile(world, tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text(spec(world.ids).replace('group_by = ["region"]', 'group_by = ["regoin"]'))
    done = cli("job", "submit", str(path), profile="analyst", ok=False)
    assert done.exit_code == 1 and "regoin" in said(done.stderr)
    assert "cleanroom --profile analyst dataset show" in said(done.stderr), done.stderr
    # an admin's command in a hint is left alone: the owner cannot run it with their profile
    assert base.with_profile(
        base.State("retailer", False),
        "ask the admin (cleanroom org create X --role analyst), then cleanroom dataset policy",
    ) == ("ask the admin (cleanroom org create X --role analyst), then cleanroom --profile retailer dataset policy")
    assert base.with_profile(base.State(None, False), "run cleanroom job wait j") == "run cleanroom job wait j"


def test_release_show_is_a_summary_with_checks_and_the_content_sizes(world):
    ref = world.releases[0]
    rel = world.retailer.get_release(ref["job"])
    done = cli("release", "show", ref["job"], profile="retailer")
    text = done.stdout
    assert re.search(rf"^release +{ref['release']}$", text, re.M) and re.search(
        r"^waits for +retail.purchases$", text, re.M
    )
    assert "release checks" in text and "every group holds 10 units" in text and "passed" in text
    row = next(line for line in text.splitlines() if "metrics.json" in line)
    assert " 24 " in row and f" {ref['ciphertext_size']} " not in row  # the content's size, not the ciphertext's
    assert "receipt" not in text and '"manifest"' not in text
    hints = said(done.stderr)
    assert f"cleanroom --profile retailer result get {ref['job']} -o review/" in hints
    assert f"cleanroom --profile retailer release approve {ref['job']}" in hints
    assert json.loads(cli("--json", "release", "show", ref["job"], profile="retailer").stdout) == rel


def test_release_approve_prints_one_line_and_json_with_the_flag(world):
    from cleanroom.client import manifest_sha256

    first, second = world.releases[:2]
    done = cli("release", "approve", first["job"], profile="retailer")
    sha = manifest_sha256(world.retailer.get_release(first["job"])["manifest"])
    assert done.stdout == (f"approved release {first['release']} (sha256 {sha}); acme-analytics can download it\n"), (
        done.stdout
    )
    as_json = json.loads(cli("--json", "release", "approve", second["job"], profile="retailer").stdout)
    assert as_json == world.retailer.get_release(second["job"]) and as_json["downloadable"] is True


def test_release_reject_prints_one_line(world):
    third = world.releases[2]
    done = cli("release", "reject", third["job"], "--reason", "too detailed", profile="retailer")
    assert re.fullmatch(rf"rejected release {third['release']} \(sha256 [0-9a-f]{{64}}\)\n", done.stdout), done.stdout
    assert world.retailer.get_release(third["job"])["rejected_by"] == ["retail.purchases"]


def test_org_create_and_rotate_token_print_the_token_once_with_the_next_command(world):
    done = cli("org", "create", "insurer", "--role", "owner", "--save-profile", "insurer", profile="admin")
    token = re.search(r"^token \(shown once\): (crt_\S+)$", done.stdout, re.M)
    assert done.stdout.startswith("created org insurer (owner)") and token, done.stdout
    assert "next: act as it: cleanroom --profile insurer whoami" in said(done.stderr)
    assert Profile.load("insurer").token == token.group(1)
    rotated = cli("org", "rotate-token", profile="insurer")
    new = re.search(
        r"^new token for insurer \(shown once; its earlier tokens no longer work\): (crt_\S+)$", rotated.stdout, re.M
    )
    assert new and new.group(1) != token.group(1) and Profile.load("insurer").token == new.group(1)
    as_json = json.loads(cli("--json", "org", "create", "insurer-2", "--role", "analyst", profile="admin").stdout)
    assert as_json["org"]["name"] == "insurer-2" and as_json["token"].startswith("crt_")
    assert "give the token to the org" not in said(done.stderr)  # (only without --save-profile)


def test_plugin_reject_and_revoke_are_one_line_each(world):
    pid = world.ids["impute"]
    rejected = cli(
        "plugin", "reject", pid, "--dataset", "retail.purchases", "--reason", "not needed", profile="retailer"
    )
    assert re.fullmatch(rf"rejected plugin {pid} for retail.purchases \(decision apr_\w+\)\n", rejected.stdout)
    approval = json.loads(
        cli("--json", "plugin", "approve", pid, "--dataset", "retail.purchases", profile="retailer").stdout
    )
    revoked = cli("plugin", "revoke", pid, approval["id"], profile="retailer")
    assert revoked.stdout.startswith(f"revoked approval {approval['id']}")
    world.retailer.decide_plugin(pid, "retail.purchases")  # (the other tests need it approved)


def test_plugin_approve_and_list(world):
    pid = world.ids["clip"]
    done = cli("plugin", "approve", pid, "--dataset", "retail.purchases", profile="retailer")
    assert re.fullmatch(rf"approved plugin {pid} for retail.purchases \(approval apr_\w+\)\n", done.stdout)
    decision = json.loads(
        cli("--json", "plugin", "approve", pid, "--dataset", "retail.purchases", profile="retailer").stdout
    )
    assert decision["plugin_id"] == pid and decision["decision"] == "approve"
    listed = cli("plugin", "list", profile="retailer").stdout
    assert "clip" in listed and "┃" in listed
    assert json.loads(cli("--json", "plugin", "list", profile="retailer").stdout) == world.retailer.list_plugins()


def test_dataset_policy_prints_the_new_version_in_one_line(world, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text(scenario.BANK_POLICY.replace("k = 10", "k = 11"))
    done = cli("dataset", "policy", "bank.customers", str(policy), profile="bank")
    ds = world.bank.get_dataset("bank.customers")
    assert done.stdout.startswith(
        f"published policy v{ds['policy_version']} of bank.customers (sha256 {ds['policy_sha256']})"
    ), done.stdout
    assert len(done.stdout.strip().splitlines()) == 1
    for pid in world.ids.values():  # approvals under the old version no longer count: the other tests need them
        world.bank.decide_plugin(pid, "bank.customers")


def test_job_cost_hint_names_the_profile(world, tmp_path):
    path = tmp_path / "spend.toml"
    path.write_text(spec(world.ids))
    done = cli("job", "cost", str(path), profile="analyst")
    assert "would be admitted" in done.stdout and "charge: epsilon 0.2" in done.stdout
    assert f"next: submit it: cleanroom --profile analyst job submit {path}" in said(done.stderr)
    cost = json.loads(cli("--json", "job", "cost", str(path), profile="analyst").stdout)
    assert cost == world.analyst.job_cost(path.read_text())


# model predict ---------------------------------------------------------------------------------------


@pytest.fixture
def released_model(tmp_path: Path) -> Path:
    """A linear model trained on one-hot columns of `plan` (as the one-hot plugin makes them) and `age`."""
    rng = np.random.default_rng(0)
    plans = rng.choice(["basic", "gold"], 200)
    train = pd.DataFrame(
        {
            "age": rng.integers(18, 90, 200).astype(float),
            "plan_basic": (plans == "basic").astype("int8"),
            "plan_gold": (plans == "gold").astype("int8"),
        }
    )
    y = 2 * train["age"] + 100 * train["plan_gold"]
    path = tmp_path / "model.skops"
    path.write_bytes(sio.dumps(LinearRegression().fit(train, y)))
    return path


def new_people(tmp_path: Path, plans: list[str], name: str = "people.csv") -> Path:
    path = tmp_path / name
    pd.DataFrame(
        {
            "person": [f"P{i:03d}" for i in range(len(plans))],
            "age": [30.0 + i for i in range(len(plans))],
            "plan": plans,
            "notes": ["x"] * len(plans),
        }
    ).to_csv(path, index=False)
    return path


def test_model_predict_carries_the_id_column_through(released_model, tmp_path):
    out = tmp_path / "pred.csv"
    done = cli(
        "model", "predict", str(released_model), str(new_people(tmp_path, ["basic", "gold", "gold"])), "-o", str(out)
    )
    pred = pd.read_csv(out)
    assert list(pred.columns) == ["person", "prediction"]
    assert list(pred["person"]) == ["P000", "P001", "P002"]
    assert np.allclose(pred["prediction"], [60, 162, 164])
    assert "wrote 3 predictions" in said(done.stderr) and "beside person" in said(done.stderr)
    # --keep names the columns to carry instead
    cli(
        "model",
        "predict",
        str(released_model),
        str(new_people(tmp_path, ["gold"])),
        "-o",
        str(out),
        "--keep",
        "notes",
        "--keep",
        "age",
    )
    assert list(pd.read_csv(out).columns) == ["notes", "age", "prediction"]
    missing = cli(
        "model",
        "predict",
        str(released_model),
        str(new_people(tmp_path, ["gold"])),
        "-o",
        str(tmp_path / "none.csv"),
        "--keep",
        "nope",
        ok=False,
    )
    assert missing.exit_code == 1 and "no column 'nope' in the CSV to keep" in said(missing.stderr)
    assert not (tmp_path / "none.csv").exists()


def test_model_predict_refuses_an_unseen_category_naming_it_and_writes_nothing(released_model, tmp_path):
    out = tmp_path / "pred.csv"
    csv = new_people(tmp_path, ["basic", "gold", "platinum", "platinum"])
    done = cli("model", "predict", str(released_model), str(csv), "-o", str(out), ok=False)
    message = said(done.stderr)
    assert done.exit_code == 1 and "column 'plan' has the value 'platinum' at line 4" in message, message
    assert "'basic', 'gold'" in message and "--unseen ignore" in message and "Traceback" not in message
    assert not out.exists()
    # --unseen ignore scores them with all-zero indicators and says how many
    done = cli("model", "predict", str(released_model), str(csv), "-o", str(out), "--unseen", "ignore")
    assert "warning: 2 row(s) have a value of 'plan' the model never saw ('platinum')" in said(done.stderr)
    pred = pd.read_csv(out)
    assert list(pred["person"]) == ["P000", "P001", "P002", "P003"] and np.allclose(pred["prediction"][:2], [60, 162])
    # the control: only known values, no warning
    done = cli("model", "predict", str(released_model), str(new_people(tmp_path, ["gold", "basic"])), "-o", str(out))
    assert "warning" not in done.stderr


def test_model_predict_names_a_missing_feature_column(released_model, tmp_path):
    csv = tmp_path / "no_plan.csv"
    pd.DataFrame({"person": ["a"], "age": [40.0]}).to_csv(csv, index=False)
    done = cli("model", "predict", str(released_model), str(csv), "-o", str(tmp_path / "p.csv"), ok=False)
    message = said(done.stderr)
    assert done.exit_code == 1 and "the CSV lacks the model's feature columns: plan" in message, message
    assert "plan_basic, plan_gold" in message and "its columns: person, age" in message
    assert not (tmp_path / "p.csv").exists()


def test_model_predict_counts_unseen_values_in_the_catch_all_column(tmp_path):
    rng = np.random.default_rng(1)
    plans = rng.choice(["basic", "other"], 100)
    train = pd.DataFrame(
        {"plan_basic": (plans == "basic").astype("int8"), "plan_other": (plans == "other").astype("int8")}
    )
    model = tmp_path / "m.skops"
    model.write_bytes(sio.dumps(LinearRegression().fit(train, 10 * train["plan_other"])))
    out = tmp_path / "p.csv"
    done = cli("model", "predict", str(model), str(new_people(tmp_path, ["basic", "platinum"])), "-o", str(out))
    assert "warning" not in done.stderr  # the one-hot plugin's `other` column holds the categories it did not keep
    assert np.allclose(pd.read_csv(out)["prediction"], [0, 10])
