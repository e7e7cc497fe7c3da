"""Privacy budgets: what is left of each dataset's, and what a job would cost (a dry run).

Both are functions of public values (policies, specs, the ledger of charges), so showing them
releases nothing about the data (PRIVACY-DESIGN.md section 6).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from cleanroom import ledger
from cleanroom.api.common import JobIn
from cleanroom.api.deps import Ctx, get_ctx
from cleanroom.api.job_views import check_release_rules, job_context
from cleanroom.api.openapi import errors
from cleanroom.api.schemas import Budget, JobCost
from cleanroom.api.views import budget_view
from cleanroom.errors import PolicyError
from cleanroom.sandbox.release import dp_plan
from cleanroom.store import ledger as store_ledger
from cleanroom.store import orgs

router = APIRouter()


@router.get(
    "/datasets/{name}/budget",
    tags=["datasets"],
    operation_id="get_dataset_budget",
    response_model=Budget,
    responses=errors(404),
)
def dataset_budget(name: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """The dataset's privacy budget, spent and left (its owner, its allowed recipients and staff)."""
    with ctx.store.read() as conn:
        return budget_view(conn, ctx.caller, name)


@router.post(
    "/jobs/cost", tags=["jobs"], operation_id="estimate_job_cost", response_model=JobCost, responses=errors(409)
)
def job_cost(body: JobIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """A dry run: what the job would be charged and the noise on what it releases; nothing is stored."""
    from cleanroom.jobspec import check_job, parse_jobspec

    spec = parse_jobspec(body.spec)
    with ctx.store.read() as conn:
        recipient = orgs.by_name(conn, name=spec.recipient)
        jc = job_context(conn, spec, ctx.caller)
        admitted, reason, bounds = True, None, {}
        try:
            effective = check_job(spec, recipient_exists=recipient is not None, **jc)
            check_release_rules(conn, spec, jc, effective)  # as `job submit` decides them
            bounds = dict(effective.bounds)
        except PolicyError as exc:
            admitted, reason = False, exc.message
        policies = {n: d["policy"] for n, d in jc["datasets"].items()}
        budgets = {
            n: store_ledger.remaining(conn, dataset=n, policy=p, recipient=spec.recipient)
            for n, p in sorted(policies.items())
        }
    planned = ledger.job_budget(spec, policies) if len(policies) == len(spec.inputs) else None
    out: dict[str, Any] = {
        "admitted": admitted,
        "reason": reason,
        "mode": "dp" if planned else "exact",
        "budgets": budgets,
    }
    if planned is None:
        out["plan"] = None
        return out
    eps, delta = planned
    for name, left in budgets.items():
        if left["mode"] == "dp" and eps > left["remaining_epsilon"] + ledger.SLACK and admitted:
            admitted, reason = False, f"dataset {name!r} has epsilon {left['remaining_epsilon']:g} left"
    kinds = [jc["plugins"].get(s.plugin, {}).get("kind") for s in spec.steps]
    model = next((s for s, k in zip(spec.steps, kinds, strict=True) if k == "model"), None)
    features = model.params.get("features") if model else None
    target = model.params.get("target") if model else None
    y_bounds = bounds.get(target) if isinstance(target, str) else None
    plan = dp_plan.describe(
        eps,
        delta,
        aggregates=spec.outputs.aggregates,
        model=spec.outputs.model,
        metrics=spec.outputs.metrics,
        features=len(features) if isinstance(features, list) and features else None,
        y_bounds=y_bounds,
        tables=kinds.count("analysis"),
        sample_aggregate=(spec.outputs.sample_and_aggregate.to_dict() if spec.outputs.sample_and_aggregate else None),
        estimator=model.params.get("estimator") if model else None,
    )
    if model is not None and not (isinstance(features, list) and features):
        plan["parts"].get("model", {})["note"] = (
            "the noise scale depends on the number of features; list them in the model step's params to see it here"
        )
    out.update(admitted=admitted, reason=reason, plan=plan)
    return out
