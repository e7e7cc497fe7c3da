"""The Python SDK: `Client` does everything the CLI does (the CLI is built on it).

from cleanroom import Client
c = Client.from_profile("retailer")
c.upload_dataset("purchases.csv", name="retail.purchases", policy=open("policy.toml").read(),
                 id_column="customer_id", join_secret=secret)
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from cleanroom import audit as audit_chain
from cleanroom.crypto import KeyPair, decrypt_bytes, digest, verify
from cleanroom.errors import (
    CleanroomError,
    Conflict,
    ConnectionFailed,
    IntegrityError,
    ValidationError,
    from_response,
)
from cleanroom.profile import Profile, load_or_create_keys
from cleanroom.sandbox.vocabulary import TERMINAL_STATUSES

Progress = Callable[[int, int], None]
# the statuses input owners see, and the two an analyst sees once the job's outcome time has passed
TERMINAL = (*TERMINAL_STATUSES, "released", "nothing_released")


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Trust exactly the CA certificates in `ca_file` (a PEM file, or a folder of them)."""
    try:
        if Path(ca_file).is_dir():
            return ssl.create_default_context(capath=ca_file)
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValidationError(
            f"cannot use {ca_file} as the CA file: {exc}",
            hint="point --ca-file or CLEANROOM_CA_FILE at the room's CA certificate (PEM)",
        ) from exc


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Client:
    """A connection to a clean room as one org."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        ca_file: str | None = None,
        profile: Profile | None = None,
        allow_insecure: bool = False,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = url.rstrip("/")
        if url.startswith("http://") and not is_loopback(url) and not allow_insecure and transport is None:
            raise ValidationError(
                f"refusing plain HTTP to {url}: use https:// (or a loopback address)",
                hint="set CLEANROOM_ALLOW_INSECURE_REMOTE=true only on a private network",
            )
        self.url = url
        self.token = token
        self.profile = profile
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=url,
            headers=headers,
            timeout=timeout,
            verify=tls_context(ca_file) if ca_file else True,
            transport=transport,
        )
        self._me: dict[str, Any] | None = None

    @classmethod
    def from_profile(cls, name: str | None = None, **kwargs: Any) -> Client:
        import os

        # a profile named on purpose (--profile, CLEANROOM_PROFILE) must exist: a typo is "no profile X",
        # not a request without a token
        profile = Profile.load(name, must_exist=bool(name or os.environ.get("CLEANROOM_PROFILE")))
        insecure = os.environ.get("CLEANROOM_ALLOW_INSECURE_REMOTE", "").lower() in ("1", "true", "yes")
        return cls(
            profile.url, profile.token, ca_file=profile.ca_file, profile=profile, allow_insecure=insecure, **kwargs
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # plumbing -----------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionFailed(
                f"cannot reach the clean room at {self.url}: {exc}",
                hint="is it up? (make up) Check CLEANROOM_URL or your profile",
            ) from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"message": resp.text[:200] or resp.reason_phrase}
            raise from_response(resp.status_code, body if isinstance(body, dict) else {"message": str(body)})
        return resp

    def get(self, path: str, **kw: Any) -> dict[str, Any]:
        return self.request_json("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> dict[str, Any]:
        return self.request_json("POST", path, **kw)

    def request_json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """The JSON object the room answers (every route answers an object; lists come as pages)."""
        resp = self.request(method, path, **kw)
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise IntegrityError(f"the room answered {method} {path} with something other than a JSON object")
        return body

    # room and orgs ------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self.get("/health")

    def room(self) -> dict[str, Any]:
        """The room's public keys; the fingerprint is pinned in the profile on first use."""
        info = self.get("/room")
        keys = info.get("keys")
        if keys and self.profile is not None:
            if self.profile.room_fingerprint and self.profile.room_fingerprint != keys["fingerprint"]:
                raise IntegrityError(
                    f"the room's key changed: pinned {self.profile.room_fingerprint}, now {keys['fingerprint']}",
                    hint="if the operator announced a new room key, remove room_fingerprint from the profile",
                )
            if not self.profile.room_fingerprint:
                self.profile.room_fingerprint = keys["fingerprint"]
                self.profile.save()
        return info

    def room_keys(self) -> dict[str, Any]:
        keys = self.room().get("keys")
        if not keys:
            raise CleanroomError("the room has no key yet", hint="is the runner up? (make up)")
        return dict(keys)

    def whoami(self) -> dict[str, Any]:
        if self._me is None:
            self._me = self.get("/orgs/me")
        return self._me

    def create_org(self, name: str, roles: list[str]) -> dict[str, Any]:
        return self.post("/orgs", json={"name": name, "roles": roles})

    def rotate_token(self, org: str = "me") -> dict[str, Any]:
        """Revoke the org's tokens and get a new one (shown once). Rotating your own switches this
        client, and its profile when it has one, to the new token."""
        me = self.whoami()["name"]
        result = self.post(f"/orgs/{org}/token")
        if result["org"]["name"] == me:
            self.token = result["token"]
            self.http.headers["authorization"] = f"Bearer {self.token}"
            if self.profile is not None and self.profile.name:
                self.profile.token = self.token
                self.profile.save()
        return result

    def items(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a list route, page after page (each page's `next` is the following one's `after`)."""
        after = None
        while True:
            page = self.get(path, params={**params, **({"after": after} if after else {})})
            yield from page["items"]
            after = page["next"]
            if not after:
                return

    def page(self, path: str, *, limit: int, after: str | None = None, **params: Any) -> dict[str, Any]:
        """One page of a list route: `{"items": [...], "next": cursor or None}`."""
        return dict(self.get(path, params={**params, "limit": limit, **({"after": after} if after else {})}))

    def list_orgs(self) -> list[dict[str, Any]]:
        return list(self.items("/orgs"))

    def keys(self) -> KeyPair:
        """This org's key pair: made on this machine on first use; only public halves are sent."""
        me = self.whoami()
        pair, _ = load_or_create_keys(me["name"])
        registered = me.get("keys")
        if registered is None:
            self._me = self.request(
                "PUT", "/orgs/me/keys", json={"enc_public": pair.enc_public, "sign_public": pair.sign_public}
            ).json()
        elif registered["enc_public"] != pair.enc_public:
            raise IntegrityError(
                "the keys registered for this org are not the ones on this machine",
                hint=f"copy the org's key file to {Path('~/.cleanroom/keys')}",
            )
        return pair

    def rotate_keys(self) -> dict[str, Any]:
        """Replace this org's key pair: a new one is made here, a statement signed by the old and the new
        signing key is sent, and the key file keeps the old decryption key so that earlier releases and
        logs stay readable. The org's plugin approvals are revoked by the room: approve again."""
        from cleanroom.crypto import generate_keypair
        from cleanroom.profile import key_path, write_private

        old = self.keys()
        fresh = generate_keypair()
        name = self.whoami()["name"]
        rotated = KeyPair(fresh.enc_secret, fresh.sign_secret, [old.enc_secret, *old.previous_enc_secrets])
        pending = key_path(name).with_suffix(".pending.json")
        write_private(pending, rotated.to_dict())  # kept if the answer is lost: the new key is not lost
        payload = {
            "type": "key-rotation",
            "org": name,
            "old_sign_public": old.sign_public,
            "new_enc_public": fresh.enc_public,
            "new_sign_public": fresh.sign_public,
            "issued_at": time.time(),
        }
        result = self.post(
            "/orgs/me/keys/rotate",
            json={"payload": payload, "old_signature": old.sign(payload), "new_signature": fresh.sign(payload)},
        )
        pending.replace(key_path(name))
        self._me = None
        return dict(result)

    # datasets -----------------------------------------------------------------------------------
    def upload_dataset(
        self,
        path: str | Path,
        *,
        name: str,
        policy: str,
        id_column: str,
        join_secret: bytes,
        description: str = "",
        schema_override: Any = None,
        drop_identifiers: bool = True,
        progress: Progress | None = None,
        text_columns: tuple[str, ...] | list[str] = (),
        allow_few_ids: bool = False,
    ) -> dict[str, Any]:
        """Prepare on this machine (schema, pseudonyms, mock, encryption), then upload the ciphertext.

        Refused before anything is sent: a CSV column that is text only because of a few cells (unless
        named in `text_columns`), an id column with few distinct values (unless `allow_few_ids`), policy
        rules for columns the dataset does not keep. The answer adds `dropped_columns` (name -> why)."""
        from cleanroom.policy import parse_policy
        from cleanroom.prepare.ingest import prepare

        parsed_policy = parse_policy(policy)
        room = self.room_keys()
        prepared = prepare(
            Path(path),
            id_column=id_column,
            join_secret=join_secret,
            policy=parsed_policy,
            schema_override=schema_override,
            drop_identifiers=drop_identifiers,
            recipient=room["enc_public"],
            progress=progress,
            text_columns=text_columns,
            allow_few_ids=allow_few_ids,
        )
        try:
            decl = self.post(
                "/datasets/uploads",
                json={"name": name, "description": description, "policy": policy, **prepared.metadata()},
            )
            result = self.request_json(
                "PUT",
                decl["put"],
                content=_file_chunks(prepared.ciphertext_path, progress),
                headers={"content-type": "application/octet-stream"},
                timeout=None,
            )
        finally:
            prepared.cleanup()
        # what the preparation did, for the owner's eyes
        result.update(
            id_column=id_column,
            dropped_columns=dict(prepared.dropped_reasons),
            column_types={c.name: c.type for c in prepared.schema.columns},
        )
        if prepared.suggested is not None:
            from cleanroom.prepare.mock import suggest_policy

            # computed here from the owner's rows, for the owner to check: never sent to the room
            result["suggested_policy"] = suggest_policy(prepared.suggested)
        return result

    def list_datasets(self) -> list[dict[str, Any]]:
        return list(self.items("/datasets"))

    def get_dataset(self, name: str) -> dict[str, Any]:
        return self.get(f"/datasets/{name}")

    def update_policy(self, name: str, policy: str) -> dict[str, Any]:
        return self.request_json("PUT", f"/datasets/{name}/policy", json={"policy": policy})

    def withdraw_dataset(self, name: str) -> dict[str, Any]:
        """Withdraw your dataset: no new jobs (queued ones are cancelled, running ones finish), gone from
        other orgs' lists; `admin sweep` removes its ciphertext later. Receipts of past releases still verify."""
        return self.post(f"/datasets/{name}/withdraw")

    # plugins ------------------------------------------------------------------------------------
    def submit_plugin(self, folder: str | Path) -> dict[str, Any]:
        from cleanroom import bundle

        archive = bundle.pack(Path(folder))
        return self.post("/plugins", content=archive, headers={"content-type": "application/x-tar"})

    def list_plugins(self) -> list[dict[str, Any]]:
        return list(self.items("/plugins"))

    def get_plugin(self, ref: str) -> dict[str, Any]:
        return self.get(f"/plugins/{ref}")

    def decide_plugin(self, ref: str, dataset: str, decision: str = "approve", reason: str = "") -> dict[str, Any]:
        """Sign (on this machine, with the org's key) and send an approval or rejection."""
        pair = self.keys()
        plugin = self.get_plugin(ref)
        ds = self.get_dataset(dataset)
        bundle_bytes = self.request("GET", f"/plugins/{plugin['id']}/bundle").content
        if digest(bundle_bytes) != plugin["id"]:
            raise IntegrityError("the bundle the room serves does not hash to the plugin id")
        from cleanroom.policy import Policy

        policy_sha256 = Policy.from_dict(ds["policy"]).sha256()  # sign the policy text shown, not a label
        if policy_sha256 != ds["policy_sha256"]:
            raise IntegrityError(f"the policy the room shows for {dataset} does not match its hash")
        payload = {
            "type": "plugin-approval",
            "plugin_id": plugin["id"],
            "dataset": dataset,
            "policy_version": ds["policy_version"],
            "policy_sha256": policy_sha256,
            "dataset_sha256": ds["sha256"],
            "decision": decision,
            "reason": reason,
            "org": self.whoami()["name"],
            "issued_at": time.time(),
        }
        return self.post(
            f"/plugins/{plugin['id']}/approvals", json={"payload": payload, "signature": pair.sign(payload)}
        )

    def revoke_approval(self, plugin_id: str, approval_id: str) -> dict[str, Any]:
        return self.request_json("DELETE", f"/plugins/{plugin_id}/approvals/{approval_id}")

    # jobs ---------------------------------------------------------------------------------------
    def submit_job(self, spec: str) -> dict[str, Any]:
        return self.post("/jobs", json={"spec": spec})

    def job_cost(self, spec: str) -> dict[str, Any]:
        """A dry run: the job's privacy charge and the noise on what it would release; nothing is stored."""
        return self.post("/jobs/cost", json={"spec": spec})

    def dataset_budget(self, name: str) -> dict[str, Any]:
        """A dataset's privacy budget: lifetime (epsilon, delta), spent, left, per-job cap, charges."""
        return self.get(f"/datasets/{name}/budget")

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/jobs/{job_id}")

    def list_jobs(self, *, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Jobs you may see, newest first: all of them, or the first `limit`."""
        params: dict[str, Any] = {"status": status} if status else {}
        if limit is not None:
            return list(self.page("/jobs", limit=limit, **params)["items"])
        return list(self.items("/jobs", **params))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self.post(f"/jobs/{job_id}/cancel")

    def wait_job(
        self,
        job_id: str,
        *,
        timeout: float = 1800,
        interval: float = 1.0,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job's status is final. An analyst's job stays `running` until its `outcome_at`
        (its start plus the spec's time budget), then is `released` or `nothing_released`."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            job = self.get_job(job_id)
            state = (job["status"], job["phase"])
            if on_update and state != last:
                on_update(job)
            last = state
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise CleanroomError(f"job {job_id} did not finish in {timeout:.0f} s", hint="cleanroom job wait again")
            pause = interval
            if job["status"] == "running" and "analyst_status" not in job and job.get("outcome_at"):
                # the analyst's view cannot change before the outcome time: sleep towards it (in steps, as
                # the room's clock may differ from this machine's), never past the deadline
                pause = max(
                    interval, min(job["outcome_at"] - time.time(), 30.0, deadline - time.monotonic() + interval)
                )
            time.sleep(pause)

    def job_logs(self, job_id: str) -> str:
        data = self.request("GET", f"/jobs/{job_id}/logs").content
        return decrypt_bytes(data, self.keys()).decode("utf-8", "replace")

    # releases -----------------------------------------------------------------------------------
    def list_releases(self, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Releases you may see, newest first: all of them, or the first `limit`."""
        if limit is not None:
            return list(self.page("/releases", limit=limit)["items"])
        return list(self.items("/releases"))

    def get_release(self, ref: str) -> dict[str, Any]:
        return self.get(f"/releases/{ref}")

    def approve_release(
        self, ref: str, dataset: str | None = None, *, expect_manifest_sha256: str | None = None
    ) -> dict[str, Any]:
        """Sign and send an approval of a release held for your review (every pending dataset of yours).

        `expect_manifest_sha256`: the manifest you reviewed; when the room now serves another one,
        nothing is signed (the signature covers the manifest fetched here, so a swap between your review
        and this call would otherwise be signed)."""
        return self._decide_release(ref, dataset, "release-approval", "approve", expect=expect_manifest_sha256)

    def reject_release(
        self, ref: str, dataset: str | None = None, reason: str = "", *, expect_manifest_sha256: str | None = None
    ) -> dict[str, Any]:
        """Sign and send a rejection: the recipient can never download the release."""
        return self._decide_release(
            ref, dataset, "release-rejection", "reject", expect=expect_manifest_sha256, reason=reason
        )

    def _decide_release(
        self, ref: str, dataset: str | None, kind: str, verb: str, *, expect: str | None, **extra: Any
    ) -> dict[str, Any]:
        pair = self.keys()
        release = self.get_release(ref)
        if expect is not None and not hmac.compare_digest(manifest_sha256(release["manifest"]), expect):
            raise Conflict(
                "the release's manifest changed since you reviewed it; nothing was signed",
                hint="review the release again",
            )
        mine = [d["name"] for d in self.list_datasets() if d["owner"] == self.whoami()["name"]]
        targets = [dataset] if dataset else [d for d in release["pending_review"] if d in mine]
        if not targets:
            raise ValidationError("none of your datasets holds this release for review")
        manifest_sha = manifest_sha256(release["manifest"])
        result = release
        for ds in targets:
            payload = {
                "type": kind,
                "release_id": release["id"],
                "dataset": ds,
                "manifest_sha256": manifest_sha,
                "org": self.whoami()["name"],
                "issued_at": time.time(),
                **extra,
            }
            result = self.post(
                f"/releases/{release['id']}/{verb}", json={"payload": payload, "signature": pair.sign(payload)}
            )
        return result

    def get_result(self, job_id: str, out_dir: str | Path) -> dict[str, Any]:
        """Download and decrypt a release's artifacts into `out_dir`, with the signed receipt.

        The receipt is checked first (signed by the room key this profile pinned, for this job), then
        every artifact against the receipt's `outputs` (sha256 and size), not against what the API
        lists: an artifact the receipt does not name, or a named one that is missing or different, and
        nothing is written."""
        pair = self.keys()
        release = self.get_release(job_id)
        receipt = release["receipt"]
        verify_receipt(receipt, expected_fingerprint=self.room_keys()["fingerprint"])
        body = receipt["body"]
        if job_id not in (body.get("job_id"), release["id"]) or body.get("job_id") != release["job_id"]:
            raise IntegrityError(f"the receipt is for job {body.get('job_id')}, not {release['job_id']}")
        if manifest_sha256(release["manifest"]) != body.get("manifest_sha256"):
            raise IntegrityError("the release manifest the room shows is not the one the receipt signed")
        outputs = receipt_outputs(body)
        listed = {a["name"] for a in release["artifacts"]}
        if listed - set(outputs):
            raise IntegrityError(
                "the room lists artifacts the signed receipt does not: " + ", ".join(sorted(listed - set(outputs)))
            )
        if set(outputs) - listed:
            raise IntegrityError(
                "artifacts of the signed receipt are missing: " + ", ".join(sorted(set(outputs) - listed))
            )
        plain: dict[str, bytes] = {}
        for name in sorted(outputs):
            data = self.request("GET", f"/releases/{release['id']}/artifacts/{name}").content
            plain[name] = decrypt_bytes(data, pair)
            _check_output(name, plain[name], outputs[name])
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, content in plain.items():
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            written.append(str(target))
        (out / RECEIPT_FILE).write_text(json.dumps(receipt, indent=2, sort_keys=True))
        return {"release": release["id"], "files": written + [str(out / RECEIPT_FILE)]}

    # storage (admin) ----------------------------------------------------------------------------
    def storage_check(self, verify_hashes: bool = True) -> dict[str, Any]:
        """Referenced blobs that are missing or corrupt, and orphans (admin)."""
        return self.get(
            "/admin/storage/check", params={"verify_hashes": str(verify_hashes).lower()}, timeout=None
        )  # re-hashes every referenced blob: as long as reading the store takes

    def storage_sweep(self, grace_seconds: int | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Delete unreferenced blobs older than the grace period (admin; audited)."""
        return self.post(
            "/admin/storage/sweep", json={"grace_seconds": grace_seconds, "dry_run": dry_run}, timeout=None
        )

    # audit --------------------------------------------------------------------------------------
    def audit_events(self) -> Iterator[dict[str, Any]]:
        after = 0
        while True:
            page = self.get("/audit", params={"after": after, "limit": 5000})
            if not page["events"]:
                return
            yield from page["events"]
            after = page["events"][-1]["seq"]

    def audit_verify(self) -> dict[str, Any]:
        """Verify the whole chain here, against the head this profile saw last time."""
        events = list(self.audit_events())
        pinned = self.profile.audit_head if self.profile else None
        result = audit_chain.verify_events(events, pinned=pinned)
        if result["ok"] and self.profile is not None:
            self.profile.audit_head = result["head"]
            self.profile.save()
        return result


def _file_chunks(path: Path, progress: Progress | None, chunk: int = 1 << 20) -> Iterator[bytes]:
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            done += len(block)
            if progress:
                progress(done, total)
            yield block


RECEIPT_FILE = "receipt.json"


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """The hash an owner's release approval or rejection signs, and the receipt binds: the digest of the
    manifest as a value (not of the text the room stores it as)."""
    return digest(manifest)


def receipt_outputs(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The signed outputs of a receipt body, each name a safe relative path."""
    outputs = body.get("outputs")
    if not isinstance(outputs, dict):
        raise IntegrityError("the receipt lists no outputs")
    for name, entry in outputs.items():
        parts = str(name).split("/")
        if (
            not isinstance(entry, dict)
            or name == RECEIPT_FILE
            or any(p in ("", ".", "..") for p in parts)
            or "\\" in name
        ):
            raise IntegrityError(f"the receipt names an unsafe output {name!r}")
    return outputs


def _check_output(name: str, data: bytes, entry: dict[str, Any]) -> None:
    if digest(data) != entry.get("sha256") or len(data) != entry.get("bytes"):
        raise IntegrityError(f"artifact {name} does not match the signed receipt")


def verify_result_dir(folder: str | Path, *, expected_fingerprint: str | None = None) -> dict[str, Any]:
    """Check a folder written by `get_result`: the receipt's signature, and that the files beside it are
    exactly the receipt's outputs (same names, sha256 and sizes; none missing, none extra)."""
    root = Path(folder)
    path = root / RECEIPT_FILE
    try:
        receipt = json.loads(path.read_text())
    except OSError as exc:
        raise ValidationError(f"no readable {RECEIPT_FILE} in {root}") from exc
    except ValueError as exc:
        raise IntegrityError(f"{path} is not JSON") from exc
    result = verify_receipt(receipt, expected_fingerprint=expected_fingerprint)
    outputs = receipt_outputs(receipt["body"])
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}
    extra = present - set(outputs) - {RECEIPT_FILE}
    if extra:
        raise IntegrityError("files the receipt does not list: " + ", ".join(sorted(extra)))
    for name in sorted(outputs):
        target = root / name
        if target.is_symlink() or not target.is_file():
            raise IntegrityError(f"{name} is missing (the receipt lists it)")
        _check_output(name, target.read_bytes(), outputs[name])
    return {**result, "files": sorted(outputs)}


def verify_receipt(receipt: dict[str, Any], *, expected_fingerprint: str | None = None) -> dict[str, Any]:
    """Check a receipt's signature by the room key (and that key's fingerprint when given)."""
    from cleanroom.crypto import fingerprint

    try:
        body, signature, keys = receipt["body"], receipt["signature"], receipt["room_keys"]
    except (KeyError, TypeError) as exc:
        raise IntegrityError("not a cleanroom receipt") from exc
    fp = fingerprint(keys["enc_public"] + keys["sign_public"])
    if expected_fingerprint and fp != expected_fingerprint:
        raise IntegrityError(f"the receipt was signed by another room key ({fp})")
    verify(keys["sign_public"], body, signature)
    return {"ok": True, "fingerprint": fp, "job": body.get("job_id"), "body_sha256": digest(body)}
