"""Release checks the spec decides are refused at `job submit`, with their data-free reason, before any
budget is charged or any data touched; each refusal has a control spec that the room accepts."""

from __future__ import annotations

import httpx
import pytest

from cleanroom import crypto, scenario
from cleanroom.errors import PolicyError
from cleanroom.prepare.ingest import new_join_secret
from tests.scenario_setup import REPO, approve_all

BY_REGION = 'params = { name = "spend_by_region", group_by = ["region"], metrics = [\n'
RIDGE = 'params = { estimator = "ridge", target = "spend", alpha = 1.0 }'


def _world(room, tmp_path, *, exact: bool):
    key = crypto.generate_keypair()
    httpx.post(
        room.url + "/runner/register",
        headers={"authorization": f"Bearer {room.runner_token}"},
        json={"enc_public": key.enc_public, "sign_public": key.sign_public},
    ).raise_for_status()
    retailer, bank, analyst = (
        room.org("retailer", "owner"),
        room.org("bank", "owner"),
        room.org("acme-analytics", "analyst"),
    )
    files = scenario.write_data(tmp_path / "data", 300)
    secret = new_join_secret()
    policy = scenario.exact_policy if exact else (lambda text: text)
    retailer.upload_dataset(
        files["retail"],
        name="retail.purchases",
        policy=policy(scenario.RETAIL_POLICY),
        id_column="customer_id",
        join_secret=secret,
    )
    bank.upload_dataset(
        files["bank"],
        name="bank.customers",
        policy=policy(scenario.BANK_POLICY),
        id_column="customer_id",
        join_secret=secret,
    )
    ids = {
        name: analyst.submit_plugin(REPO / "plugins" / name)["id"] for name in (*scenario.PLUGINS, "gradient-boosting")
    }
    approve_all(retailer, bank, ids)
    return retailer, analyst, ids


def _with_second_table(spec: str, ids: dict[str, str], group_by: str) -> str:
    table = (
        f'[[steps]]\nplugin = "{ids["group-aggregate"]}"\nparams = {{ name = "second", group_by = {group_by},'
        ' metrics = [{ agg = "count" }] }\n\n[outputs]'
    )
    return spec.replace("[outputs]", table, 1)


def _refused(analyst, spec: str, check: str, *words: str) -> str:
    before = analyst.list_jobs()
    with pytest.raises(PolicyError) as refused:
        analyst.submit_job(spec)
    message = refused.value.message
    assert f"release check {check}" in message and all(w in message for w in words), message
    assert refused.value.details["check"] == check
    assert analyst.list_jobs() == before  # nothing stored
    return message


def test_exact_mode_refusals_with_reasons(room, tmp_path):
    retailer, analyst, ids = _world(room, tmp_path, exact=True)
    spec = scenario.job_spec(ids)
    # nested group-bys: a table by region and one by region and segment difference out suppressed groups
    _refused(
        analyst,
        _with_second_table(spec, ids, '["region", "segment"]'),
        "aggregate:nesting",
        "spend_by_region",
        "second",
        "subset",
    )
    # an estimator the policies do not allow
    _refused(
        analyst,
        spec.replace(RIDGE, RIDGE.replace('"ridge"', '"logistic_regression"')),
        "model:estimator",
        "logistic_regression",
        "not allowed",
    )
    # a tree with leaves below k
    gb = RIDGE.replace(
        RIDGE,
        'params = { estimator = "gradient_boosting_regressor", target = "spend", '
        'features = ["visits"], min_samples_leaf = 2 }',
    )
    spec_gb = spec.replace(ids["linear-model"], ids["gradient-boosting"]).replace(RIDGE, gb)
    _refused(analyst, spec_gb, "model:min_samples_leaf", "k = 10")
    # a typo in a feature name and in a group-by column
    _refused(
        analyst,
        spec.replace(RIDGE, RIDGE.replace("alpha", 'features = ["visitz"], alpha')),
        "names",
        "'visitz'",
        "feature",
    )
    _refused(analyst, spec.replace('group_by = ["region"]', 'group_by = ["regoin"]'), "names", "'regoin'")
    # the dry run (`job cost`) says the same, and stores nothing either
    cost = analyst.job_cost(_with_second_table(spec, ids, '["region", "segment"]'))
    assert cost["admitted"] is False and "aggregate:nesting" in cost["reason"]
    assert analyst.job_cost(spec)["admitted"] is True  # control
    # controls: the same shapes the rules allow are accepted
    assert analyst.submit_job(_with_second_table(spec, ids, '["segment"]'))["status"] == "queued"  # disjoint
    assert analyst.submit_job(spec_gb.replace("min_samples_leaf = 2", "min_samples_leaf = 10"))["status"] == "queued"
    assert (
        analyst.submit_job(spec.replace(RIDGE, RIDGE.replace("alpha", 'features = ["visits"], alpha')))["status"]
        == "queued"
    )


def test_dp_mode_refusals_with_reasons(room, tmp_path):
    retailer, analyst, ids = _world(room, tmp_path, exact=False)
    spec = scenario.job_spec(ids)
    budget = retailer.dataset_budget("retail.purchases")
    _refused(
        analyst,
        spec.replace('{ agg = "mean", column = "spend" }', '{ agg = "std", column = "spend" }'),
        "aggregate:spec",
        "std",
        "differential privacy",
    )
    _refused(
        analyst,
        spec.replace('{ agg = "mean", column = "spend" }', '{ agg = "mean", column = "spend_" }'),
        "names",
        "'spend_'",
        "metric column",
    )
    assert retailer.dataset_budget("retail.purchases") == budget  # nothing charged
    # control: nested group-bys are fine with DP (noise, not suppression, protects the groups)
    assert analyst.submit_job(_with_second_table(spec, ids, '["region", "segment"]'))["status"] == "queued"
