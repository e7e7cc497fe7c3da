"""The API's response bodies as pydantic models: the contract `/openapi.json` publishes.

Routes declare them with `response_model=`; FastAPI then validates what a handler returns and
serialises it through the model. Two rules keep that from changing what the API answers:

- every model allows extra keys (`extra="allow"`): a key a handler adds before its model learns of
  it is passed through, never dropped (tests/test_openapi_contract.py fails on such a key);
- a key that a view only sometimes has is declared `absent()`: not in the schema's `required`, left
  out of the answer when the handler did not set it, and sent as set (even `null`) when it did.

Times are seconds since the Unix epoch (UTC) as numbers; digests are 64 lowercase hex characters.
Free-form documents (a policy, a job spec, a release manifest, a receipt, a review report) are
JSON objects described in docs/; their fields are the business of the code that signs or checks them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from cleanroom.sandbox.vocabulary import SHA256_HEX

# Enums -----------------------------------------------------------------------------------------
# Spelled out for the OpenAPI document's readers; tests/test_vocabulary.py pins JobStatus, JobPhase and
# PluginKind to `cleanroom.sandbox.vocabulary`.


class Role(StrEnum):
    """An org's role in the room (admin and runner are the room's own orgs)."""

    admin = "admin"
    owner = "owner"
    analyst = "analyst"
    reviewer = "reviewer"
    runner = "runner"


class JobStatus(StrEnum):
    """A job's status as the caller sees it: input owners and staff see the stored status (queued,
    running, succeeded, failed, cancelled, timed_out); the analyst side sees queued, running, cancelled
    (before it started), then released or nothing_released at the job's outcome time."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"
    released = "released"
    nothing_released = "nothing_released"


class AnalystStatus(StrEnum):
    """The status a job's analyst sees (shown to input owners and staff as `analyst_status`)."""

    queued = "queued"
    running = "running"
    released = "released"
    nothing_released = "nothing_released"
    cancelled = "cancelled"


class JobPhase(StrEnum):
    """The phase of a running job, as the runner reports it."""

    verifying = "verifying"
    decrypting = "decrypting"
    compute = "compute"
    release = "release"
    uploading = "uploading"


class PluginKind(StrEnum):
    """What a plugin's step does in a job."""

    preprocess = "preprocess"
    features = "features"
    model = "model"
    analysis = "analysis"
    statistic = "statistic"


class Decision(StrEnum):
    approve = "approve"
    reject = "reject"


class Severity(StrEnum):
    blocking = "blocking"
    warning = "warning"


class BudgetMode(StrEnum):
    """dp: the dataset's policy requires differential privacy (a budget is spent); exact: it does not."""

    dp = "dp"
    exact = "exact"


# Field types -----------------------------------------------------------------------------------

Timestamp = Annotated[float, Field(description="seconds since the Unix epoch (UTC)")]
Sha256 = Annotated[
    str, Field(pattern=rf"^{SHA256_HEX.pattern}$", description="a sha256 digest, 64 lowercase hex characters")
]
Document = Annotated[dict[str, Any], Field(description="a JSON document (see the docs for its fields)")]


class _Missing:
    """The value of an `absent()` key the handler did not set (never serialised)."""

    def __repr__(self) -> str:
        return "<absent>"


def _is_missing(value: Any) -> bool:
    return isinstance(value, _Missing)


def absent(description: str | None = None) -> Any:
    """A key the view has only in some cases: optional in the schema (no default shown), left out of the
    answer when the handler did not set it, and sent as given (even null) when it did."""
    return Field(default_factory=_Missing, exclude_if=_is_missing, description=description)


class Out(BaseModel):
    """Base of every response model."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


# Errors ----------------------------------------------------------------------------------------


class Error(Out):
    """The one error body of every 4xx and 5xx answer (`cleanroom.errors.CleanroomError.to_dict`).

    `error` is a stable code: invalid_input, policy_violation, invalid_bundle (400); unauthenticated
    (401); forbidden (403); not_found (404); method_not_allowed (405); conflict (409); too_large (413);
    integrity_error (422); rate_limited (429); internal_error, sandbox_error (500); insufficient_storage
    (507). New codes may be added: a client falls back on the HTTP status for a code it does not know."""

    error: str = Field(description="a stable error code, e.g. invalid_input", examples=["not_found"])
    message: str = Field(description="what went wrong, for people")
    hint: str = absent("what to do next")
    details: Any = absent("structured details, e.g. the invalid fields")


# Pages -----------------------------------------------------------------------------------------

T = TypeVar("T")


class Page(Out, Generic[T]):
    """One page of a list: `next` is an opaque cursor for the following page (pass it as `after`), or
    null on the last page."""

    items: list[T]
    next: str | None = Field(description="the cursor of the next page (give it as `after`), or null at the end")


# Room and orgs ---------------------------------------------------------------------------------


class Health(Out):
    status: str = Field(examples=["ok"])
    version: str
    room_key: bool = Field(description="whether the runner published the room's keys")


class PublicKeys(Out):
    """Public halves of a key pair: age X25519 (encryption) and base64 Ed25519 (signing)."""

    enc_public: str
    sign_public: str
    fingerprint: str


class RoomCounts(Out):
    orgs: int
    datasets: int
    plugins: int
    jobs: int


class RoomInfo(Out):
    version: str
    ready: bool = Field(description="whether the room has keys (its runner started once)")
    keys: PublicKeys | None
    counts: RoomCounts


class Org(Out):
    id: str
    name: str
    roles: list[Role]
    keys: PublicKeys | None = Field(description="null until the org registered its keys")
    created_at: Timestamp


class OrgToken(Out):
    """An org and its new bearer token: shown once, never again."""

    org: Org
    token: str = Field(description="the org's bearer token (crt_<id>.<secret>)")


class OrgKeysRotated(Org):
    approvals_revoked: int = Field(description="the org's approvals revoked with its old key")


class OrgPage(Page[Org]):
    """A page of orgs, by name."""


class AuditEvent(Out):
    seq: int
    ts: Timestamp
    actor: str
    action: str = Field(examples=["dataset.uploaded"])
    object_type: str
    object_id: str
    details: Document
    prev_hash: str
    hash: str


class RedactedAuditEvent(Out):
    """An event the caller may not read: its place and links in the chain only."""

    seq: int
    prev_hash: str
    hash: str
    redacted: bool


class AuditPage(Out):
    events: list[AuditEvent | RedactedAuditEvent]
    total: int = Field(description="events in the whole log")


class ChainHead(Out):
    seq: int
    hash: str


class AuditVerification(Out):
    ok: bool
    count: int
    redacted: int | None
    head: ChainHead | None
    broken_at: int | None
    reason: str | None


# Datasets --------------------------------------------------------------------------------------


class UploadDeclared(Out):
    upload_id: str
    put: str = Field(description="the path to PUT the ciphertext to")
    retried: bool = absent("true when the same declaration was pending already")


class UploadCancelled(Out):
    upload_id: str
    name: str
    cancelled: bool


class DatasetSummary(Out):
    name: str
    owner: str
    description: str
    row_count: int | None = Field(description="the owner's and staff's only (n is private): null for others")
    sha256: Sha256
    size: int | None = Field(description="ciphertext bytes; the owner's and staff's only, null for others")
    policy_version: int
    policy_sha256: Sha256
    created_at: Timestamp
    columns: list[str]
    withdrawn_at: Timestamp | None


class Dataset(DatasetSummary):
    """A dataset with its published schema, mock sample and current policy."""

    schema_: Document = Field(alias="schema")
    mock: list[dict[str, Any]]
    dropped: list[str]
    policy: Document = Field(description="the current policy, parsed")
    policy_text: str = Field(description="the current policy as the owner wrote it (TOML)")


class DatasetPage(Page[DatasetSummary]):
    """A page of datasets, by name."""


class DatasetUploaded(DatasetSummary):
    already_done: bool = absent("true when this PUT repeated one that had completed")


class DatasetWithdrawn(DatasetSummary):
    cancelled_jobs: list[str]
    running_jobs: list[str]


class RecipientBudget(Out):
    org: str
    share_epsilon: float
    spent_epsilon: float
    spent_delta: float
    remaining_epsilon: float
    remaining_delta: float


class Charge(Out):
    job_id: str
    recipient: str
    epsilon: float
    delta: float
    created_at: Timestamp


class Budget(Out):
    dataset: str
    mode: BudgetMode
    epsilon: float
    delta: float
    job_epsilon: float
    job_delta: float
    spent_epsilon: float
    spent_delta: float
    remaining_epsilon: float
    remaining_delta: float
    recipient: RecipientBudget = absent("the caller's share, when it is a recipient (not owner or staff)")
    charges: list[Charge] = absent("the charges (in GET /datasets/{name}/budget)")


class JobCost(Out):
    admitted: bool
    reason: str | None
    mode: BudgetMode
    budgets: dict[str, Budget]
    plan: Document | None = Field(description="the noise plan of a DP job (dp_plan.describe), null in exact mode")


# Plugins ---------------------------------------------------------------------------------------


class Approval(Out):
    id: str
    dataset: str
    org: str
    decision: Decision
    reason: str
    policy_version: int
    dataset_sha256: Sha256
    created_at: Timestamp
    revoked_at: Timestamp | None


class Finding(Out):
    file: str
    line: int
    col: int
    rule: str
    severity: Severity
    message: str


class ReviewReport(Out):
    version: int
    files: list[str]
    findings: list[Finding]
    blocking: int
    warnings: int


class PluginSummary(Out):
    id: Sha256 = Field(description="the sha256 of the plugin's canonical bundle")
    name: str
    version: str
    kind: PluginKind
    submitted_by: str
    size: int
    created_at: Timestamp
    blocking_findings: int
    approvals: list[Approval]


class Plugin(PluginSummary):
    manifest: Document
    review: ReviewReport


class PluginSubmitted(Plugin):
    created: bool = Field(description="false when these bytes were in the room already")


class PluginDiff(Out):
    id: Sha256
    version: str
    submitted_by: str
    approved_for: list[str]
    diff: str = Field(description="a unified diff of the bundles' files")


class PluginDetail(Plugin):
    files: dict[str, str] = Field(description="path -> text of every file in the bundle")
    diff_against: PluginDiff | None = Field(description="the last approved version of this plugin, if any")


class PluginPage(Page[PluginSummary]):
    """A page of plugins, by name and version."""


class ApprovalRecorded(Out):
    id: str
    decision: Decision
    dataset: str
    plugin_id: Sha256


class ApprovalRevoked(Out):
    id: str
    revoked: bool


# Jobs and releases -----------------------------------------------------------------------------


class Job(Out):
    """A job as the caller may see it. The analyst side gets the same keys with the data-dependent
    ones (phase, error_class, finished_at) empty; input owners and staff also get analyst_status,
    withdrawn, reason and effective_policy."""

    id: str
    name: str
    submitted_by: str
    status: JobStatus
    phase: JobPhase | None
    error_class: str | None
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    outcome_at: Timestamp | None = Field(description="when the analyst learns the outcome (start + time budget)")
    recipient: str | None
    inputs: list[str]
    release_id: str | None
    spec: Document
    analyst_status: AnalystStatus = absent("what the analyst sees (input owners and staff)")
    withdrawn: bool = absent("whether the analyst withdrew the release (input owners and staff)")
    reason: str | None = absent("why the job ended as it did (input owners and staff)")
    effective_policy: Document | None = absent("the policy the job runs under (input owners and staff)")


class JobPage(Page[Job]):
    """A page of jobs, newest first."""


class Artifact(Out):
    name: str
    blob: Sha256
    size: int


class Release(Out):
    id: str
    job_id: str
    recipient: str
    manifest: Document
    receipt: Document
    review_by: list[str] = Field(description="the datasets whose owners review the release")
    created_at: Timestamp
    artifacts: list[Artifact]
    approved_by: list[str]
    rejected_by: list[str]
    rejection_reasons: dict[str, str]
    pending_review: list[str]
    downloadable: bool


class ReleasePage(Page[Release]):
    """A page of releases, newest first."""


# Runner ----------------------------------------------------------------------------------------


class RunnerLive(Out):
    instance: str
    live: list[str]


class RunnerRecovered(Out):
    requeued: list[str]
    failed: list[str]


class RunnerClaim(Out):
    job: str | None = Field(description="the claimed job's id, or null when none is queued")


class RunnerJob(Out):
    id: str
    status: JobStatus
    phase: JobPhase | None


class ContextJob(Out):
    id: str
    status: JobStatus
    spec: Document
    effective_policy: Document | None


class ContextDataset(Out):
    name: str
    owner: str
    sha256: Sha256
    size: int
    policy_version: int
    policy: Document
    policy_sha256: Sha256
    schema_: Document = Field(alias="schema")
    mock: list[dict[str, Any]]


class ContextPlugin(Out):
    id: Sha256
    name: str
    kind: PluginKind
    manifest: Document


class SignedApproval(Out):
    payload: Document
    signature: str
    org: str


class KeyRotation(Out):
    payload: Document
    old_signature: str
    new_signature: str


class OwnerKeys(Out):
    enc_public: str | None
    sign_public: str | None
    rotations: list[KeyRotation]


class ContextRecipient(Out):
    name: str
    enc_public: str | None


class JobContext(Out):
    """What the runner re-verifies before it decrypts anything."""

    job: ContextJob
    datasets: list[ContextDataset]
    plugins: dict[str, ContextPlugin]
    approvals: list[SignedApproval]
    owners: dict[str, OwnerKeys]
    recipient: ContextRecipient


class RunnerProgress(Out):
    status: JobStatus


class ArtifactStored(Out):
    name: str
    blob: Sha256
    size: int


class JobFinished(Out):
    job: str
    status: JobStatus
    release_id: str | None


# Admin -----------------------------------------------------------------------------------------


class MissingBlob(Out):
    blob: str
    referenced_by: list[str]


class CorruptBlob(Out):
    blob: str
    sha256: str
    referenced_by: list[str]


class OrphanBlob(Out):
    blob: str
    size: int
    age_seconds: int


class InterruptedSweep(Out):
    plan_seq: int
    blobs: int | None


class StorageCheck(Out):
    ok: bool
    referenced: int
    blobs: int
    verified_hashes: bool
    missing: list[MissingBlob]
    corrupt: list[CorruptBlob]
    orphans: list[OrphanBlob]
    orphan_bytes: int
    staged_files: int
    pending_uploads: int
    interrupted_sweep: InterruptedSweep | None


class StorageSweep(Out):
    """Lists of digests come as their first entries, a count and the sha256 of the whole sorted list."""

    grace_seconds: int
    dry_run: bool
    blobs: list[str]
    blobs_count: int
    blobs_sha256: Sha256
    bytes: int
    staged_files: int
    expired_uploads: list[str]
    deleted: list[str]
    kept: list[str]
    plan_seq: int = absent("the audit event of the sweep's plan (not in a dry run)")
    deleted_count: int = absent()
    deleted_sha256: Sha256 = absent()
    kept_count: int = absent()
    kept_sha256: Sha256 = absent()
