"""The privacy ledger and the dry run through the API (real HTTP, real SQLite, no runner needed)."""

from __future__ import annotations

import httpx
import pytest

from cleanroom import crypto, scenario
from cleanroom.errors import PermissionDenied, PolicyError
from tests.scenario_setup import setup_scenario


def register_room_key(room) -> None:
    """The room's key, registered as the runner would (no runner runs here: jobs stay queued)."""
    key = crypto.generate_keypair()
    httpx.post(
        room.url + "/runner/register",
        headers={"authorization": f"Bearer {room.runner_token}"},
        json={"enc_public": key.enc_public, "sign_public": key.sign_public},
    ).raise_for_status()


@pytest.fixture
def world(room, tmp_path):
    register_room_key(room)
    retailer, bank, analyst, files, ids = setup_scenario(room.org, tmp_path, n=300, approve=True)
    return room, retailer, bank, analyst, ids


def test_submission_charges_every_dp_input_with_the_per_job_cap_by_default(world):
    room, retailer, bank, analyst, ids = world
    before = analyst.dataset_budget("retail.purchases")
    assert (before["epsilon"], before["remaining_epsilon"], before["job_epsilon"]) == (3.0, 3.0, 1.0)
    job = analyst.submit_job(scenario.job_spec(ids))
    for name, owner in (("retail.purchases", retailer), ("bank.customers", bank)):
        budget = owner.dataset_budget(name)
        assert budget["spent_epsilon"] == pytest.approx(1.0) and budget["spent_delta"] == pytest.approx(1e-7)
        assert budget["remaining_epsilon"] == pytest.approx(2.0)
        assert [c["job_id"] for c in budget["charges"]] == [job["id"]]
        assert budget["charges"][0]["recipient"] == "acme-analytics"
    event = next(e for e in room.admin.audit_events() if e["action"] == "job.submitted")
    assert event["details"]["epsilon"] == 1.0 and event["details"]["delta"] == 1e-7


def test_budget_is_shown_to_the_owner_and_allowed_recipients_only(world, room):
    _, retailer, _, analyst, _ = world
    assert analyst.dataset_budget("retail.purchases")["recipient"]["org"] == "acme-analytics"
    assert "recipient" not in retailer.dataset_budget("retail.purchases")  # the owner sees every charge
    stranger = room.org("other-analytics", "analyst")
    with pytest.raises(PermissionDenied, match="shown to its owner and the orgs its policy releases to"):
        stranger.dataset_budget("retail.purchases")


def test_the_dry_run_shows_the_charge_and_the_noise_and_spends_nothing(world):
    _, retailer, _, analyst, ids = world
    cost = analyst.job_cost(scenario.job_spec(ids, epsilon=0.8))
    assert cost["admitted"] and cost["mode"] == "dp"
    plan = cost["plan"]
    assert plan["epsilon"] == 0.8 and plan["delta"] == 1e-7
    assert plan["parts"]["aggregates"]["epsilon"] == pytest.approx(0.4)
    metrics = plan["parts"]["metrics"]
    # spend bounds [0, 2500]: residuals clipped to +-250; 3 Laplace queries at epsilon 0.4
    assert metrics["noise_scale"]["sum_abs_residual"] == pytest.approx(250 * 3 / 0.4)
    assert metrics["interval_95"]["count"] == pytest.approx(3 / 0.4 * 2.995732273553991)
    assert "number of features" in plan["parts"]["model"]["note"]
    assert retailer.dataset_budget("retail.purchases")["spent_epsilon"] == 0.0
    refused = analyst.job_cost(scenario.job_spec(ids, epsilon=2.0))
    assert not refused["admitted"] and "at most epsilon 1" in refused["reason"]


def test_the_dry_run_with_listed_features_gives_the_model_noise(world):
    _, _, _, analyst, ids = world
    spec = scenario.job_spec(ids).replace(
        'target = "spend", alpha = 1.0', 'target = "spend", alpha = 1.0, features = ["age", "income", "visits"]'
    )
    model = analyst.job_cost(spec)["plan"]["parts"]["model"]
    assert model["sensitivity_l2"] == 5 and model["released_moments"] == 15
    assert model["interval_95"] == pytest.approx(1.959963984540054 * model["noise_scale"])


def test_a_refused_submission_charges_nothing(world):
    _, retailer, _, analyst, ids = world
    with pytest.raises(PolicyError):
        analyst.submit_job(scenario.job_spec(ids, epsilon=5.0))
    with pytest.raises(PolicyError, match="fits only linear_regression, ridge, .* models, not 'lasso'"):
        analyst.submit_job(scenario.job_spec(ids).replace('estimator = "ridge"', 'estimator = "lasso"'))
    assert retailer.dataset_budget("retail.purchases")["charges"] == []


def test_the_dataset_page_shows_the_budget_to_those_who_may_see_it(world, room):
    from tests.test_web import login

    _, retailer, _, analyst, ids = world
    analyst.submit_job(scenario.job_spec(ids, epsilon=0.5))
    page = login(room, analyst.token).get("/ui/datasets/retail.purchases").text
    assert "Privacy budget" in page and "2.5 of 3" in page
    stranger = room.org("other-analytics", "analyst")
    assert "Privacy budget" not in login(room, stranger.token).get("/ui/datasets/retail.purchases").text


def test_the_room_wide_cap_counts_each_job_once(tmp_path):
    """CLEANROOM_DP_ROOM_EPSILON: one charge per job, whatever its number of inputs; control: a job that fits."""
    from tests.conftest import Room

    capped = Room(tmp_path / "capped", dp_room_epsilon=1.5)
    try:
        register_room_key(capped)
        _, _, analyst, _, ids = setup_scenario(capped.org, tmp_path / "a", n=200, approve=True)
        analyst.submit_job(scenario.job_spec(ids))  # two inputs, one room-wide charge of 1.0
        with pytest.raises(PolicyError, match="the room's privacy budget \\(epsilon 1.5\\) is spent"):
            analyst.submit_job(scenario.job_spec(ids))
        assert analyst.submit_job(scenario.job_spec(ids, epsilon=0.5))["status"] == "queued"
    finally:
        capped.stop()


def test_each_recipient_spends_at_most_its_share(tmp_path):
    """`[privacy] recipient_epsilon`: one recipient cannot use up what the owner meant for several (real
    SQLite, the ledger's own functions); control: another recipient still has its share."""
    from cleanroom.policy import combine, parse_policy
    from cleanroom.store import ledger
    from cleanroom.store.db import Store

    policy = parse_policy("[privacy]\nrecipient_epsilon = 1.5\n[release]\nrecipients = ['acme', 'beta']\n")
    assert policy.recipient_epsilon == 1.5 and "recipient_epsilon" in policy.to_dict()["privacy"]
    with pytest.raises(PolicyError, match="recipient_epsilon \\(4\\) cannot exceed"):
        parse_policy("[privacy]\nrecipient_epsilon = 4\n")
    effective = combine({"d": policy})
    effective = type(effective)(**{**effective.__dict__, "job_epsilon": 1.0, "job_delta": 1e-7})
    store = Store(tmp_path / "db")
    datasets = {"d": {"policy": policy}}

    def charge(job: str, recipient: str) -> None:
        with store.tx() as conn:
            ledger.charge(
                conn,
                job_id=job,
                recipient=recipient,
                datasets=datasets,
                effective=effective,
                room_epsilon=None,
                now=0.0,
            )

    charge("j1", "acme")
    with pytest.raises(PolicyError, match="'acme' has epsilon 0.5 left of its share \\(1.5\\)"):
        charge("j2", "acme")
    charge("j3", "beta")  # control: beta's share is untouched
    with store.read() as conn:
        view = ledger.remaining(conn, dataset="d", policy=policy, recipient="acme")
        assert view["spent_epsilon"] == 2.0 and view["recipient"]["remaining_epsilon"] == 0.5
        assert [c["job_id"] for c in ledger.charges(conn, dataset="d")] == ["j1", "j3"]  # the refused one left nothing


def test_the_cli_dry_run_and_budget_commands(world, room, tmp_path):
    """`job cost`, `job submit --dry-run` and `dataset budget`, as users run them (a subprocess each)."""
    from cleanroom.profile import Profile
    from tests.test_cli import run

    _, retailer, _, analyst, ids = world
    Profile(name="acme", url=room.url, token=analyst.token).save()
    spec = tmp_path / "spend-model.toml"
    spec.write_text(scenario.job_spec(ids, epsilon=0.5))
    cost = run("job", "cost", str(spec), profile="acme").stdout
    assert "would be admitted" in cost and "charge: epsilon 0.5, delta 1e-07" in cost
    assert "sum_abs_residual: noise scale" in cost and "95% within" in cost
    dry = run("job", "submit", "--dry-run", str(spec), profile="acme").stdout
    assert "would be admitted" in dry and "job_" not in dry  # nothing was submitted
    budget = run("dataset", "budget", "retail.purchases", profile="acme").stdout
    assert "epsilon 3 of 3 left" in budget and "at most epsilon 1, delta 1e-07 per job" in budget
    assert retailer.dataset_budget("retail.purchases")["charges"] == []
    # control: a real submission is charged, and the budget command shows it
    run("job", "submit", str(spec), profile="acme")
    assert "epsilon 2.5 of 3 left" in run("dataset", "budget", "retail.purchases", profile="acme").stdout


def test_the_cli_upload_says_what_the_policy_means_and_suggests_bounds(world, room, tmp_path):
    from cleanroom.prepare.ingest import new_join_secret, save_join_secret
    from cleanroom.profile import Profile
    from tests.test_cli import run

    _, retailer, _, _, _ = world
    Profile(name="shop", url=room.url, token=retailer.token).save()
    files = scenario.write_data(tmp_path / "d", 200)
    save_join_secret(tmp_path / "join.key", new_join_secret())
    exact = tmp_path / "exact.toml"
    exact.write_text(scenario.exact_policy(scenario.RETAIL_POLICY))
    done = run(
        "dataset",
        "upload",
        str(files["retail"]),
        "--name",
        "retail.exact",
        "--policy",
        str(exact),
        "--id-column",
        "customer_id",
        "--join-secret",
        str(tmp_path / "join.key"),
        profile="shop",
    )
    assert "review = true is forced" in done.stderr
    assert "seen in your rows" in done.stderr and "[columns.spend]\nbounds = [" in done.stderr  # suggestions
    assert "[columns.last_purchase]" not in done.stderr  # dates are not suggested
    assert retailer.get_dataset("retail.exact")["policy"]["release"]["review"] is True
    # control: the DP default says so too
    dp_done = run(
        "dataset",
        "upload",
        str(files["retail"]),
        "--name",
        "retail.dp",
        "--policy",
        str(files["retail_policy"]),
        "--id-column",
        "customer_id",
        "--join-secret",
        str(tmp_path / "join.key"),
        profile="shop",
    )
    assert "differential privacy: lifetime budget epsilon 3" in dp_done.stderr


def test_the_migration_keeps_the_old_budget_rows_as_charges(tmp_path):
    """A room upgraded from the reserve-and-refund `budget` table: every old row (spent or reserved) becomes
    a ledger charge, so an upgrade never hands budget back."""
    import sqlite3

    from cleanroom.store.db import MIGRATIONS, Store

    mine = next(i for i, m in enumerate(MIGRATIONS) if "CREATE TABLE privacy_charges" in m)
    (tmp_path / "db").mkdir()
    conn = sqlite3.connect(tmp_path / "db" / "cleanroom.db")
    for script in MIGRATIONS[:mine]:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute(f"PRAGMA user_version={mine}")
    conn.execute(
        "INSERT INTO jobs (id, org_id, name, spec, effective_policy, status, created_at)"
        " VALUES ('job_old', 'org', 'j', '{\"recipient\": \"acme\"}', '{}', 'succeeded', 1)"
    )
    conn.execute("INSERT INTO budget VALUES ('retail', 'job_old', 0.7, 'spent', 1)")
    conn.execute("INSERT INTO budget VALUES ('retail', 'job_queued', 0.2, 'reserved', 2)")
    conn.commit()
    conn.close()
    store = Store(tmp_path / "db")
    with store.read() as db:
        rows = [
            tuple(r) for r in db.execute("SELECT job_id, dataset, recipient, epsilon FROM privacy_charges ORDER BY seq")
        ]
    assert rows == [("job_old", "retail", "acme", 0.7), ("job_queued", "retail", "", 0.2)]
