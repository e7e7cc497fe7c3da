"""A job's context on the runner: one typed value, parsed once from what the API sends.

`GET /runner/jobs/{id}/context` answers the job's spec, its inputs (policy, schema and mock data
each), its plugins, the signed approvals of its inputs, the input owners' keys and the recipient.
`JobContext.from_dict` reads that answer; everything the runner derives from it (the re-check of the
API's decision, the compute steps, the names a release may use, the approvals a receipt names) are
its methods, so no code below reads the API's dict again. `cleanroom job test` builds one from the
room's public views the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from cleanroom.crypto import digest, verify
from cleanroom.errors import IntegrityError, IntegrityFailure, PolicyError, RecheckRefused
from cleanroom.runner.pins import KeyPins

log = logging.getLogger("cleanroom.runner")


class ApprovalKey(NamedTuple):
    """What an approval grants: this plugin, on this dataset, under this policy version and data."""

    plugin_id: str
    dataset: str
    policy_version: int
    dataset_sha256: str


@dataclass(frozen=True)
class DatasetRef:
    name: str
    owner: str
    sha256: str
    size: int
    policy_version: int
    policy: dict[str, Any]
    policy_sha256: str
    schema: dict[str, Any] = field(default_factory=dict)
    mock: list[Any] = field(default_factory=list)  # public mock rows, for the mock run

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetRef:
        return cls(
            name=str(d["name"]),
            owner=str(d.get("owner", "")),
            sha256=str(d.get("sha256", "")),
            size=int(d.get("size") or 0),
            policy_version=int(d.get("policy_version") or 0),
            policy=dict(d.get("policy") or {}),
            policy_sha256=str(d.get("policy_sha256", "")),
            schema=dict(d.get("schema") or {}),
            mock=list(d.get("mock") or []),
        )

    def to_dict(self) -> dict[str, Any]:
        """The shape `cleanroom.runner.mockrun` reads (a dataset view)."""
        return asdict(self)

    def published(self) -> dict[str, list[str]]:
        """Per column, its public categories: those its summary publishes and the policy's declared `domain`."""
        rules = self.policy.get("columns") or {}
        out = {}
        for column in self.schema.get("columns", []):
            summary = (column.get("stats") or {}).get("categories") or {}
            domain = (rules.get(column["name"]) or {}).get("domain") or []
            out[str(column["name"])] = sorted({str(v) for v in summary} | {str(v) for v in domain})
        return out


@dataclass(frozen=True)
class PluginRef:
    id: str
    name: str
    kind: str
    manifest: dict[str, Any]

    def as_check_input(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "manifest": self.manifest}


@dataclass(frozen=True)
class SignedApproval:
    payload: dict[str, Any]
    signature: str
    org: str  # the org the API says signed it; the runner checks the signature against that org's key

    def key(self) -> ApprovalKey:
        p = self.payload
        return ApprovalKey(p["plugin_id"], p["dataset"], p["policy_version"], p["dataset_sha256"])


@dataclass(frozen=True)
class OwnerKeys:
    enc_public: str | None = None
    sign_public: str | None = None
    rotations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Recipient:
    name: str
    enc_public: str | None = None


@dataclass(frozen=True)
class JobContext:
    job_id: str
    spec: dict[str, Any]
    datasets: tuple[DatasetRef, ...]
    plugins: dict[str, PluginRef]
    approvals: tuple[SignedApproval, ...] = ()
    owners: dict[str, OwnerKeys] = field(default_factory=dict)
    recipient: Recipient = Recipient("")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobContext:
        """The API's `/runner/jobs/{id}/context` answer (plugins, approvals, owners and recipient may be
        absent: a context built for names or steps only)."""
        job = d["job"]
        recipient = d.get("recipient") or {}
        return cls(
            job_id=str(job.get("id", "")),
            spec=dict(job["spec"]),
            datasets=tuple(DatasetRef.from_dict(ds) for ds in d.get("datasets", [])),
            plugins={
                pid: PluginRef(id=str(p.get("id", pid)), name=p["name"], kind=p["kind"], manifest=p["manifest"])
                for pid, p in (d.get("plugins") or {}).items()
            },
            approvals=tuple(
                SignedApproval(payload=dict(a["payload"]), signature=str(a["signature"]), org=str(a["org"]))
                for a in d.get("approvals") or []
            ),
            owners={
                name: OwnerKeys(
                    enc_public=o.get("enc_public"),
                    sign_public=o.get("sign_public"),
                    rotations=list(o.get("rotations") or []),
                )
                for name, o in (d.get("owners") or {}).items()
            },
            recipient=Recipient(name=str(recipient.get("name", "")), enc_public=recipient.get("enc_public")),
        )

    @property
    def outputs(self) -> dict[str, Any]:
        return dict(self.spec.get("outputs") or {})

    def dataset(self, name: object) -> DatasetRef | None:
        return next((ds for ds in self.datasets if ds.name == name), None)

    def owner_key(self, org: str) -> str | None:
        keys = self.owners.get(org)
        return keys.sign_public if keys else None

    def owner_enc_keys(self) -> dict[str, str]:
        """The input owners' encryption keys, by org (outputs and logs are encrypted to them)."""
        return {name: o.enc_public for name, o in self.owners.items() if o.enc_public}

    # -- what the runner derives from it ------------------------------------------------------------

    def compute_steps(self) -> list[dict[str, Any]]:
        """The compute phase's steps, from the job spec and its plugins (the same for the mock run)."""
        steps = []
        for step in self.spec["steps"]:
            p = self.plugins[step["plugin"]]
            steps.append(
                {
                    "plugin_id": p.id,
                    "name": p.name,
                    "kind": p.kind,
                    "entry": p.manifest["entry"],
                    "params": step.get("params", {}),
                    "dataset": step.get("dataset"),
                }
            )
        return steps

    def released_names(self) -> dict[str, Any]:
        """What released column names may be built from: the inputs' schemas with their published
        categories, and the strings of the job spec's step parameters (`cleanroom.sandbox.names`)."""
        from cleanroom.sandbox.names import job_strings

        return {
            "schemas": {ds.name: ds.published() for ds in self.datasets},
            "job_strings": job_strings(self.spec["steps"]),
        }

    def table_names(self) -> list[str]:
        """One name per analysis step, in job order: its `name` parameter, else `step<N>` (never plugin output)."""
        from cleanroom.sandbox.vocabulary import TABLE_NAME

        out: list[str] = []
        for n, step in enumerate(self.spec["steps"], 1):
            if self.plugins[step["plugin"]].kind != "analysis":
                continue
            name = (step.get("params") or {}).get("name")
            out.append(name if isinstance(name, str) and TABLE_NAME.fullmatch(name) and name not in out else f"step{n}")
        return out

    def _signed_by_owner(self, a: SignedApproval) -> DatasetRef | None:
        """The approval's dataset when the dataset's owner signed it with the key the room reports."""
        p = a.payload
        ds = self.dataset(p.get("dataset"))
        if ds is None or a.org != ds.owner or p.get("org") != ds.owner:
            return None  # only the dataset's owner can approve for it
        key = self.owner_key(ds.owner)
        if not key:
            return None
        try:
            verify(key, p, a.signature)
        except (IntegrityError, ValueError):
            log.warning(
                "approval with a bad signature ignored (plugin %s, dataset %s)",
                str(p.get("plugin_id"))[:12],
                p.get("dataset"),
            )
            return None
        return ds

    def granted(self) -> set[ApprovalKey]:
        """The approvals that count here: granted by the input's owner, under the owner's key, for the exact
        policy text enforced here (an approval signed under another text approves another policy)."""
        out = set()
        for a in self.approvals:
            p = a.payload
            ds = self._signed_by_owner(a)
            if ds is None or p.get("policy_sha256") != ds.policy_sha256:
                continue
            if p.get("type") == "plugin-approval" and p.get("decision") == "approve":
                out.add(a.key())
        return out

    def covering_approvals(self) -> list[str]:
        """The sha256 of every signed approval that covered this job: by the input's owner (its key verifies),
        for one of the job's plugins and inputs, for the exact policy text, version and data enforced here.
        Not every approval the inputs have: a receipt names what the runner relied on."""
        plugin_ids = {step["plugin"] for step in self.spec["steps"]}
        out = set()
        for a in self.approvals:
            p = a.payload
            ds = self.dataset(p.get("dataset"))
            if (
                ds is None
                or p.get("type") != "plugin-approval"
                or p.get("decision") != "approve"
                or p.get("plugin_id") not in plugin_ids
                or p.get("policy_sha256") != ds.policy_sha256
                or p.get("policy_version") != ds.policy_version
                or p.get("dataset_sha256") != ds.sha256
            ):
                continue
            if self._signed_by_owner(a) is not None:
                out.add(digest(p))
        return sorted(out)

    def verify(self, bundles: Mapping[str, bytes], pins: KeyPins) -> dict[str, Any]:
        """Re-check, on the runner, everything the API checked: hashes, signed approvals, policies.

        Owners' signing keys must match the ones this runner pinned (`pins`); every approval must be
        signed for the exact policy text enforced here. Returns the effective policy recomputed here
        from the datasets' current policies (the API's copy is not used).
        """
        from cleanroom.jobspec import JobSpec, check_job
        from cleanroom.policy import Policy

        spec = JobSpec.from_dict(self.spec)
        for pid, data in bundles.items():
            if digest(data) != pid:
                raise IntegrityFailure(f"plugin {pid[:12]} does not hash to its id")
        datasets = {}
        for ds in self.datasets:
            policy = Policy.from_dict(ds.policy)
            if policy.sha256() != ds.policy_sha256:
                raise IntegrityFailure(f"the policy of {ds.name} does not match its hash")
            datasets[ds.name] = {
                "owner": ds.owner,
                "policy": policy,
                "policy_version": ds.policy_version,
                "policy_sha256": ds.policy_sha256,
                "sha256": ds.sha256,
            }
        try:
            pins.check({ds.owner: asdict(self.owners.get(ds.owner, OwnerKeys())) for ds in self.datasets})
        except IntegrityError as exc:
            raise IntegrityFailure(exc.message) from exc
        try:
            effective = check_job(
                spec,
                datasets=datasets,
                plugins={pid: p.as_check_input() for pid, p in self.plugins.items()},
                approvals=self.granted(),
                recipient_exists=True,
                budget_remaining={},
            )  # charged by the API's ledger at submission
        except PolicyError as exc:
            raise RecheckRefused(f"re-check on the runner failed: {exc.message}") from exc
        return effective.to_dict()
