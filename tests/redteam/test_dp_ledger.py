"""Red team: the privacy ledger and the channels that used to be exact (checklist: differencing,
repeated queries, refunds, published summaries). Real API over HTTP and real SQLite; the release-phase
attacks run the trusted release code on frames built to leak one person.

Each attack comes with a control that shows the test could pass: the same move in exact mode (or
on a dataset with budget left) does what the attack wanted.
"""

from __future__ import annotations

import json
import math
import threading

import httpx
import numpy as np
import pandas as pd
import pytest
import skops.io as sio

from cleanroom import scenario
from cleanroom.errors import PolicyError
from cleanroom.sandbox import wire
from cleanroom.sandbox.release import phase as release
from tests.scenario_setup import setup_scenario
from tests.test_dp_ledger import register_room_key


@pytest.fixture
def world(room, tmp_path):
    register_room_key(room)
    retailer, bank, analyst, files, ids = setup_scenario(room.org, tmp_path, n=300, approve=True)
    return room, retailer, bank, analyst, ids


def submit_until_refused(analyst, spec: str, limit: int = 20) -> tuple[list[str], PolicyError]:
    admitted = []
    for _ in range(limit):
        try:
            admitted.append(analyst.submit_job(spec)["id"])
        except PolicyError as exc:
            return admitted, exc
        analyst.cancel_job(admitted[-1])  # keep under the queue limit; a cancel refunds nothing
    raise AssertionError("the ledger never refused")


@pytest.mark.parametrize("epsilon", [None, 0.7, 0.3])
def test_repeated_jobs_are_admitted_floor_budget_over_epsilon_times(world, epsilon):
    _, retailer, _, analyst, ids = world
    admitted, refusal = submit_until_refused(analyst, scenario.job_spec(ids, epsilon=epsilon))
    assert len(admitted) == math.floor(3.0 / (epsilon or 1.0) + 1e-9)
    assert "retail.purchases" in refusal.message or "bank.customers" in refusal.message
    assert "left of its budget" in refusal.message
    left = retailer.dataset_budget("retail.purchases")["remaining_epsilon"]
    assert left == pytest.approx(3.0 - len(admitted) * (epsilon or 1.0)) and left < (epsilon or 1.0)


def test_control_a_fresh_dataset_still_admits_jobs(world, room, tmp_path):
    _, retailer, bank, analyst, ids = world
    submit_until_refused(analyst, scenario.job_spec(ids))
    from cleanroom.prepare.ingest import new_join_secret

    files = scenario.write_data(tmp_path / "fresh", 300)
    secret = new_join_secret()
    retailer.upload_dataset(
        files["retail"], name="retail.fresh", policy=scenario.RETAIL_POLICY, id_column="customer_id", join_secret=secret
    )
    bank.upload_dataset(
        files["bank"], name="bank.fresh", policy=scenario.BANK_POLICY, id_column="customer_id", join_secret=secret
    )
    for pid in ids.values():
        retailer.decide_plugin(pid, "retail.fresh")
        bank.decide_plugin(pid, "bank.fresh")
    assert analyst.submit_job(scenario.job_spec(ids, retail="retail.fresh", bank="bank.fresh"))["status"] == "queued"


def test_cancelled_and_failed_jobs_keep_their_charge(world, room):
    _, retailer, _, analyst, ids = world
    spec = scenario.job_spec(ids)
    cancelled = analyst.submit_job(spec)["id"]
    analyst.cancel_job(cancelled)
    failed = analyst.submit_job(spec)["id"]
    runner = {"authorization": f"Bearer {room.runner_token}"}
    httpx.post(
        f"{room.url}/runner/jobs/{failed}/finish",
        headers=runner,
        json={"status": "failed", "reason": "a data-dependent crash", "error_class": "plugin_error"},
    ).raise_for_status()
    budget = retailer.dataset_budget("retail.purchases")
    assert {c["job_id"] for c in budget["charges"]} == {cancelled, failed}
    assert budget["remaining_epsilon"] == pytest.approx(1.0)
    assert room.admin.get_job(failed)["status"] == "failed"
    # the one job left is admitted, the next is not: nothing came back from the cancel or the failure
    analyst.submit_job(spec)
    with pytest.raises(PolicyError, match="left of its budget"):
        analyst.submit_job(spec)


def test_concurrent_submissions_cannot_spend_past_the_budget(world):
    _, retailer, _, analyst, ids = world
    spec = scenario.job_spec(ids, epsilon=0.5)
    results: list[object] = []

    def submit() -> None:
        try:
            results.append(analyst.submit_job(spec)["id"])
        except PolicyError as exc:
            results.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    admitted = [r for r in results if isinstance(r, str)]
    assert len(admitted) == 6 and len(results) == 10
    assert retailer.dataset_budget("retail.purchases")["spent_epsilon"] == pytest.approx(3.0)


def test_an_analyst_cannot_raise_its_own_per_job_cap_or_dodge_the_charge(world):
    _, retailer, _, analyst, ids = world
    with pytest.raises(PolicyError, match="allows at most epsilon 1, delta 1e-07 per job"):
        analyst.submit_job(scenario.job_spec(ids, epsilon=3.0))
    with pytest.raises(PolicyError, match="delta"):
        analyst.submit_job(scenario.job_spec(ids) + "delta = 0.0005\n")
    job = analyst.submit_job(scenario.job_spec(ids, epsilon=0.01))  # a tiny epsilon is a tiny charge, not none
    assert retailer.dataset_budget("retail.purchases")["charges"][0] == {
        **retailer.dataset_budget("retail.purchases")["charges"][0],
        "job_id": job["id"],
        "epsilon": 0.01,
    }


# -- former exact channels --------------------------------------------------------------------------------


def test_published_summaries_hold_declared_facts_only(world, room):
    _, retailer, _, analyst, _ = world
    seen = analyst.get_dataset("retail.purchases")
    stats = {c["name"]: c.get("stats") for c in seen["schema"]["columns"]}
    # numbers: the declared bounds, no mean, std, real range or null fraction
    assert stats["spend"] == {"declared": True, "min": 0.0, "max": 2500.0}
    assert stats["visits"] == {"declared": True, "min": 0, "max": 40}
    # categories: the declared domain, equal weights (no counts)
    assert stats["region"] == {"declared": True, "categories": {r: 1 for r in scenario.REGIONS}}
    # an undeclared column publishes nothing computed from the rows
    assert stats["last_purchase"] == {"declared": True}
    mock = pd.DataFrame(seen["mock"])
    assert mock["spend"].between(0, 2500).all() and set(mock["region"]) <= set(scenario.REGIONS)
    assert seen["row_count"] is None and seen["size"] is None  # n is private
    # control: the owner sees its own row count
    assert retailer.get_dataset("retail.purchases")["row_count"] == 300


def test_a_client_cannot_publish_exact_summaries_even_if_it_sends_them(world, room, tmp_path):
    """The room replaces whatever summaries and mock rows an upload declaration carries."""
    from cleanroom.prepare.ingest import new_join_secret, prepare

    _, retailer, _, _, _ = world
    files = scenario.write_data(tmp_path / "evil", 300)
    prepared = prepare(
        files["retail"],
        recipient=room.admin.room_keys()["enc_public"],
        id_column="customer_id",
        join_secret=new_join_secret(),
    )
    meta = prepared.metadata()
    exact = prepared.suggested.column("spend").stats  # the owner-side summary of the rows
    assert "mean" in exact
    meta["schema"]["columns"] = [dict(c, stats=exact) if c["name"] == "spend" else c for c in meta["schema"]["columns"]]
    real = pd.read_csv(files["retail"]).drop(columns=["customer_id", "email"]).head(5)
    meta["mock"] = [dict(r, _pid="x") for r in json.loads(real.to_json(orient="records"))]
    decl = retailer.post(
        "/datasets/uploads", json={"name": "retail.evil", "description": "", "policy": scenario.RETAIL_POLICY, **meta}
    )
    retailer.request(
        "PUT",
        decl["put"],
        content=prepared.ciphertext_path.read_bytes(),
        headers={"content-type": "application/octet-stream"},
    )
    seen = room.admin.get_dataset("retail.evil")
    spend = next(c for c in seen["schema"]["columns"] if c["name"] == "spend")
    assert spend["stats"] == {"declared": True, "min": 0.0, "max": 2500.0}
    assert not any(row.get("spend") in set(real["spend"]) for row in seen["mock"])
    prepared.cleanup()


def indicator_frame(n: int = 2000, target_value: float = 4321.0) -> pd.DataFrame:
    """The differencing attack of issue 13: an indicator feature for one person, so the least-squares
    coefficient of that feature is that person's spend minus the intercept."""
    rng = np.random.default_rng(7)
    spend = rng.uniform(100, 200, n)
    spend[0] = target_value
    return pd.DataFrame({"_pid": np.arange(n), "is_target": (np.arange(n) == 0).astype(float), "spend": spend})


def fit(frame: pd.DataFrame, *, dp: dict | None, metrics: bool = False) -> tuple[dict, object, dict]:
    policy = {
        "k": 2,
        "outputs": ["model"],
        "estimators": ["linear_regression"],
        "allow_row_storing": False,
        "max_model_bytes": 1_000_000,
        "never_output": [],
        "join_only": [],
        "bounds": {"is_target": [0, 1], "spend": [0, 5000]},
        "require_dp": dp is not None,
    }
    request = {
        "job_id": "job-rt",
        "policy": policy,
        "outputs": {"model": True, "metrics": metrics, "aggregates": False, "holdout_fraction": 0.2},
        "model_spec": {
            "estimator": "linear_regression",
            "params": {},
            "target": "spend",
            "features": ["is_target"],
            "task": "regression",
        },
        "analysis_specs": [],
        "table_names": [],
        "dp": dp or {"epsilon": None, "delta": None},
        "names": {"schemas": {"w": {c: [] for c in frame.columns}}, "job_strings": []},
    }
    meta, files = release.run(request, {release.FRAME: wire.frame_to_bytes(frame)})
    if not meta["ok"]:
        return meta, None, {}
    blob = files["artifacts/model.skops"]
    report = json.loads(files["artifacts/metrics.json"]) if "artifacts/metrics.json" in files else {}
    return meta, sio.loads(blob, trusted=sio.get_untrusted_types(data=blob)), report


def test_model_coefficients_no_longer_give_back_one_persons_value():
    frame = indicator_frame()
    errors = []
    for _ in range(5):
        meta, model, _ = fit(frame, dp={"epsilon": 1.0, "delta": 1e-7})
        assert meta["ok"], meta
        recovered = model.intercept_ + model.coef_[0]
        errors.append(abs(recovered - 4321.0))
    # the indicator's signal is one unit: the noise (sigma ~ 50 on moments scaled to [-1, 1]) drowns it
    assert min(errors) > 50 and len({round(e, 6) for e in errors}) == 5


def spread_frame(value: float, n: int = 2000) -> pd.DataFrame:
    """An ordinary feature (no single-person column, so the leverage check passes): the target person is
    unit 0, whose spend the attacker wants; it knows everyone else's rows (a differencing attacker)."""
    rng = np.random.default_rng(8)
    x = rng.uniform(0, 1, n)
    spend = 150 + 40 * x + rng.normal(0, 5, n)
    spend[0] = value
    return pd.DataFrame({"_pid": np.arange(n), "is_target": x, "spend": spend})


def coefficients(model: object) -> np.ndarray:
    return np.array([model.intercept_, model.coef_[0]])


def test_control_exact_fits_tell_the_persons_value_and_dp_fits_do_not():
    """Attribute inference by differencing: is unit 0's spend 4321 or 150? An exact fit is a deterministic
    function of that value, so the attacker (who knows the other rows) reads it off; DP fits on the very
    same data scatter more than the value moves them."""
    high, low = spread_frame(4321.0), spread_frame(150.0)
    exact_high, exact_low = (coefficients(fit(f, dp=None)[1]) for f in (high, low))
    assert np.array_equal(exact_high, coefficients(fit(high, dp=None)[1]))  # deterministic: no noise at all
    signal = np.abs(exact_high - exact_low).max()
    assert signal > 0.5  # the control: the exact channel separates the two values perfectly
    dp = {"epsilon": 1.0, "delta": 1e-7}
    runs = np.array([coefficients(fit(high, dp=dp)[1]) for _ in range(6)])
    assert runs.std(axis=0).max() > 2 * signal  # the same data, fresh noise: the value is lost in it


def test_holdout_metrics_are_noised_not_exact():
    frame = indicator_frame(4000)
    reports = [fit(frame, dp={"epsilon": 1.0, "delta": 1e-7}, metrics=True)[2] for _ in range(3)]
    assert all(r["metrics_noise_scale"]["sum_sq_residual"] > 0 for r in reports)
    assert len({json.dumps(r["metrics"], sort_keys=True) for r in reports}) == 3  # fresh noise every time
    assert all(r["n_holdout_noisy"] != 800 or r["n_train_noisy"] != 3200 for r in reports)


def test_control_exact_metrics_are_a_deterministic_function_of_one_persons_value():
    """The channel the DP metrics close: in exact mode the holdout metrics move with one person's value
    and repeat exactly, so two jobs tell the value apart."""
    high, low = spread_frame(4321.0, 4000), spread_frame(150.0, 4000)
    exact = [fit(f, dp=None, metrics=True)[2]["metrics"] for f in (high, high, low)]
    assert exact[0] == exact[1] and exact[0] != exact[2]
