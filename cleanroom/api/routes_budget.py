"""Privacy budgets: what is left of each dataset's, and what a job would cost (a dry run).

Both are functions of public values (policies, specs, the ledger of charges), so showing them
releases nothing about the data (PRIVACY-DESIGN.md section 6).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from cleanroom import ledger
from cleanroom.api.deps import Ctx, get_ctx
from cleanroom.api.openapi import errors
from cleanroom.api.routes_datasets import current_policy, load_dataset
from cleanroom.api.routes_jobs import JobIn, job_context
from cleanroom.api.schemas import Budget, JobCost
from cleanroom.errors import PermissionDenied, PolicyError
from cleanroom.policy import Policy
from cleanroom.sandbox.release import dp_plan

router = APIRouter()


@router.get("/datasets/{name}/budget", tags=["datasets"], operation_id="get_dataset_budget", response_model=Budget,
            responses=errors(404))
def dataset_budget(name: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """The dataset's privacy budget, spent and left (its owner, its allowed recipients and staff)."""
    with ctx.store.read() as conn:
        ds = load_dataset(conn, name)
        policy = Policy.from_dict(current_policy(conn, name, ds["policy_version"])["policy"])
        owner = ds["owner_id"] == ctx.caller.org_id
        staff = ctx.caller.has("admin", "reviewer")
        if not (owner or staff or ctx.caller.name in policy.recipients):
            raise PermissionDenied(f"the budget of {name} is shown to its owner and the orgs its policy "
                                   "releases to")
        view = ledger.remaining(conn, name, policy, None if owner or staff else ctx.caller.name)
        view["charges"] = ledger.charges(conn, name, None if owner or staff else ctx.caller.name)
        return view


@router.post("/jobs/cost", tags=["jobs"], operation_id="estimate_job_cost", response_model=JobCost,
              responses=errors(409))
def job_cost(body: JobIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """A dry run: what the job would be charged and the noise on what it releases; nothing is stored."""
    from cleanroom import release_rules
    from cleanroom.jobspec import check_job, parse_jobspec

    spec = parse_jobspec(body.spec)
    with ctx.store.read() as conn:
        recipient = conn.execute("SELECT id FROM orgs WHERE name = ?", (spec.recipient,)).fetchone()
        jc = job_context(conn, spec, ctx.caller)
        admitted, reason, bounds = True, None, {}
        try:
            effective = check_job(spec, recipient_exists=recipient is not None, **jc)
            release_rules.check_submitted(conn, spec, jc, effective)  # as `job submit` decides them
            bounds = dict(effective.bounds)
        except PolicyError as exc:
            admitted, reason = False, exc.message
        policies = {n: d["policy"] for n, d in jc["datasets"].items()}
        budgets = {n: ledger.remaining(conn, n, p, spec.recipient) for n, p in sorted(policies.items())}
    planned = ledger.job_budget(spec, policies) if len(policies) == len(spec.inputs) else None
    out: dict[str, Any] = {"admitted": admitted, "reason": reason, "mode": "dp" if planned else "exact",
                           "budgets": budgets}
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
    plan = dp_plan.describe(eps, delta, aggregates=spec.outputs.aggregates, model=spec.outputs.model,
                            metrics=spec.outputs.metrics,
                            features=len(features) if isinstance(features, list) and features else None,
                            y_bounds=y_bounds, tables=kinds.count("analysis"),
                            sample_aggregate=(spec.outputs.sample_and_aggregate.to_dict()
                                              if spec.outputs.sample_and_aggregate else None))
    if model is not None and not (isinstance(features, list) and features):
        plan["parts"].get("model", {})["note"] = ("the noise scale depends on the number of features; list them "
                                                  "in the model step's params to see it here")
    out.update(admitted=admitted, reason=reason, plan=plan)
    return out
