"""Jobs (submitted by analysts, checked against every input's policy and approvals) and releases."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from cleanroom import audit, ledger, release_rules
from cleanroom.api.app import row_dict
from cleanroom.api.authz import Caller, visible_job
from cleanroom.api.deps import Ctx, get_ctx
from cleanroom.api.openapi import binary, errors
from cleanroom.api.routes_datasets import check_not_withdrawn, current_policy, load_dataset
from cleanroom.api.routes_plugins import check_signed, may_use_plugin
from cleanroom.api.schemas import Job, Release
from cleanroom.errors import Conflict, NotFound, PermissionDenied, PolicyError, RateLimited, ValidationError
from cleanroom.store.db import dumps, new_id, now

router = APIRouter()
TERMINAL = ("succeeded", "failed", "cancelled", "timed_out")
# What an analyst who does not own every input sees of a job: nothing about why or when it ended.
ANALYST_STATUSES = ("queued", "running", "released", "nothing_released", "cancelled")
REVEAL_PAD = 10  # seconds: a reveal time is rounded up to a multiple of this


class JobIn(BaseModel):
    spec: str = Field(max_length=100_000)


def job_context(conn: Any, spec: Any, caller: Caller | None = None) -> dict[str, Any]:
    """Everything `jobspec.check_job` needs, read from the store.

    With `caller`, only plugins the caller may see count (an analyst's own; every plugin for owners,
    reviewers and admins): an analyst cannot run another analyst's plugin by its id, even an approved
    one, until it submits the same bytes itself (then the owners' approvals of those bytes cover it).
    """
    from cleanroom.policy import Policy

    datasets: dict[str, Any] = {}
    for name in spec.dataset_names():
        row = conn.execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone()
        if not row:
            continue
        ds = dict(row)
        check_not_withdrawn(ds)
        pol = current_policy(conn, name, ds["policy_version"])
        owner = conn.execute("SELECT name FROM orgs WHERE id = ?", (ds["owner_id"],)).fetchone()["name"]
        datasets[name] = {"owner": owner, "owner_id": ds["owner_id"],
                          "policy": Policy.from_dict(pol["policy"]),
                          "policy_version": ds["policy_version"], "sha256": ds["sha256"]}
    plugins: dict[str, Any] = {}
    for pid in spec.plugin_ids():
        row = conn.execute("SELECT * FROM plugins WHERE id = ?", (pid,)).fetchone()
        if row and (caller is None or may_use_plugin(conn, caller, pid)):
            p = row_dict(row, "manifest")
            plugins[pid] = {"name": p["name"], "kind": p["kind"], "manifest": p["manifest"]}
    approvals = set()
    for row in conn.execute("SELECT a.plugin_id, a.dataset, a.policy_version, a.dataset_sha256 FROM approvals a"
                            " JOIN datasets d ON d.name = a.dataset"
                            " WHERE a.decision = 'approve' AND a.revoked_at IS NULL AND a.org_id = d.owner_id"):
        approvals.add((row[0], row[1], row[2], row[3]))
    # the privacy budget is checked and charged by `ledger.charge`, atomically with creating the job
    return {"datasets": datasets, "plugins": plugins, "approvals": approvals, "budget_remaining": {}}


def input_owner_ids(conn: Any, job: dict[str, Any]) -> set[str]:
    names = [i["dataset"] for i in job["spec"].get("inputs", [])]
    rows = conn.execute(f"SELECT owner_id FROM datasets WHERE name IN ({','.join('?' * len(names))})",
                        names).fetchall() if names else []
    return {r[0] for r in rows}


def load_job(conn: Any, job_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if not row:
        raise NotFound("job not found")
    job = row_dict(row, "spec", "effective_policy")
    rec = conn.execute("SELECT id FROM orgs WHERE name = ?", (job["spec"].get("recipient"),)).fetchone()
    job["recipient_id"] = rec[0] if rec else None
    return job


def time_budget(job: dict[str, Any], settings: Any) -> float:
    """Seconds from a job's start after which its analyst learns the outcome: the spec's, else the room's."""
    return float(job["spec"].get("time_budget") or settings.job_time_budget_seconds)


def reveal_time(started_at: float, budget: float) -> float:
    return math.ceil((started_at + budget) / REVEAL_PAD) * REVEAL_PAD


def sees_outcome(caller: Caller, rel: set[str], owner_ids: set[str]) -> bool:
    """Who may see how a job went (status, phase, timings, error class, reason, logs): staff, an org that
    owns every input, and an input owner that neither submitted the job nor receives its result.
    Everyone else (the analyst side) sees only `analyst_status`, fixed by the spec's time budget."""
    if "staff" in rel or owner_ids == {caller.org_id}:
        return True
    return "owner" in rel and not rel & {"submitter", "recipient"}


def released(conn: Any, job: dict[str, Any], t: float) -> dict[str, Any] | None:
    """The job's release if its recipient may have it at time `t`: the outcome is out, every review
    done and none rejected, and the analyst did not withdraw it; else None."""
    if job["started_at"] is None or job.get("withdrawn_at") is not None or t < (job.get("reveal_at") or 0):
        return None  # (a job started before reveal times existed has none: its outcome was out already)
    row = conn.execute("SELECT * FROM releases WHERE job_id = ?", (job["id"],)).fetchone()
    if not row:
        return None
    release = row_dict(row, "manifest", "receipt", "review_by")
    return release if release_state(conn, release)["downloadable"] else None


def analyst_status(conn: Any, job: dict[str, Any], t: float) -> str:
    """queued, running, released or nothing_released: one status for every way a job can fail, shown only
    once the job's reveal time (started_at + time budget) has passed; cancelled if it never started."""
    if job["started_at"] is None:
        return "queued" if job["status"] == "queued" else "cancelled"  # before it touched any data
    if t < (job["reveal_at"] or 0):
        return "running"
    return "released" if released(conn, job, t) else "nothing_released"


def job_view(conn: Any, job: dict[str, Any], rel: set[str], full: bool) -> dict[str, Any]:
    """A job as the caller may see it; `full` (see `sees_outcome`) adds the real status, phase, end time,
    error class and reason. The analyst's view has the same keys, with the data-dependent ones empty."""
    submitter = conn.execute("SELECT name FROM orgs WHERE id = ?", (job["org_id"], )).fetchone()["name"]
    t = now()
    view = {"id": job["id"], "name": job["name"], "submitted_by": submitter, "status": job["status"],
            "phase": job["phase"], "error_class": job["error_class"], "created_at": job["created_at"],
            "started_at": job["started_at"], "finished_at": job["finished_at"], "outcome_at": job["reveal_at"],
            "recipient": job["spec"].get("recipient"), "inputs": [i["dataset"] for i in job["spec"]["inputs"]],
            "release_id": None, "spec": job["spec"]}
    if full:
        release = conn.execute("SELECT id FROM releases WHERE job_id = ?", (job["id"],)).fetchone()
        view["release_id"] = release[0] if release else None
        view["analyst_status"] = analyst_status(conn, job, t)
        view["withdrawn"] = job.get("withdrawn_at") is not None
        view["reason"] = job["reason"]
        view["effective_policy"] = job["effective_policy"]
        return view
    status = analyst_status(conn, job, t)
    release = released(conn, job, t) if status == "released" else None
    view.update(status=status, phase=None, error_class=None, finished_at=None,
                release_id=release["id"] if release else None)
    return view


def caller_view(conn: Any, caller: Caller, job: dict[str, Any]) -> tuple[set[str], bool, dict[str, Any]]:
    """The caller's relation to a job (NotFound when none), whether it sees the outcome, and its view."""
    owner_ids = input_owner_ids(conn, job)
    rel = visible_job(caller, job, owner_ids)
    full = sees_outcome(caller, rel, owner_ids)
    return rel, full, job_view(conn, job, rel, full)


def job_event(conn: Any, ctx: Ctx, job_id: str, action: str, object_type: str, object_id: str,
              details: dict[str, Any] | None = None) -> None:
    """Audit an event of a job, or, while the job has started and its outcome is not out yet, hold it in
    the job row: the held events join the chain as one `job.ended` event at the reveal time, so neither
    their number nor their place in the chain tells anyone how the job went or how long it ran."""
    row = conn.execute("SELECT reveal_at, held_events FROM jobs WHERE id = ?", (job_id,)).fetchone()
    t = now()
    if row is None or row["reveal_at"] is None or t >= row["reveal_at"]:
        ctx.audit(conn, action, object_type, object_id, details)
        return
    held = json.loads(row["held_events"] or "[]")
    held.append({"ts": t, "actor": ctx.caller.name, "action": action, "object_type": object_type,
                 "object_id": object_id, "details": details or {}})
    conn.execute("UPDATE jobs SET held_events = ? WHERE id = ?", (dumps(held), job_id))


def release_held_events(conn: Any) -> int:
    """Append the held events of every job whose reveal time has passed (in reveal-time order)."""
    t = now()
    rows = conn.execute("SELECT id, held_events FROM jobs WHERE held_events IS NOT NULL AND reveal_at <= ?"
                        " ORDER BY reveal_at, id", (t,)).fetchall()
    for row in rows:
        audit.append(conn, actor="cleanroom", action="job.ended", object_type="job", object_id=row["id"],
                     details={"events": json.loads(row["held_events"])}, ts=t)
        conn.execute("UPDATE jobs SET held_events = NULL WHERE id = ?", (row["id"],))
    return len(rows)


def check_daily_limits(conn: Any, caller: Caller, datasets: dict[str, Any]) -> None:
    """`[limits] max_jobs_per_day` of an input's policy: jobs per analyst org on that dataset in 24 hours
    (every job outcome is one bit its analyst learns; this caps them). Owners of the dataset are exempt."""
    since = now() - 86400
    for name, ds in sorted(datasets.items()):
        cap = dict(ds["policy"].limits).get("max_jobs_per_day")
        if cap is None or ds["owner_id"] == caller.org_id:
            continue
        rows = conn.execute("SELECT j.created_at FROM jobs AS j, json_each(j.spec, '$.inputs') AS i"
                            " WHERE j.org_id = ? AND json_extract(i.value, '$.dataset') = ? AND j.created_at > ?"
                            " ORDER BY j.created_at", (caller.org_id, name, since)).fetchall()
        if len(rows) >= int(cap):
            wait = max(1, math.ceil(rows[len(rows) - int(cap)][0] + 86400 - now()))
            raise RateLimited(f"the policy of {name} allows {int(cap)} jobs a day per analyst org; {caller.name} "
                              f"submitted {len(rows)} in the last 24 hours",
                              hint=f"try again in {wait // 3600} h {wait % 3600 // 60} min")


@router.post("/jobs", status_code=201, tags=["jobs"], operation_id="submit_job", response_model=Job,
              responses=errors(409, 429))
def submit_job(body: JobIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Submit a job spec (TOML). It is checked against every input's policy and the approvals."""
    from cleanroom.jobspec import check_job, check_time_budget, parse_jobspec

    spec = parse_jobspec(body.spec)
    check_time_budget(spec, ctx.settings.job_time_budget_seconds)
    with ctx.store.tx() as conn:
        queued = conn.execute("SELECT COUNT(*) FROM jobs WHERE org_id = ? AND status IN ('queued', 'running')",
                              (ctx.caller.org_id,)).fetchone()[0]
        if queued >= ctx.settings.max_queued_jobs_per_org:
            raise RateLimited(f"{queued} jobs of yours are queued or running; the limit is "
                              f"{ctx.settings.max_queued_jobs_per_org}", hint="wait for some to finish")
        recipient = conn.execute("SELECT id, enc_public FROM orgs WHERE name = ?", (spec.recipient,)).fetchone()
        jc = job_context(conn, spec, ctx.caller)
        effective = check_job(spec, recipient_exists=recipient is not None, **jc)
        release_rules.check_submitted(conn, spec, jc, effective)  # the release checks the spec decides
        check_daily_limits(conn, ctx.caller, jc["datasets"])
        if not recipient["enc_public"]:
            raise PolicyError(f"the recipient {spec.recipient!r} has registered no keys yet, so nothing could be "
                              "encrypted to it", hint="the recipient runs any cleanroom command once")
        job_id = new_id("job")
        spec_dict = spec.to_dict()
        conn.execute("INSERT INTO jobs (id, org_id, name, spec, effective_policy, status, phase, created_at)"
                     " VALUES (?,?,?,?,?,?,?,?)",
                     (job_id, ctx.caller.org_id, spec.name, dumps(spec_dict), dumps(effective.to_dict()),
                      "queued", None, now()))
        charged = ledger.charge(conn, job_id=job_id, recipient=spec.recipient, datasets=jc["datasets"],
                                effective=effective, room_epsilon=ctx.settings.dp_room_epsilon or None, now=now())
        epsilon = charged["epsilon"] if charged else None
        ctx.audit(conn, "job.submitted", "job", job_id,
                  {"name": spec.name, "inputs": spec.dataset_names(), "plugins": spec.plugin_ids(),
                   "recipient": spec.recipient, "epsilon": epsilon, "delta": charged["delta"] if charged else None,
                   "policy_versions": {n: d["policy_version"] for n, d in jc["datasets"].items()}})
        return caller_view(conn, ctx.caller, load_job(conn, job_id))[2]


# The jobs a caller may see, selected in SQL so that paging counts only those (the per-job check in
# Python stays the rule; this only narrows what it is asked about).
VISIBLE_JOBS = """
    j.org_id = :me OR json_extract(j.spec, '$.recipient') = :my_name OR EXISTS (
        SELECT 1 FROM json_each(j.spec, '$.inputs') AS i
        JOIN datasets AS d ON d.name = json_extract(i.value, '$.dataset') WHERE d.owner_id = :me)
"""
STATUSES = "^(queued|running|succeeded|failed|cancelled|timed_out|released|nothing_released)$"


@router.get("/jobs", tags=["jobs"])
def list_jobs(limit: int = Query(200, ge=1, le=1000), offset: int = Query(0, ge=0, le=10**9),
              status: str | None = Query(None, pattern=STATUSES),
              ctx: Ctx = Depends(get_ctx)) -> list[dict[str, Any]]:
    """Jobs you submitted, jobs over your datasets, jobs released to you; newest first, `limit` from
    `offset` (page with `offset += limit` until a page is shorter than `limit`). `status` filters on the
    status as you see it (an analyst's jobs: queued, running, released, nothing_released)."""
    staff = ctx.caller.has("admin", "reviewer")
    where = "1" if staff else VISIBLE_JOBS
    if status and staff:
        where = f"({where}) AND j.status = :status"
    # Without staff rights the filter applies to each job's view (an analyst's status is not the stored
    # one), so the page is cut after filtering: a filter on the stored status would answer for hidden ones.
    page = "LIMIT :limit OFFSET :offset" if staff or not status else ""
    out = []
    with ctx.store.read() as conn:
        rows = conn.execute(f"SELECT j.id FROM jobs AS j WHERE {where} ORDER BY j.created_at DESC, j.id {page}",
                            {"me": ctx.caller.org_id, "my_name": ctx.caller.name, "status": status,
                             "limit": limit, "offset": offset}).fetchall()
        for row in rows:
            try:
                view = caller_view(conn, ctx.caller, load_job(conn, row[0]))[2]
            except NotFound:
                continue
            if page or view["status"] == status:
                out.append(view)
    return out if page else out[offset:offset + limit]


@router.get("/jobs/{job_id}", tags=["jobs"], operation_id="get_job", response_model=Job, responses=errors(404))
def get_job(job_id: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """A job's status (for its analyst: queued, running, then at `outcome_at` released or
    nothing_released); input owners and staff also see its phase, timings, error class and reason."""
    with ctx.store.read() as conn:
        return caller_view(conn, ctx.caller, load_job(conn, job_id))[2]


@router.post("/jobs/{job_id}/cancel", tags=["jobs"], operation_id="cancel_job", response_model=Job,
              responses=errors(404, 409))
def cancel_job(job_id: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Cancel a queued or running job (its submitter, an owner of an input, or an admin). An analyst's
    cancel after the start means nothing is released, whether or not the job had ended already."""
    with ctx.store.tx() as conn:
        job = load_job(conn, job_id)
        rel, full, view = caller_view(conn, ctx.caller, job)
        if not rel & {"submitter", "owner", "staff"} or (rel == {"staff"} and not ctx.caller.is_admin):
            raise PermissionDenied("you cannot cancel this job")
        if full and job["status"] in TERMINAL:
            raise Conflict(f"the job is {job['status']} already")
        if not full and view["status"] not in ("queued", "running"):
            raise Conflict(f"the job's outcome is out already: {view['status']}")
        if job["status"] in TERMINAL:  # ended, but its analyst cannot know that yet: withdraw the release
            conn.execute("UPDATE jobs SET withdrawn_at = ? WHERE id = ?", (now(), job_id))
        else:
            conn.execute("UPDATE jobs SET status = 'cancelled', finished_at = ?, reason = ? WHERE id = ?",
                         (now(), f"cancelled by {ctx.caller.name}", job_id))
        job_event(conn, ctx, job_id, "job.cancelled", "job", job_id, {})
        return caller_view(conn, ctx.caller, load_job(conn, job_id))[2]


@router.get("/jobs/{job_id}/logs", tags=["jobs"], operation_id="get_job_logs", response_class=Response,
            responses=binary(description="the logs, an age ciphertext to the input owners") | errors(404))
def job_logs(job_id: str, ctx: Ctx = Depends(get_ctx)) -> Response:
    """The job's capped logs, encrypted to the input owners (decrypt with your org key)."""
    with ctx.store.read() as conn:
        job = load_job(conn, job_id)
        rel, full, _ = caller_view(conn, ctx.caller, job)
        if "owner" not in rel or not full:
            raise PermissionDenied("logs are for the owners of the job's input datasets (an owner that "
                                   "submitted the job or receives its result must own every input)")
        if not job["log_blob"]:
            raise NotFound("this job has no logs (yet)")
    return Response(ctx.store.blobs.read(job["log_blob"]), media_type="application/octet-stream")


# Releases ---------------------------------------------------------------------------------------

def load_release(conn: Any, release_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM releases WHERE id = ? OR job_id = ?", (release_id, release_id)).fetchone()
    if not row:
        raise NotFound("release not found")
    return row_dict(row, "manifest", "receipt", "review_by")


def release_state(conn: Any, release: dict[str, Any]) -> dict[str, Any]:
    approvals = {r["dataset"] for r in
                 conn.execute("SELECT dataset FROM release_approvals WHERE release_id = ?", (release["id"],))}
    rejections = {r["dataset"]: r["reason"] for r in conn.execute(
        "SELECT dataset, reason FROM release_rejections WHERE release_id = ?", (release["id"],))}
    pending = [d for d in release["review_by"] if d not in approvals | set(rejections)]
    return {"approved_by": sorted(approvals), "rejected_by": sorted(rejections), "rejection_reasons": rejections,
            "pending_review": pending, "downloadable": not pending and not rejections}


def release_relation(conn: Any, caller: Caller, release: dict[str, Any]) -> set[str]:
    """The caller's relation to a release's job. A caller who does not see the job's outcome
    (`sees_outcome`) sees the release only once it is released to its recipient: before that, not
    its existence, hashes, sizes, checks or artifact count (NotFound, as for a job that failed)."""
    job = load_job(conn, release["job_id"])
    owner_ids = input_owner_ids(conn, job)
    rel = visible_job(caller, job, owner_ids)
    if not sees_outcome(caller, rel, owner_ids):
        if released(conn, job, now()) is None:
            raise NotFound("release not found")
        rel.add("released")  # seen as released: shown with the job's outcome time, not its end
    return rel


def release_view(conn: Any, release: dict[str, Any], rel: set[str] | None = None) -> dict[str, Any]:
    arts = [dict(r) for r in conn.execute("SELECT name, blob, size FROM release_artifacts WHERE release_id = ?"
                                          " ORDER BY name", (release["id"],))]
    recipient = conn.execute("SELECT name FROM orgs WHERE id = ?", (release["recipient_id"],)).fetchone()[0]
    created = release["created_at"]
    if rel and "released" in rel:  # when the job ended is for the owners: its analyst sees the outcome time
        created = conn.execute("SELECT reveal_at FROM jobs WHERE id = ?", (release["job_id"],)).fetchone()[0]
    return {"id": release["id"], "job_id": release["job_id"], "recipient": recipient,
            "manifest": release["manifest"], "receipt": release["receipt"], "review_by": release["review_by"],
            "created_at": created, "artifacts": arts, **release_state(conn, release)}


@router.get("/releases", tags=["releases"])
def list_releases(limit: int = Query(200, ge=1, le=1000), offset: int = Query(0, ge=0, le=10**9),
                  ctx: Ctx = Depends(get_ctx)) -> list[dict[str, Any]]:
    """Releases addressed to you or over your data; newest first, `limit` from `offset`."""
    where = "1" if ctx.caller.has("admin", "reviewer") else VISIBLE_JOBS
    out = []
    with ctx.store.read() as conn:
        for row in conn.execute(f"SELECT r.id FROM releases AS r JOIN jobs AS j ON j.id = r.job_id WHERE {where}"
                                " ORDER BY r.created_at DESC, r.id LIMIT :limit OFFSET :offset",
                                {"me": ctx.caller.org_id, "my_name": ctx.caller.name, "limit": limit,
                                 "offset": offset}).fetchall():
            release = load_release(conn, row[0])
            try:
                rel = release_relation(conn, ctx.caller, release)
            except NotFound:
                continue
            out.append(release_view(conn, release, rel))
    return out


@router.get("/releases/{release_id}", tags=["releases"], operation_id="get_release", response_model=Release,
            responses=errors(404))
def get_release(release_id: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """A release's manifest, check results, receipt and review state (by release or job id)."""
    with ctx.store.read() as conn:
        release = load_release(conn, release_id)
        rel = release_relation(conn, ctx.caller, release)
        return release_view(conn, release, rel)


class ReleaseApprovalIn(BaseModel):
    payload: dict[str, Any]
    signature: str


RELEASE_DECISION_KEYS = {"type", "release_id", "dataset", "manifest_sha256", "org", "issued_at"}


def _check_release_decision(conn: Any, ctx: Ctx, release: dict[str, Any], body: ReleaseApprovalIn,
                            kind: str, keys: set[str]) -> None:
    """The checks an approval and a rejection share: signature, release, dataset owner, manifest, once."""
    p = body.payload
    if set(p) != keys:
        raise ValidationError(f"a {kind} payload has exactly the keys {sorted(keys)}")
    check_signed(conn, ctx, p, body.signature, kind)
    if p["release_id"] != release["id"]:
        raise ValidationError("the signed payload names another release")
    if p["dataset"] not in release["review_by"]:
        raise ValidationError(f"{p['dataset']} does not hold this release for review")
    ds = load_dataset(conn, p["dataset"])
    if ds["owner_id"] != ctx.caller.org_id:
        raise PermissionDenied(f"only the owner of {p['dataset']} can decide for it")
    manifest_sha = hashlib.sha256(dumps(release["manifest"]).encode()).hexdigest()
    if p["manifest_sha256"] != manifest_sha:
        raise Conflict(f"the {kind} is for another manifest")
    for table, done in (("release_approvals", "approved"), ("release_rejections", "rejected")):
        if conn.execute(f"SELECT 1 FROM {table} WHERE release_id = ? AND dataset = ?",
                        (release["id"], p["dataset"])).fetchone():
            raise Conflict(f"{p['dataset']} {done} this release already")


@router.post("/releases/{release_id}/approve", tags=["releases"], operation_id="approve_release",
              response_model=Release, responses=errors(404, 409, 422))
def approve_release(release_id: str, body: ReleaseApprovalIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """An input owner's signed approval of a release that its policy holds for review."""
    p = body.payload
    with ctx.store.tx() as conn:
        release = load_release(conn, release_id)
        _check_release_decision(conn, ctx, release, body, "release-approval", RELEASE_DECISION_KEYS)
        conn.execute("INSERT INTO release_approvals (release_id, dataset, org_id, payload, signature, created_at)"
                     " VALUES (?,?,?,?,?,?)", (release["id"], p["dataset"], ctx.caller.org_id, json.dumps(p),
                                                body.signature, now()))
        job_event(conn, ctx, release["job_id"], "release.approved", "release", release["id"], {"dataset": p["dataset"]})
        return release_view(conn, release)


@router.post("/releases/{release_id}/reject", tags=["releases"], operation_id="reject_release",
              response_model=Release, responses=errors(404, 409, 422))
def reject_release(release_id: str, body: ReleaseApprovalIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """An input owner's signed rejection: the recipient can never download this release."""
    p = body.payload
    with ctx.store.tx() as conn:
        release = load_release(conn, release_id)
        _check_release_decision(conn, ctx, release, body, "release-rejection", RELEASE_DECISION_KEYS | {"reason"})
        if not isinstance(p["reason"], str) or len(p["reason"]) > 2000:
            raise ValidationError("reason must be text of at most 2000 characters")
        conn.execute("INSERT INTO release_rejections (release_id, dataset, org_id, reason, payload, signature,"
                     " created_at) VALUES (?,?,?,?,?,?,?)", (release["id"], p["dataset"], ctx.caller.org_id,
                                                             p["reason"], json.dumps(p), body.signature, now()))
        job_event(conn, ctx, release["job_id"], "release.rejected", "release", release["id"], {"dataset": p["dataset"]})
        return release_view(conn, release)


@router.get("/releases/{release_id}/artifacts/{name:path}", tags=["releases"], operation_id="get_artifact",
            response_class=Response,
            responses=binary(description="the artifact, an age ciphertext to the recipient") | errors(404))
def get_artifact(release_id: str, name: str, ctx: Ctx = Depends(get_ctx)) -> Response:
    """An encrypted artifact: for the recipient once reviews are done, and for input owners."""
    with ctx.store.read() as conn:
        release = load_release(conn, release_id)
        rel = release_relation(conn, ctx.caller, release)
        is_recipient = release["recipient_id"] == ctx.caller.org_id
        if "owner" not in rel and not is_recipient:
            raise PermissionDenied("only the recipient and the input owners can download artifacts")
        # a recipient that is not an input owner got here only for a released release (release_relation)
        row = conn.execute("SELECT blob FROM release_artifacts WHERE release_id = ? AND name = ?",
                           (release["id"], name)).fetchone()
        if not row:
            raise NotFound(f"no artifact {name!r}")
    return Response(ctx.store.blobs.read(row[0]), media_type="application/octet-stream")
