"""The privacy ledger's table (`privacy_charges`): the sums that `cleanroom.ledger`'s rules decide on,
and the charges, written inside the job's own transaction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cleanroom import ledger
from cleanroom.policy import EffectivePolicy, Policy


def spent(conn: Any, *, dataset: str, recipient: str | None = None) -> tuple[float, float]:
    sql = "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0) FROM privacy_charges WHERE dataset = ?"
    args: list[Any] = [dataset]
    if recipient is not None:
        sql += " AND recipient = ?"
        args.append(recipient)
    row = conn.execute(sql, args).fetchone()
    return float(row[0]), float(row[1])


def room_spent(conn: Any) -> float:
    """Room-wide: each job once, at its largest charge."""
    row = conn.execute(
        "SELECT COALESCE(SUM(e), 0) FROM (SELECT MAX(epsilon) AS e FROM privacy_charges GROUP BY job_id)"
    ).fetchone()
    return float(row[0])


def remaining(conn: Any, *, dataset: str, policy: Policy, recipient: str | None = None) -> dict[str, Any]:
    """Budget, spent and left of one dataset (and of one recipient org's share, when given)."""
    return ledger.budget_view(
        dataset,
        policy,
        spent(conn, dataset=dataset),
        recipient,
        spent(conn, dataset=dataset, recipient=recipient) if recipient else None,
    )


def charge(
    conn: Any,
    *,
    job_id: str,
    recipient: str,
    datasets: Mapping[str, Mapping[str, Any]],
    effective: EffectivePolicy,
    room_epsilon: float | None,
    now: float,
) -> dict[str, float] | None:
    """Admit and record the job's charge on every DP input, inside the caller's write transaction.

    Raises PolicyError (and records nothing) when a dataset, or the room, has too little left.
    """
    if effective.job_epsilon is None or effective.job_delta is None:
        return None
    policies = {name: ds["policy"] for name, ds in sorted(datasets.items()) if ds["policy"].require_dp}
    ledger.admit(
        effective.job_epsilon,
        effective.job_delta,
        recipient=recipient,
        policies=policies,
        spent={name: spent(conn, dataset=name) for name in policies},
        recipient_spent={
            name: spent(conn, dataset=name, recipient=recipient)[0]
            for name, p in policies.items()
            if p.recipient_epsilon is not None
        },
        room_epsilon=room_epsilon,
        room_spent=(lambda: room_spent(conn)),
    )
    for name, policy in policies.items():
        conn.execute(
            "INSERT INTO privacy_charges (job_id, dataset, recipient, epsilon, delta, policy_sha256,"
            " created_at) VALUES (?,?,?,?,?,?,?)",
            (job_id, name, recipient, effective.job_epsilon, effective.job_delta, policy.sha256(), now),
        )
    return {"epsilon": effective.job_epsilon, "delta": effective.job_delta} if policies else None


def charges(conn: Any, *, dataset: str, recipient: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT job_id, recipient, epsilon, delta, created_at FROM privacy_charges WHERE dataset = ?"
    args: list[Any] = [dataset]
    if recipient is not None:
        sql += " AND recipient = ?"
        args.append(recipient)
    return [dict(r) for r in conn.execute(sql + " ORDER BY seq", args)]
