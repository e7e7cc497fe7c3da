"""The `cleanroom` command as users run it (a subprocess per command), through a real room and runner."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cleanroom import scenario
from cleanroom.profile import Profile

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "from cleanroom.cli import main; main()"]


def run(
    *args: str, profile: str | None = None, ok: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CLEANROOM_") or k in ("CLEANROOM_HOME", "CLEANROOM_SANDBOX_IMAGE")
    }
    cmd = CLI + (["--profile", profile] if profile else []) + list(args)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, input=stdin, timeout=600)
    if ok:
        assert done.returncode == 0, f"{args}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    return done


def test_errors_are_one_line_with_a_hint_and_no_traceback(room):
    Profile(name="admin", url=room.url, token="crt_bad.token").save()
    done = run("dataset", "list", profile="admin", ok=False)
    assert done.returncode == 1
    assert "error: the token is not valid" in done.stderr and "Traceback" not in done.stderr
    assert "hint:" in done.stderr


@pytest.mark.docker
@pytest.mark.slow
def test_cli_scenario(room, runner, tmp_path):
    run("profile", "save", "admin", "--url", room.url, "--token-stdin", stdin=room.admin_token + "\n")
    for name, role in (("retailer", "owner"), ("bank", "owner"), ("acme-analytics", "analyst")):
        run("org", "create", name, "--role", role, "--save-profile", name, profile="admin")
    files = scenario.write_data(tmp_path / "data", 1000)
    secret = tmp_path / "room-join.key"
    run("join-secret", "new", str(secret))
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    for org, key, name in (("retailer", "retail", "retail.purchases"), ("bank", "bank", "bank.customers")):
        run(
            "dataset",
            "upload",
            str(files[key]),
            "--name",
            name,
            "--policy",
            str(files[f"{key}_policy"]),
            "--id-column",
            "customer_id",
            "--join-secret",
            str(secret),
            profile=org,
        )
    listed = json.loads(run("--json", "dataset", "list", profile="acme-analytics").stdout)
    assert {d["name"] for d in listed} == {"retail.purchases", "bank.customers"}
    # `plugin test` on the mock data: a plugin that works exits 0, one that fails exits 1 (control first)
    image = ["--image", os.environ.get("CLEANROOM_SANDBOX_IMAGE", "cleanroom-sandbox:latest")]
    tested = run(
        "--json",
        "plugin",
        "test",
        str(REPO / "plugins" / "one-hot"),
        "--dataset",
        "retail.purchases",
        "--params",
        '{"columns": ["category"]}',
        *image,
        profile="acme-analytics",
    )
    assert json.loads(tested.stdout)["ok"] is True
    human = run(
        "plugin",
        "test",
        str(REPO / "plugins" / "one-hot"),
        "--dataset",
        "retail.purchases",
        "--params",
        '{"columns": ["category"]}',
        *image,
        profile="acme-analytics",
    )
    assert "worked on mock data" in human.stderr and "first rows (mock data)" in human.stdout
    assert "category_grocery" in human.stdout and not human.stdout.lstrip().startswith("{")
    failing = run(
        "--json",
        "plugin",
        "test",
        str(REPO / "plugins" / "one-hot"),
        "--dataset",
        "retail.purchases",
        "--params",
        '{"columns": ["no_such_column"]}',
        *image,
        profile="acme-analytics",
        ok=False,
    )
    assert failing.returncode == 1 and json.loads(failing.stdout)["ok"] is False

    ids = {}
    for plugin in scenario.PLUGINS:
        out = json.loads(
            run("--json", "plugin", "submit", str(REPO / "plugins" / plugin), profile="acme-analytics").stdout
        )
        ids[plugin] = out["id"]
    shown = run("plugin", "show", ids["impute"], profile="retailer").stdout
    assert "plugin.py" in shown and "   1  " in shown  # code with line numbers
    for pid in ids.values():
        run("plugin", "approve", pid, "--dataset", "retail.purchases", profile="retailer")
        run("plugin", "approve", pid, "--dataset", "bank.customers", profile="bank")
    spec = tmp_path / "spend-model.toml"
    spec.write_text(scenario.job_spec(ids))
    job = run("job", "submit", str(spec), profile="acme-analytics").stdout.strip()
    waited = run("job", "wait", job, profile="retailer")  # an input owner follows the phases and the end
    assert "succeeded" in waited.stderr
    # the owner reviews the content itself, decrypted on its machine, before approving; the recipient
    # cannot fetch the held release yet (control for the owner's download)
    review = tmp_path / "review"
    run("result", "get", job, "-o", str(review), profile="retailer")
    assert (review / "model_card.md").exists() and (review / "metrics.json").exists()
    held = run("result", "get", job, "-o", str(tmp_path / "early"), profile="acme-analytics", ok=False)
    assert held.returncode == 1 and not (tmp_path / "early" / "model.skops").exists()
    run("release", "approve", job, profile="retailer")
    room.end_time_budget(job)  # the analyst learns the outcome at the job's outcome time: cut short here
    waited = run("job", "wait", job, profile="acme-analytics")
    assert "released" in waited.stderr and "succeeded" not in waited.stderr
    out = tmp_path / "out"
    run("result", "get", job, "-o", str(out), profile="acme-analytics")
    assert (out / "model.skops").exists() and (out / "metrics.json").exists()
    verified = run("receipt", "verify", str(out / "receipt.json"), profile="acme-analytics")
    assert "receipt valid" in verified.stderr
    verified = run("receipt", "verify", str(out), profile="acme-analytics")  # the signature and the files
    assert "receipt valid" in verified.stderr and "match it" in verified.stderr
    run("model", "predict", str(out / "model.skops"), str(files["new_customers"]), "-o", str(tmp_path / "p.csv"))
    assert (tmp_path / "p.csv").read_text().startswith("customer_id,prediction")  # the id carried through
    shown = run("release", "show", job, profile="acme-analytics").stdout
    assert "release checks" in shown and "model.skops" in shown and '"manifest"' not in shown

    logs = run("job", "logs", job, profile="retailer").stdout
    assert "compute phase" in logs
    denied = run("job", "logs", job, profile="acme-analytics", ok=False)
    assert denied.returncode == 1 and "owner" in denied.stderr

    assert "intact" in run("audit", "verify", profile="bank").stderr
    conn = sqlite3.connect(room.store.db_path)
    seq = conn.execute("SELECT MIN(seq) FROM audit WHERE actor = 'bank'").fetchone()[0]  # one the bank reads
    conn.execute("UPDATE audit SET actor = 'mallory' WHERE seq = ?", (seq,))
    conn.commit()
    broken = run("audit", "verify", profile="bank", ok=False)
    assert broken.returncode == 1 and f"event {seq}" in broken.stderr


# -- the first hour: mistakes get a message that names the fix, and change nothing -------------------
def owner_profile(room, name="retailer"):
    """An owner org with a saved profile (and the scenario's recipient org), as `org create --save-profile`."""
    import httpx

    from cleanroom.crypto import generate_keypair

    keys = generate_keypair()
    httpx.post(
        room.url + "/runner/register",
        headers={"authorization": f"Bearer {room.runner_token}"},
        json={"enc_public": keys.enc_public, "sign_public": keys.sign_public},
    ).raise_for_status()
    token = room.admin.create_org(name, ["owner"])["token"]
    room.admin.create_org("acme-analytics", ["analyst"])
    Profile(name=name, url=room.url, token=token).save()
    return name


def test_a_mistyped_profile_names_it_instead_of_asking_for_a_token(room):
    from cleanroom.profile import home

    profile = owner_profile(room)
    done = run("dataset", "list", profile="retialer", ok=False)
    said = " ".join(done.stderr.split())  # (the console wraps long lines)
    assert done.returncode == 1 and "no profile named 'retialer'" in said, said
    assert "bearer token" not in said and "did you mean --profile retailer?" in said
    assert "cleanroom profile save retialer" in said
    assert not (home() / "profiles" / "retialer.json").exists()  # nothing stored
    assert json.loads(run("--json", "dataset", "list", profile=profile).stdout) == []  # the control


def test_policy_errors_keep_their_table_names_and_upload_nothing(room, tmp_path):
    profile = owner_profile(room)
    files = scenario.write_data(tmp_path / "data", 100)
    secret = tmp_path / "join.key"
    run("join-secret", "new", str(secret))
    bad = tmp_path / "policy.toml"
    bad.write_text("[release]\nrecipients = ['acme-analytics']\n[privacy]\nepsilom = 1\n")
    args = [
        "dataset",
        "upload",
        str(files["retail"]),
        "--name",
        "retail.purchases",
        "--id-column",
        "customer_id",
        "--join-secret",
        str(secret),
    ]
    done = run(*args, "--policy", str(bad), profile=profile, ok=False)
    said = " ".join(done.stderr.split())
    assert done.returncode == 1
    assert "unknown key 'epsilom' in [privacy] at line 4; did you mean 'epsilon'?" in said, said
    assert json.loads(run("--json", "dataset", "list", profile=profile).stdout) == []
    good = tmp_path / "good.toml"  # the control
    good.write_text("[release]\nrecipients = ['acme-analytics']\n[privacy]\nepsilon = 1\n")
    said = " ".join(run(*args, "--policy", str(good), profile=profile).stderr.split())
    assert "dropped column 'email'" in said and "id column 'customer_id'" in said, said  # says what it did


def test_upload_refuses_a_mistyped_column_with_the_lines_and_the_override(room, tmp_path):
    profile = owner_profile(room)
    data = tmp_path / "insurance.csv"
    data.write_text(
        "person,plan,charges\n"
        + "".join(f"P{i:04d},{'ABCD'[i % 4]},{'see notes' if i == 7 else 1000 + i}\n" for i in range(100))
    )
    policy = tmp_path / "policy.toml"
    policy.write_text("[release]\nrecipients = ['acme-analytics']\n")
    secret = tmp_path / "join.key"
    run("join-secret", "new", str(secret))
    args = [
        "dataset",
        "upload",
        str(data),
        "--name",
        "ins.claims",
        "--policy",
        str(policy),
        "--join-secret",
        str(secret),
    ]
    done = run(*args, "--id-column", "person", profile=profile, ok=False)
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "line 9: 'see notes'" in said, said
    assert "--text-column charges" in said
    wrong_id = " ".join(
        run(*args, "--id-column", "plan", "--text-column", "charges", profile=profile, ok=False).stderr.split()
    )
    assert "only 4 distinct values in 100 rows" in wrong_id and "--allow-few-ids" in wrong_id, wrong_id
    assert json.loads(run("--json", "dataset", "list", profile=profile).stdout) == []  # nothing stored
    run(*args, "--id-column", "person", "--text-column", "charges", profile=profile)  # told: the control
    assert [d["name"] for d in json.loads(run("--json", "dataset", "list", profile=profile).stdout)] == ["ins.claims"]

    # withdraw asks first: "n" changes nothing; --yes withdraws, and the owner's list shows when
    kept = run("dataset", "withdraw", "ins.claims", profile=profile, ok=False, stdin="n\n")
    assert kept.returncode == 1 and "Aborted" in kept.stderr
    assert json.loads(run("--json", "dataset", "list", profile=profile).stdout)[0]["withdrawn_at"] is None
    said = " ".join(run("dataset", "withdraw", "ins.claims", "--yes", profile=profile).stderr.split())
    assert "withdrew ins.claims" in said and "admin sweep" in said, said
    assert json.loads(run("--json", "dataset", "list", profile=profile).stdout)[0]["withdrawn_at"] is not None


def test_a_bootstrap_token_without_the_token_shape_stops_the_api_before_it_stores_anything(tmp_path):
    import secrets

    from cleanroom.api.app import create_app
    from cleanroom.client import Client
    from cleanroom.settings import Settings
    from tests.conftest import Room, free_port

    data = tmp_path / "api-data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEANROOM_") or k == "CLEANROOM_HOME"}
    env.update(CLEANROOM_DATA_DIR=str(data), CLEANROOM_PORT=str(free_port()), CLEANROOM_BOOTSTRAP_TOKEN="changeme")
    done = subprocess.run(CLI + ["serve"], env=env, capture_output=True, text=True, timeout=60)
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "CLEANROOM_BOOTSTRAP_TOKEN is not a cleanroom token" in said, said
    assert "secrets.token_hex(8)" in said and "Traceback" not in said
    assert not data.exists()  # no database, no admin org with an empty secret
    with pytest.raises(Exception, match="not a cleanroom token"):
        create_app(Settings(data_dir=data, bootstrap_token="crt_0123456789abcdef."))  # an empty secret
    token = f"crt_{secrets.token_hex(8)}.{secrets.token_urlsafe(32)}"  # the control: a well-formed one works
    room = Room(tmp_path / "ok-data", bootstrap_token=token)
    try:
        assert Client(room.url, token, profile=Profile(name="boot")).whoami()["name"] == "admin"
    finally:
        room.stop()
