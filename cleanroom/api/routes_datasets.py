"""Datasets: a two-step upload (declare, then stream the ciphertext), listing, policy versions.

The API only ever sees ciphertext (checked to be an age file), the schema, the mock sample and
the policy. Nothing is visible until the whole ciphertext arrived and its sha256 matched.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from cleanroom.api.authz import require_dataset_owner
from cleanroom.api.common import DEFAULT_LIMIT, After, Limit, check_not_withdrawn
from cleanroom.api.deps import Ctx, get_ctx
from cleanroom.api.openapi import errors, raw_body
from cleanroom.api.schemas import (
    Dataset,
    DatasetPage,
    DatasetUploaded,
    DatasetWithdrawn,
    UploadCancelled,
    UploadDeclared,
)
from cleanroom.api.views import dataset_detail, dataset_page, dataset_view
from cleanroom.crypto import digest
from cleanroom.errors import Conflict, NotFound, TooLarge, ValidationError
from cleanroom.identifiers import check_name
from cleanroom.published import publish
from cleanroom.sandbox.vocabulary import PID, SHA256_HEX
from cleanroom.store import datasets, jobs, orgs
from cleanroom.store.db import dumps, new_id, now

router = APIRouter()
AGE_MAGIC = b"age-encryption.org/v1\n"
MAX_MOCK_ROWS = 1000
MAX_META_BYTES = 2 * 2**20


class UploadIn(BaseModel):
    name: str
    description: str = Field(default="", max_length=2000)
    schema_: dict[str, Any] = Field(alias="schema")
    row_count: int = Field(ge=0, le=2**63 - 1)
    mock: list[dict[str, Any]]
    dropped: list[str] = []
    policy: str = Field(max_length=64_000)
    sha256: str
    size: int = Field(gt=0, le=2**63 - 1)


def _validate_meta(body: UploadIn) -> dict[str, Any]:
    from cleanroom.policy import parse_policy

    check_name("dataset", body.name)
    if body.name == "uploads":
        raise ValidationError("'uploads' is a reserved name: choose another dataset name")
    if not SHA256_HEX.fullmatch(body.sha256):
        raise ValidationError("sha256 must be 64 lowercase hex characters")
    columns = body.schema_.get("columns")
    if not isinstance(columns, list) or not columns or not all(isinstance(c, dict) and "name" in c for c in columns):
        raise ValidationError("schema must have a non-empty 'columns' list of {name, type}")
    names = [c["name"] for c in columns]
    if PID not in names:
        raise ValidationError(
            f"the schema has no {PID} column: pseudonymise the id column on the "
            "owner's machine (cleanroom dataset upload --id-column)"
        )
    if len(body.mock) > MAX_MOCK_ROWS:
        raise ValidationError(f"the mock sample has more than {MAX_MOCK_ROWS} rows")
    for index, row in enumerate(body.mock):
        extra = set(row) - set(names)
        if extra:
            raise ValidationError(f"mock row {index} has columns not in the schema: {sorted(extra)}")
    if len(dumps(body.schema_)) + len(dumps(body.mock)) > MAX_META_BYTES:
        raise TooLarge("schema and mock sample are larger than 2 MiB")
    policy = parse_policy(body.policy)
    return {"policy": policy, "columns": names}


def check_policy_fits(conn: Any, policy: Any, columns: list[str]) -> None:
    """The policy's recipients are orgs of this room and its [columns.X] rules name the dataset's columns
    (a misspelt name would otherwise be accepted and silently do nothing)."""
    import difflib

    from cleanroom.errors import PolicyError

    names = orgs.names(conn)
    unknown = [r for r in policy.recipients if r not in names]
    if unknown:
        close = {r: difflib.get_close_matches(r, names, n=1) for r in unknown}
        guesses = "; ".join(f"did you mean {c[0]!r} for {r!r}?" for r, c in close.items() if c)
        raise PolicyError(
            f"[release] recipients names orgs that are not in this room: {unknown}. Nothing was stored",
            hint=(guesses + " " if guesses else "") + "fix the names in the policy, or ask "
            "the room's admin to create the org first (cleanroom org create NAME --role analyst)",
            details={"unknown_recipients": unknown},
        )
    missing = [c.name for c in policy.columns if c.name not in columns]
    if missing:
        close = {m: difflib.get_close_matches(m, columns, n=1) for m in missing}
        guesses = "; ".join(f"did you mean {c[0]!r} for {m!r}?" for m, c in close.items() if c)
        raise PolicyError(
            f"the policy has [columns.X] rules for columns the dataset does not have: {missing}. Nothing was stored",
            hint=(guesses + " " if guesses else "") + "fix or remove those "
            f"[columns.X] tables; the dataset's columns are {columns}",
            details={"unknown_columns": missing, "columns": columns},
        )


@router.post(
    "/datasets/uploads",
    status_code=201,
    tags=["datasets"],
    operation_id="declare_upload",
    response_model=UploadDeclared,
    responses=errors(409),
)
def create_upload(body: UploadIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Declare a dataset (schema, mock, policy, ciphertext hash); then PUT the ciphertext.

    The declaration reserves the name until the upload is done or expires. Declaring the very same
    upload again (same org, name and metadata) returns the pending one, so a retry is harmless.
    """
    checked = _validate_meta(body)
    if body.size > ctx.settings.max_upload_bytes:
        raise TooLarge(
            f"the ciphertext is larger than the room's limit of {ctx.settings.max_upload_bytes} bytes",
            hint="ask the operator to raise CLEANROOM_MAX_UPLOAD_BYTES",
        )
    meta = body.model_dump(by_alias=True)
    meta["policy_dict"] = checked["policy"].to_dict()
    ttl = ctx.settings.upload_ttl_seconds
    with ctx.store.tx() as conn:
        check_policy_fits(conn, checked["policy"], checked["columns"])
        ds = datasets.get(conn, name=body.name)
        if ds and ds["owner_id"] == ctx.caller.org_id and ds["sha256"] == body.sha256:
            raise Conflict(
                f"dataset {body.name!r} is uploaded already with this ciphertext: nothing to do",
                details={"dataset": body.name, "sha256": body.sha256, "done": True},
            )
        if ds:
            raise Conflict(
                f"a dataset named {body.name!r} exists already",
                hint="choose another name; data changes are new datasets",
            )
        check_name("dataset", body.name, datasets.names(conn))
        dup = datasets.named_by_sha256(conn, sha256=body.sha256)
        if dup:
            raise Conflict(f"this ciphertext was uploaded already as {dup!r} (replayed upload)")
        pending = datasets.pending_uploads(conn, name=body.name, sha256=body.sha256, since=now() - ttl)
        for row in pending:
            if row["org_id"] == ctx.caller.org_id and row["name"] == body.name and dumps(row["meta"]) == dumps(meta):
                return {"upload_id": row["id"], "put": f"/datasets/uploads/{row['id']}", "retried": True}
        for row in pending:
            if row["name"] != body.name:
                continue
            if row["org_id"] == ctx.caller.org_id:
                raise Conflict(
                    f"an upload of {body.name!r} with other metadata or bytes is pending already",
                    hint=f"finish it (PUT /datasets/uploads/{row['id']}), withdraw it (cleanroom "
                    f"dataset cancel-upload {row['id']}), or wait until it expires ({ttl} s "
                    "after it was declared)",
                    details={"pending_upload": row["id"]},
                )
            raise Conflict(
                f"the name {body.name!r} is reserved by another org's pending upload", hint="choose another name"
            )
        if pending:
            raise Conflict("this ciphertext is declared already by a pending upload (replayed upload)")
        upload_id = new_id("upl")
        datasets.add_upload(conn, upload_id=upload_id, org_id=ctx.caller.org_id, meta=meta, created_at=now())
    return {"upload_id": upload_id, "put": f"/datasets/uploads/{upload_id}"}


def _expired(ctx: Ctx, upload: Any) -> bool:
    return bool(upload["created_at"] < now() - ctx.settings.upload_ttl_seconds)


def _summary(conn: Any, name: str) -> dict[str, Any]:
    return dataset_view(datasets.listed(conn, name=name))


async def _answer_retry(request: Request, ctx: Ctx, meta: dict[str, Any]) -> dict[str, Any]:
    """A PUT to an upload that is done already: the same bytes get the dataset, other bytes a 409.
    The body is only hashed (never stored), so a retry changes nothing."""
    import hashlib

    digest, size = hashlib.sha256(), 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > meta["size"]:
            break
        digest.update(chunk)
    if size != meta["size"] or digest.hexdigest() != meta["sha256"]:
        raise Conflict(
            f"this upload is done already: dataset {meta['name']!r} holds other bytes; nothing was stored or changed",
            details={"dataset": meta["name"], "done": True},
        )
    with ctx.store.read() as conn:
        return {**_summary(conn, meta["name"]), "already_done": True}


@router.put(
    "/datasets/uploads/{upload_id}",
    tags=["datasets"],
    operation_id="upload_dataset",
    response_model=DatasetUploaded,
    responses=errors(404, 409, 507),
    openapi_extra=raw_body(
        "application/octet-stream",
        description="the age ciphertext, exactly the `size` bytes with the `sha256` declared",
    ),
)
async def put_upload(upload_id: str, request: Request, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Stream the ciphertext. The dataset appears only when all of it arrived intact.

    A failed PUT never removes a stored blob (blobs are shared by content; only `admin sweep`
    deletes, and only what no record references). Retrying the PUT of a done upload with the same
    bytes answers with the dataset (`already_done`)."""
    with ctx.store.read() as conn:
        upload = datasets.upload(conn, upload_id=upload_id, org_id=ctx.caller.org_id)
    if not upload:
        raise NotFound("no such upload; declare it first with POST /datasets/uploads")
    meta = upload["meta"]
    if upload["done_at"] is not None:
        return await _answer_retry(request, ctx, meta)
    if _expired(ctx, upload):
        raise Conflict("this upload expired before its ciphertext arrived", hint="declare it again")
    writer = ctx.store.blobs.writer(max_bytes=min(meta["size"], ctx.settings.max_upload_bytes))
    head = b""
    try:
        async for chunk in request.stream():
            if len(head) < len(AGE_MAGIC):
                head += chunk[: len(AGE_MAGIC)]
                if not AGE_MAGIC.startswith(head[: len(AGE_MAGIC)]):
                    raise ValidationError(
                        "the upload is not an age ciphertext: the room only accepts data encrypted to its key",
                        hint="use cleanroom dataset upload",
                    )
            writer.write(chunk)
        if writer.size != meta["size"]:
            raise ValidationError(
                f"upload is incomplete: got {writer.size} of {meta['size']} bytes", hint="retry the upload"
            )
        sha, size = writer.commit(meta["sha256"])
    except BaseException:
        writer.abort()  # only this request's own temporary file; never a committed blob
        raise
    # From here on the blob is committed and may be shared with other records: a failure below
    # leaves it in place (an orphan at worst, for the sweep to judge), never deletes it.
    with ctx.store.tx() as conn:
        current = datasets.upload(conn, upload_id=upload_id)
        if current is None:
            raise NotFound("the upload was removed meanwhile (it expired)", hint="declare it again")
        if current["done_at"] is not None:  # a concurrent PUT of the same bytes finished first
            return {**_summary(conn, meta["name"]), "already_done": True}
        if _expired(ctx, current):
            raise Conflict("this upload expired before its ciphertext arrived", hint="declare it again")
        if datasets.exists(conn, name=meta["name"], sha256=sha):
            raise Conflict("the dataset was created meanwhile by another upload")
        if not ctx.store.blobs.exists(sha):
            raise ValidationError("the stored ciphertext vanished before it was recorded", hint="retry the upload")
        # published: declared facts only, and mock rows made from them, whatever the client sent
        schema, mock = publish(meta["schema"], meta["policy_dict"], len(meta["mock"]))
        t = now()
        datasets.create(
            conn,
            name=meta["name"],
            owner_id=ctx.caller.org_id,
            sha256=sha,
            size=size,
            row_count=meta["row_count"],
            schema=schema,
            mock=mock,
            dropped=meta["dropped"],
            description=meta["description"],
            created_at=t,
        )
        policy = meta["policy_dict"]
        policy_sha = digest(policy, escape_non_ascii=True)  # Policy.sha256(): stored and signed in this form
        datasets.add_policy(
            conn, name=meta["name"], version=1, text=meta["policy"], policy=policy, sha256=policy_sha, created_at=t
        )
        datasets.finish_upload(conn, upload_id=upload_id, at=t)
        ctx.audit(
            conn,
            "dataset.uploaded",
            "dataset",
            meta["name"],
            {"sha256": sha, "size": size, "rows": meta["row_count"], "policy_version": 1, "policy_sha256": policy_sha},
        )
        return _summary(conn, meta["name"])


@router.delete(
    "/datasets/uploads/{upload_id}",
    tags=["datasets"],
    operation_id="cancel_upload",
    response_model=UploadCancelled,
    responses=errors(404, 409),
)
def cancel_upload(upload_id: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Withdraw your own pending upload, freeing its name (stored bytes stay for the sweep to judge)."""
    with ctx.store.tx() as conn:
        upload = datasets.upload(conn, upload_id=upload_id, org_id=ctx.caller.org_id)
        if not upload:
            raise NotFound("no such upload")
        if upload["done_at"] is not None:
            raise Conflict(
                f"this upload is done already: dataset {upload['name']!r} exists",
                hint="a dataset is immutable; new data is a new upload under a new name",
            )
        datasets.delete_upload(conn, upload_id=upload_id)
    return {"upload_id": upload_id, "name": upload["name"], "cancelled": True}


@router.get("/datasets", tags=["datasets"], operation_id="list_datasets", response_model=DatasetPage)
def list_datasets(limit: Limit = DEFAULT_LIMIT, after: After = None, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Every dataset in the room by name: owner, size, rows, columns, policy version. Withdrawn datasets
    are listed (with `withdrawn_at`) for their owner and admins only. `limit` per page; pass `next` as
    `after` for the following page."""
    return dataset_page(ctx, limit=limit, after=after)


@router.get(
    "/datasets/{name}", tags=["datasets"], operation_id="get_dataset", response_model=Dataset, responses=errors(404)
)
def get_dataset(name: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """One dataset: schema, policy, mock sample and ciphertext hash."""
    with ctx.store.read() as conn:
        return dataset_detail(conn, ctx.caller, name)


class PolicyIn(BaseModel):
    policy: str = Field(max_length=64_000)


@router.put(
    "/datasets/{name}/policy",
    tags=["datasets"],
    operation_id="update_policy",
    response_model=Dataset,
    responses=errors(404, 409),
)
def update_policy(name: str, body: PolicyIn, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Publish a new policy version; approvals bound to older versions stop counting."""
    from cleanroom.policy import parse_policy

    parsed = parse_policy(body.policy)
    policy, policy_sha = parsed.to_dict(), parsed.sha256()
    with ctx.store.tx() as conn:
        ds = datasets.load(conn, name=name)
        require_dataset_owner(ctx.caller, ds)  # type: ignore[arg-type]
        check_not_withdrawn(ds)
        check_policy_fits(conn, parsed, [c.get("name") for c in ds["schema"].get("columns", [])])
        if policy_sha == datasets.policy(conn, name=name, version=ds["policy_version"])["sha256"]:
            raise Conflict("the policy is unchanged")
        version = ds["policy_version"] + 1
        datasets.add_policy(
            conn, name=name, version=version, text=body.policy, policy=policy, sha256=policy_sha, created_at=now()
        )
        ctx.audit(
            conn, "dataset.policy_changed", "dataset", name, {"policy_version": version, "policy_sha256": policy_sha}
        )
        return dataset_detail(conn, ctx.caller, name)


@router.post(
    "/datasets/{name}/withdraw",
    tags=["datasets"],
    operation_id="withdraw_dataset",
    response_model=DatasetWithdrawn,
    responses=errors(404, 409),
)
def withdraw_dataset(name: str, ctx: Ctx = Depends(get_ctx)) -> dict[str, Any]:
    """Withdraw your dataset: gone from other orgs' lists, no new jobs (queued ones are cancelled, running
    ones finish); its ciphertext is left for `admin sweep`; receipts of past releases still verify."""
    with ctx.store.tx() as conn:
        ds = datasets.load(conn, name=name)
        require_dataset_owner(ctx.caller, ds)  # type: ignore[arg-type]
        if ds["withdrawn_at"] is not None:
            raise Conflict(f"dataset {name!r} is withdrawn already", details={"withdrawn_at": ds["withdrawn_at"]})
        uses = jobs.active_over(conn, dataset=name)
        queued = [job_id for job_id, status in uses if status == "queued"]
        running = [job_id for job_id, status in uses if status == "running"]
        t = now()
        for job_id in queued:  # not started: no data touched, so nothing about the data is revealed
            jobs.cancel(conn, job_id=job_id, reason=f"input dataset {name} was withdrawn by its owner", at=t)
            ctx.audit(conn, "job.cancelled", "job", job_id, {"reason": "input dataset withdrawn", "dataset": name})
        datasets.withdraw(conn, name=name, at=t)
        ctx.audit(
            conn,
            "dataset.withdrawn",
            "dataset",
            name,
            {"sha256": ds["sha256"], "cancelled_jobs": queued, "running_jobs": running},
        )
        view = _summary(conn, name)
    return {**view, "cancelled_jobs": queued, "running_jobs": running}
