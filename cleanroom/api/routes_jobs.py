"""Jobs (submitted by analysts, checked against every input's policy and approvals) and releases."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel

from cleanroom.api.authz import Caller
from cleanroom.api.common import DEFAULT_LIMIT, After, JobIn, Limit
from cleanroom.api.deps import Ctx, get_ctx
from cleanroom.api.job_views import (
    caller_view,
    check_release_rules,
    job_context,
    job_event,
    job_page,
    one_release,
    release_page,
)
from cleanroom.api.openapi import binary, errors
from cleanroom.api.schemas import Job, JobPage, JobStatus, Release, ReleasePage
from cleanroom.api.statements import RELEASE_DECISION_KEYS, RELEASE_REJECTION_KEYS, check_keys, check_signed
from cleanroom.crypto import digest
from cleanroom.errors import Conflict, NotFound, PermissionDenied, PolicyError, RateLimited, ValidationError
from cleanroom.sandbox.vocabulary import TERMINAL_STATUSES
from cleanroom.store import datasets, jobs, ledger, orgs, releases
from cleanroom.store.db import new_id, now

router = APIRouter()


def check_daily_limits(conn: Any, caller: Caller, inputs: dict[str, Any]) -> None:
    """`[limits] max_jobs_per_day` of an input's policy: jobs per analyst org on that dataset in 24 hours
    (every job outcome is one bit its analyst learns; this caps them). Owners of the dataset are exempt."""
    since = now() - 86400
    for name, ds in sorted(inputs.items()):
        cap = dict(ds["policy"].limits).get("max_jobs_per_day")
        if cap is None or ds["owner_id"] == caller.org_id:
            continue
        times = jobs.submitted_since(conn, org_id=caller.org_id, dataset=name, since=since)
        if len(times) >= int(cap):
            wait = max(1, math.ceil(times[len(times) - int(cap)] + 86400 - now()))
            raise RateLimited(
                f"the policy of {name} allows {int(cap)} jobs a day per analyst org; {caller.name} "
                f"submitted {len(times)} in the last 24 hours",
                hint=f"try again in {wait // 3600} h {wait % 3600 // 60} min",
            )


@router.post(
    "/jobs", status_code=201, tags=["jobs"], operation_id="submit_job", response_model=Job, responses=errors(409, 429)
)
def submit_job(body: JobIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Submit a job spec (TOML). It is checked against every input's policy and the approvals."""
    from cleanroom.jobspec import check_job, check_time_budget, parse_jobspec

    spec = parse_jobspec(body.spec)
    check_time_budget(spec, ctx.settings.job_time_budget_seconds)
    with ctx.store.tx() as conn:
        queued = jobs.active_count(conn, org_id=ctx.caller.org_id)
        if queued >= ctx.settings.max_queued_jobs_per_org:
            raise RateLimited(
                f"{queued} jobs of yours are queued or running; the limit is {ctx.settings.max_queued_jobs_per_org}",
                hint="wait for some to finish",
            )
        recipient = orgs.by_name(conn, name=spec.recipient)
        jc = job_context(conn, spec, ctx.caller)
        effective = check_job(spec, recipient_exists=recipient is not None, **jc)
        check_release_rules(conn, spec, jc, effective)  # the release checks the spec decides
        check_daily_limits(conn, ctx.caller, jc["datasets"])
        if not recipient or not recipient["enc_public"]:
            raise PolicyError(
                f"the recipient {spec.recipient!r} has registered no keys yet, so nothing could be encrypted to it",
                hint="the recipient runs any cleanroom command once",
            )
        job_id = new_id("job")
        jobs.create(
            conn,
            job_id=job_id,
            org_id=ctx.caller.org_id,
            name=spec.name,
            spec=spec.to_dict(),
            effective_policy=effective.to_dict(),
            created_at=now(),
        )
        charged = ledger.charge(
            conn,
            job_id=job_id,
            recipient=spec.recipient,
            datasets=jc["datasets"],
            effective=effective,
            room_epsilon=ctx.settings.dp_room_epsilon or None,
            now=now(),
        )
        epsilon = charged["epsilon"] if charged else None
        ctx.audit(
            conn,
            "job.submitted",
            "job",
            job_id,
            {
                "name": spec.name,
                "inputs": spec.dataset_names(),
                "plugins": spec.plugin_ids(),
                "recipient": spec.recipient,
                "epsilon": epsilon,
                "delta": charged["delta"] if charged else None,
                "policy_versions": {n: d["policy_version"] for n, d in jc["datasets"].items()},
            },
        )
        return caller_view(conn, ctx.caller, job_id)[2]


STATUSES = f"^({'|'.join(JobStatus)})$"


@router.get("/jobs", tags=["jobs"], operation_id="list_jobs", response_model=JobPage)
def list_jobs(
    limit: Limit = DEFAULT_LIMIT,
    after: After = None,
    status: str | None = Query(None, pattern=STATUSES),
    ctx: Ctx = Depends(get_ctx),
) -> dict[str, Any]:
    """Jobs you submitted, jobs over your datasets, jobs released to you; newest first, `limit` per page
    (pass `next` as `after` for the following page). `status` filters on the status as you see it (an
    analyst's jobs: queued, running, released, nothing_released)."""
    return job_page(ctx, limit=limit, after=after, status=status)


@router.get("/jobs/{job_id}", tags=["jobs"], operation_id="get_job", response_model=Job, responses=errors(404))
def get_job(job_id: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """A job's status (for its analyst: queued, running, then at `outcome_at` released or
    nothing_released); input owners and staff also see its phase, timings, error class and reason."""
    with ctx.store.read() as conn:
        return caller_view(conn, ctx.caller, job_id)[2]


@router.post(
    "/jobs/{job_id}/cancel", tags=["jobs"], operation_id="cancel_job", response_model=Job, responses=errors(404, 409)
)
def cancel_job(job_id: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Cancel a queued or running job (its submitter, an owner of an input, or an admin). An analyst's
    cancel after the start means nothing is released, whether or not the job had ended already."""
    with ctx.store.tx() as conn:
        job = jobs.load(conn, job_id=job_id)
        rel, full, view = caller_view(conn, ctx.caller, job_id)
        if not rel & {"submitter", "owner", "staff"} or (rel == {"staff"} and not ctx.caller.is_admin):
            raise PermissionDenied("you cannot cancel this job")
        if full and job["status"] in TERMINAL_STATUSES:
            raise Conflict(f"the job is {job['status']} already")
        if not full and view["status"] not in ("queued", "running"):
            raise Conflict(f"the job's outcome is out already: {view['status']}")
        if job["status"] in TERMINAL_STATUSES:  # ended, but its analyst cannot know that yet: withdraw the release
            jobs.withdraw(conn, job_id=job_id, at=now())
        else:
            jobs.cancel(conn, job_id=job_id, reason=f"cancelled by {ctx.caller.name}", at=now())
        job_event(conn, ctx.caller.name, job_id, "job.cancelled", "job", job_id, {})
        return caller_view(conn, ctx.caller, job_id)[2]


@router.get(
    "/jobs/{job_id}/logs",
    tags=["jobs"],
    operation_id="get_job_logs",
    response_class=Response,
    responses=binary(description="the logs, an age ciphertext to the input owners") | errors(404),
)
def job_logs(job_id: str, ctx: Ctx = Depends(get_ctx)) -> Response:
    """The job's capped logs, encrypted to the input owners (decrypt with your org key)."""
    with ctx.store.read() as conn:
        job = jobs.load(conn, job_id=job_id)
        rel, full, _ = caller_view(conn, ctx.caller, job_id)
        if "owner" not in rel or not full:
            raise PermissionDenied(
                "logs are for the owners of the job's input datasets (an owner that "
                "submitted the job or receives its result must own every input)"
            )
        if not job["log_blob"]:
            raise NotFound("this job has no logs (yet)")
    return Response(ctx.store.blobs.read(job["log_blob"]), media_type="application/octet-stream")


# Releases ---------------------------------------------------------------------------------------


@router.get("/releases", tags=["releases"], operation_id="list_releases", response_model=ReleasePage)
def list_releases(limit: Limit = DEFAULT_LIMIT, after: After = None, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Releases addressed to you or over your data; newest first, `limit` per page (pass `next` as
    `after` for the following page)."""
    return release_page(ctx, limit=limit, after=after)


@router.get(
    "/releases/{release_id}",
    tags=["releases"],
    operation_id="get_release",
    response_model=Release,
    responses=errors(404),
)
def get_release(release_id: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """A release's manifest, check results, receipt and review state (by release or job id)."""
    with ctx.store.read() as conn:
        return one_release(conn, ctx.caller, release_id)[2]


class ReleaseApprovalIn(BaseModel):
    payload: dict[str, Any]
    signature: str


def _check_release_decision(
    conn: Any, ctx: Ctx, release: dict[str, Any], body: ReleaseApprovalIn, kind: str, keys: frozenset[str]
) -> None:
    """The checks an approval and a rejection share: signature, release, dataset owner, manifest, once."""
    p = body.payload
    check_keys(p, keys, kind)
    check_signed(conn, ctx.caller, p, body.signature, kind)
    if p["release_id"] != release["id"]:
        raise ValidationError("the signed payload names another release")
    if p["dataset"] not in release["review_by"]:
        raise ValidationError(f"{p['dataset']} does not hold this release for review")
    ds = datasets.load(conn, name=p["dataset"])
    if ds["owner_id"] != ctx.caller.org_id:
        raise PermissionDenied(f"only the owner of {p['dataset']} can decide for it")
    # the digest of the manifest as a value, as the receipt binds it (not of the text it is stored as)
    if p["manifest_sha256"] != digest(release["manifest"]):
        raise Conflict(f"the {kind} is for another manifest")
    done = releases.decided(conn, release_id=release["id"], dataset=p["dataset"])
    if done:
        raise Conflict(f"{p['dataset']} {done} this release already")


@router.post(
    "/releases/{release_id}/approve",
    tags=["releases"],
    operation_id="approve_release",
    response_model=Release,
    responses=errors(404, 409, 422),
)
def approve_release(release_id: str, body: ReleaseApprovalIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """An input owner's signed approval of a release that its policy holds for review."""
    p = body.payload
    with ctx.store.tx() as conn:
        release = releases.load(conn, ref=release_id)
        _check_release_decision(conn, ctx, release, body, "release-approval", RELEASE_DECISION_KEYS)  # type: ignore[arg-type]
        releases.approve(
            conn,
            release_id=release["id"],
            dataset=p["dataset"],
            org_id=ctx.caller.org_id,
            payload=p,
            signature=body.signature,
            at=now(),
        )
        job_event(
            conn,
            ctx.caller.name,
            release["job_id"],
            "release.approved",
            "release",
            release["id"],
            {"dataset": p["dataset"]},
        )
        return one_release(conn, ctx.caller, release["id"])[2]


@router.post(
    "/releases/{release_id}/reject",
    tags=["releases"],
    operation_id="reject_release",
    response_model=Release,
    responses=errors(404, 409, 422),
)
def reject_release(release_id: str, body: ReleaseApprovalIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """An input owner's signed rejection: the recipient can never download this release."""
    p = body.payload
    with ctx.store.tx() as conn:
        release = releases.load(conn, ref=release_id)
        _check_release_decision(conn, ctx, release, body, "release-rejection", RELEASE_REJECTION_KEYS)  # type: ignore[arg-type]
        if not isinstance(p["reason"], str) or len(p["reason"]) > 2000:
            raise ValidationError("reason must be text of at most 2000 characters")
        releases.reject(
            conn,
            release_id=release["id"],
            dataset=p["dataset"],
            org_id=ctx.caller.org_id,
            reason=p["reason"],
            payload=p,
            signature=body.signature,
            at=now(),
        )
        job_event(
            conn,
            ctx.caller.name,
            release["job_id"],
            "release.rejected",
            "release",
            release["id"],
            {"dataset": p["dataset"]},
        )
        return one_release(conn, ctx.caller, release["id"])[2]


@router.get(
    "/releases/{release_id}/artifacts/{name:path}",
    tags=["releases"],
    operation_id="get_artifact",
    response_class=Response,
    responses=binary(description="the artifact, an age ciphertext to the recipient") | errors(404),
)
def get_artifact(release_id: str, name: str, ctx: Ctx = Depends(get_ctx)) -> Response:
    """An encrypted artifact: for the recipient once reviews are done, and for input owners."""
    with ctx.store.read() as conn:
        release, rel, _ = one_release(conn, ctx.caller, release_id)
        is_recipient = release["recipient_id"] == ctx.caller.org_id
        if "owner" not in rel and not is_recipient:
            raise PermissionDenied("only the recipient and the input owners can download artifacts")
        # a recipient that is not an input owner got here only for a released release (release_relation)
        blob = releases.artifact_blob(conn, release_id=release["id"], name=name)
        if not blob:
            raise NotFound(f"no artifact {name!r}")
    return Response(ctx.store.blobs.read(blob), media_type="application/octet-stream")
