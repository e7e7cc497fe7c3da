"""The privacy budget ledger: what each job spends, charged at submission, never refunded.

One append-only table (`privacy_charges`, one row per job and input dataset) holds every charge
with the job's recipient org; a dataset's remaining budget is its policy's (epsilon, delta) minus
the SUM of its charges (`cleanroom.store.ledger`), never a mutable counter (PRIVACY-DESIGN.md section 6). Three views:
per dataset (the owner's lifetime budget), per recipient org (the same rows, filtered; each
recipient may spend at most the policy's `recipient_epsilon`, by default the whole budget, so that
one recipient cannot use up what the owner meant for several) and room-wide (one charge per job, capped by
the operator's `dp_room_epsilon` when set).

A job's (epsilon, delta) comes from its spec and the policies only: the spec's `epsilon` / `delta`
or, by default, the smallest per-job cap of its DP inputs. The charge is written in the same
transaction that creates the job, so two submissions cannot both pass the check, and nothing about
the job's run (failure, cancellation, an empty result) changes it: whether a job fails can depend
on the data, so a refund would be a release.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cleanroom.errors import PolicyError
from cleanroom.policy import EffectivePolicy, Policy
from cleanroom.sandbox.release import dp_plan

if TYPE_CHECKING:
    from cleanroom.jobspec import JobSpec

__all__ = ["admit", "budget_view", "check_dp_job", "job_budget", "with_job_budget"]

SLACK = 1e-9  # float slack when comparing a charge with what is left


def job_budget(spec: JobSpec, policies: Mapping[str, Policy]) -> tuple[float, float] | None:
    """The job's (epsilon, delta), or None when every input is in exact mode."""
    private = [p for p in policies.values() if p.require_dp]
    if not private:
        return None
    cap_eps, cap_delta = min(p.job_epsilon for p in private), min(p.job_delta for p in private)
    eps = spec.outputs.epsilon if spec.outputs.epsilon is not None else cap_eps
    delta = spec.outputs.delta if spec.outputs.delta is not None else cap_delta
    return float(eps), float(delta)


def check_dp_job(
    spec: JobSpec,
    policies: Mapping[str, Policy],
    plugins: Mapping[str, Mapping[str, Any]],
    budget_remaining: Mapping[str, Any] | None = None,
) -> None:
    """Refuse a DP job the room cannot run privately, or one over a per-job cap or what is left."""
    planned = job_budget(spec, policies)
    if planned is None:
        return
    eps, delta = planned
    for name, policy in sorted(policies.items()):
        if not policy.require_dp:
            continue
        if eps > policy.job_epsilon + SLACK or delta > policy.job_delta * (1 + SLACK):
            raise PolicyError(
                f"the job asks for epsilon {eps:g}, delta {delta:g} but dataset {name!r} allows at "
                f"most epsilon {policy.job_epsilon:g}, delta {policy.job_delta:g} per job",
                details={"dataset": name},
            )
    if spec.outputs.model:
        for step in spec.steps:
            plugin = plugins.get(step.plugin, {})
            if plugin.get("kind") != "model":
                continue
            # the step's estimator, or the manifest's default for it: known before any data is read
            declared = ((plugin.get("manifest") or {}).get("params") or {}).get("estimator") or {}
            estimator = step.params.get("estimator", declared.get("default") if isinstance(declared, dict) else None)
            if estimator is None:
                raise PolicyError(
                    f"with differential privacy the model step ({plugin.get('name')!r}) must name its estimator "
                    f"({', '.join(dp_plan.DP_ESTIMATORS)}) in its params, so that the room knows before running "
                    "that it can fit it privately",
                    details={"plugin": step.plugin},
                )
            if not isinstance(estimator, str) or estimator not in dp_plan.DP_ESTIMATORS:
                raise PolicyError(
                    f"with differential privacy (the default; every input of this job uses it) the room fits "
                    f"only {', '.join(dp_plan.DP_ESTIMATORS)} models, not {estimator!r}. Use one of them, fit "
                    "your own model per block with a statistic plugin and "
                    "[outputs.sample_and_aggregate] (docs/analyst.md), or ask the owners for exact mode "
                    "(require_dp = false, with review)",
                    details={"estimator": estimator},
                )
    for name, left in sorted((budget_remaining or {}).items()):
        if left is None or name not in policies or not policies[name].require_dp:
            continue
        left_eps, left_delta = (left, None) if isinstance(left, int | float) else left
        if eps > float(left_eps) + SLACK or (left_delta is not None and delta > float(left_delta) + 1e-15):
            raise PolicyError(
                f"the job asks for epsilon {eps:g} but dataset {name!r} has {max(float(left_eps), 0):g} "
                f"left of its budget {policies[name].epsilon:g}",
                details={"dataset": name, "remaining": float(left_eps)},
            )


def with_job_budget(effective: EffectivePolicy, spec: JobSpec) -> EffectivePolicy:
    """`effective` with the job's budget and the spec's declared bounds (narrowing the owners')."""
    bounds = dict(effective.bounds)
    for column, (lo, hi) in spec.outputs.bounds:
        old_lo, old_hi = bounds.get(column, (lo, hi))
        new = (max(lo, old_lo), min(hi, old_hi))
        if new[0] >= new[1]:
            raise PolicyError(
                f"the job's bounds of {column!r} do not overlap the owners' [{old_lo:g}, {old_hi:g}]",
                details={"column": column},
            )
        bounds[column] = new
    if effective.epsilon_cap is None:
        return dataclasses.replace(effective, bounds=tuple(sorted(bounds.items())))
    eps = spec.outputs.epsilon if spec.outputs.epsilon is not None else effective.epsilon_cap
    delta = spec.outputs.delta if spec.outputs.delta is not None else effective.delta_cap
    assert delta is not None  # set together with epsilon_cap
    return dataclasses.replace(
        effective, bounds=tuple(sorted(bounds.items())), job_epsilon=float(eps), job_delta=float(delta)
    )


# -- decisions over the ledger's sums (the table itself is `cleanroom.store.ledger`) -------------------


def budget_view(
    dataset: str,
    policy: Policy,
    spent: tuple[float, float],
    recipient: str | None = None,
    recipient_spent: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Budget, spent and left of one dataset (and of one recipient org's share, when given)."""
    eps, delta = spent
    out: dict[str, Any] = {
        "dataset": dataset,
        "mode": "dp" if policy.require_dp else "exact",
        "epsilon": policy.epsilon,
        "delta": policy.delta,
        "job_epsilon": policy.job_epsilon,
        "job_delta": policy.job_delta,
        "spent_epsilon": eps,
        "spent_delta": delta,
        "remaining_epsilon": max(policy.epsilon - eps, 0.0),
        "remaining_delta": max(policy.delta - delta, 0.0),
    }
    if recipient is not None:
        r_eps, r_delta = recipient_spent or (0.0, 0.0)
        share = policy.recipient_epsilon if policy.recipient_epsilon is not None else policy.epsilon
        out["recipient"] = {
            "org": recipient,
            "share_epsilon": share,
            "spent_epsilon": r_eps,
            "spent_delta": r_delta,
            "remaining_epsilon": min(out["remaining_epsilon"], max(share - r_eps, 0.0)),
            "remaining_delta": out["remaining_delta"],
        }
    return out


def admit(
    eps: float,
    delta: float,
    *,
    recipient: str,
    policies: Mapping[str, Policy],
    spent: Mapping[str, tuple[float, float]],
    recipient_spent: Mapping[str, float],
    room_epsilon: float | None,
    room_spent: Callable[[], float],
) -> None:
    """Refuse (PolicyError) a charge of (eps, delta) on each DP input in `policies` when a dataset, the
    recipient's share of one (`recipient_spent`, for policies with a `recipient_epsilon`) or the room has
    too little left."""
    for name, policy in policies.items():
        used_eps, used_delta = spent[name]
        if eps > policy.epsilon - used_eps + SLACK or delta > policy.delta - used_delta + 1e-15:
            raise PolicyError(
                f"dataset {name!r} has epsilon {max(policy.epsilon - used_eps, 0):g}, delta "
                f"{max(policy.delta - used_delta, 0):g} left of its budget (epsilon {policy.epsilon:g}, delta "
                f"{policy.delta:g}); this job needs epsilon {eps:g}, delta {delta:g}",
                hint="budgets are for the dataset's lifetime; its owner decides whether to raise it",
                details={"dataset": name, "remaining_epsilon": max(policy.epsilon - used_eps, 0.0)},
            )
        if policy.recipient_epsilon is not None:
            mine = recipient_spent[name]
            if eps > policy.recipient_epsilon - mine + SLACK:
                raise PolicyError(
                    f"{recipient!r} has epsilon {max(policy.recipient_epsilon - mine, 0):g} left of its share "
                    f"({policy.recipient_epsilon:g}) of dataset {name!r}'s budget; this job needs epsilon {eps:g}",
                    hint="each recipient org may spend at most the policy's recipient_epsilon",
                    details={"dataset": name, "recipient": recipient},
                )
    if room_epsilon and policies and room_spent() + eps > room_epsilon + SLACK:
        raise PolicyError(
            f"the room's privacy budget (epsilon {room_epsilon:g}) is spent",
            hint="the operator sets CLEANROOM_DP_ROOM_EPSILON",
        )
