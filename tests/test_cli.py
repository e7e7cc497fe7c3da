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


def run(*args: str, profile: str | None = None, ok: bool = True,
        stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEANROOM_") or k in (
        "CLEANROOM_HOME", "CLEANROOM_SANDBOX_IMAGE")}
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
        run("dataset", "upload", str(files[key]), "--name", name, "--policy", str(files[f"{key}_policy"]),
            "--id-column", "customer_id", "--join-secret", str(secret), profile=org)
    listed = json.loads(run("--json", "dataset", "list", profile="acme-analytics").stdout)
    assert {d["name"] for d in listed} == {"retail.purchases", "bank.customers"}
    # `plugin test` on the mock data: a plugin that works exits 0, one that fails exits 1 (control first)
    image = ["--image", os.environ.get("CLEANROOM_SANDBOX_IMAGE", "cleanroom-sandbox:latest")]
    tested = run("--json", "plugin", "test", str(REPO / "plugins" / "one-hot"), "--dataset", "retail.purchases",
                 "--params", '{"columns": ["category"]}', *image, profile="acme-analytics")
    assert json.loads(tested.stdout)["ok"] is True
    failing = run("--json", "plugin", "test", str(REPO / "plugins" / "one-hot"), "--dataset", "retail.purchases",
                  "--params", '{"columns": ["no_such_column"]}', *image, profile="acme-analytics", ok=False)
    assert failing.returncode == 1 and json.loads(failing.stdout)["ok"] is False

    ids = {}
    for plugin in scenario.PLUGINS:
        out = json.loads(run("--json", "plugin", "submit", str(REPO / "plugins" / plugin),
                             profile="acme-analytics").stdout)
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
    assert (tmp_path / "p.csv").read_text().startswith("prediction")

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
