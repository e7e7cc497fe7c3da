"""One job, end to end, on the runner: verify, decrypt in memory, compute, release, encrypt, upload.

Fails closed: any doubt about hashes, signatures or policy versions stops the job before a byte is
decrypted. Plaintext lives only in this process's memory and in the sandbox containers' pipes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time
from typing import Any

from cleanroom.crypto import KeyPair, canonical_json, decrypt_bytes, encrypt_bytes, fingerprint, verify
from cleanroom.errors import CleanroomError, IntegrityError, PolicyError, SandboxError
from cleanroom.runner import mockrun, recode
from cleanroom.runner.api_client import RunnerAPI
from cleanroom.runner.launcher import PhaseResult, Sandbox, StartedPhase, _memory_bytes
from cleanroom.runner.pins import KeyPins
from cleanroom.sandbox import wire

log = logging.getLogger("cleanroom.runner")


class JobFailed(Exception):
    def __init__(self, error_class: str, reason: str, status: str = "failed") -> None:
        super().__init__(reason)
        self.error_class = error_class
        self.reason = reason
        self.status = status


class Cancelled(Exception):
    pass


def verify_context(ctx: dict[str, Any], bundles: dict[str, bytes], pins: KeyPins) -> dict[str, Any]:
    """Re-check, on the runner, everything the API checked: hashes, signed approvals, policies.

    Owners' signing keys must match the ones this runner pinned (`pins`); every approval must be
    signed for the exact policy text enforced here (`policy_sha256`). Returns the effective policy
    recomputed here from the datasets' current policies.
    """
    from cleanroom.jobspec import JobSpec, check_job
    from cleanroom.policy import Policy

    spec = JobSpec.from_dict(ctx["job"]["spec"])
    for pid, data in bundles.items():
        if hashlib.sha256(data).hexdigest() != pid:
            raise JobFailed("integrity_error", f"plugin {pid[:12]} does not hash to its id")
    datasets = {}
    for ds in ctx["datasets"]:
        policy = Policy.from_dict(ds["policy"])
        if policy.sha256() != ds["policy_sha256"]:
            raise JobFailed("integrity_error", f"the policy of {ds['name']} does not match its hash")
        datasets[ds["name"]] = {"owner": ds["owner"], "policy": policy, "policy_version": ds["policy_version"],
                                "policy_sha256": policy.sha256(), "sha256": ds["sha256"]}
    try:
        pins.check({ds["owner"]: ctx["owners"].get(ds["owner"], {}) for ds in datasets.values()})
    except IntegrityError as exc:
        raise JobFailed("integrity_error", exc.message) from exc
    approvals = set()
    for a in ctx["approvals"]:
        p = a["payload"]
        ds = datasets.get(p.get("dataset"))
        if ds is None or a["org"] != ds["owner"] or p.get("org") != ds["owner"]:
            continue  # only the dataset's owner can approve for it
        owner_key = ctx["owners"].get(ds["owner"], {}).get("sign_public")
        if not owner_key:
            continue
        try:
            verify(owner_key, p, a["signature"])
        except IntegrityError:
            log.warning("approval with a bad signature ignored (plugin %s, dataset %s)",
                        str(p.get("plugin_id"))[:12], p.get("dataset"))
            continue
        if p.get("policy_sha256") != ds["policy_sha256"]:
            continue  # signed for another policy text than the one enforced here (W3)
        if p.get("type") == "plugin-approval" and p.get("decision") == "approve":
            approvals.add((p["plugin_id"], p["dataset"], p["policy_version"], p["dataset_sha256"]))
    plugins = {pid: {"name": p["name"], "kind": p["kind"], "manifest": p["manifest"]}
               for pid, p in ctx["plugins"].items()}
    try:
        effective = check_job(spec, datasets=datasets, plugins=plugins, approvals=approvals, recipient_exists=True,
                              budget_remaining={})  # charged by the API's ledger at submission
    except PolicyError as exc:
        raise JobFailed("approval_or_policy", f"re-check on the runner failed: {exc.message}") from exc
    return effective.to_dict()


def released_names(ctx: dict[str, Any]) -> dict[str, Any]:
    """What released column names may be built from: the inputs' schemas with their published
    categories, and the strings of the job spec's step parameters (`cleanroom.sandbox.names`)."""
    from cleanroom.sandbox.names import job_strings

    schemas = {}
    for ds in ctx["datasets"]:
        columns = ds.get("schema", {}).get("columns", [])
        rules = (ds.get("policy") or {}).get("columns") or {}
        schemas[ds["name"]] = {str(c["name"]): _published(c, rules.get(c["name"]) or {}) for c in columns}
    return {"schemas": schemas, "job_strings": job_strings(ctx["job"]["spec"]["steps"])}


def _published(column: dict[str, Any], rule: dict[str, Any]) -> list[str]:
    """A column's public categories: those its summary publishes and the policy's declared `domain`."""
    summary = (column.get("stats") or {}).get("categories") or {}
    return sorted({str(v) for v in summary} | {str(v) for v in rule.get("domain") or []})


def table_names(ctx: dict[str, Any]) -> list[str]:
    """One name per analysis step, in job order: its `name` parameter, else `step<N>` (never plugin output)."""
    from cleanroom.sandbox.names import TABLE_NAME_RE

    out = []
    for n, step in enumerate(ctx["job"]["spec"]["steps"], 1):
        if ctx["plugins"][step["plugin"]]["kind"] != "analysis":
            continue
        name = (step.get("params") or {}).get("name")
        out.append(name if isinstance(name, str) and TABLE_NAME_RE.match(name) and name not in out else f"step{n}")
    return out


def compute_steps(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """The compute phase's steps, from the job spec and its plugins (the same for the mock run)."""
    steps = []
    for step in ctx["job"]["spec"]["steps"]:
        p = ctx["plugins"][step["plugin"]]
        steps.append({"plugin_id": p["id"], "name": p["name"], "kind": p["kind"],
                      "entry": p["manifest"]["entry"], "params": step.get("params", {}),
                      "dataset": step.get("dataset")})
    return steps


def covering_approvals(ctx: dict[str, Any]) -> list[str]:
    """The sha256 of every signed approval that covered this job: by the input's owner (its key verifies),
    for one of the job's plugins and inputs, for the exact policy text, version and data enforced here.
    Not every approval the inputs have: a receipt names what the runner relied on."""
    policies = {ds["name"]: ds for ds in ctx["datasets"]}
    plugin_ids = {step["plugin"] for step in ctx["job"]["spec"]["steps"]}
    out = set()
    for a in ctx["approvals"]:
        p = a["payload"]
        ds = policies.get(p.get("dataset"))
        if (ds is None or a["org"] != ds["owner"] or p.get("org") != ds["owner"] or p.get("type") != "plugin-approval"
                or p.get("decision") != "approve" or p.get("plugin_id") not in plugin_ids
                or p.get("policy_sha256") != ds["policy_sha256"] or p.get("policy_version") != ds["policy_version"]
                or p.get("dataset_sha256") != ds["sha256"]):
            continue
        owner_key = ctx["owners"].get(ds["owner"], {}).get("sign_public")
        try:
            verify(owner_key or "", p, a["signature"])
        except (IntegrityError, ValueError):
            continue
        out.add(hashlib.sha256(canonical_json(p)).hexdigest())
    return sorted(out)


class JobRun:
    def __init__(self, api: RunnerAPI, sandbox: Sandbox, keys: KeyPair, job_id: str, settings: Any) -> None:
        self.api = api
        self.sandbox = sandbox
        self.keys = keys
        self.job_id = job_id
        self.settings = settings
        self.logs = io.BytesIO()
        self.timings: dict[str, float] = {}
        self.isolation: dict[str, Any] = {}
        self.pending_release: StartedPhase | None = None
        self.dropped: dict[str, list[str]] = {}

    def note(self, text: str) -> None:
        if self.logs.tell() < self.settings.job_log_bytes:
            self.logs.write(text.encode()[: 4096] + b"\n")

    def phase(self, name: str) -> None:
        if self.api.progress(self.job_id, name) != "running":
            raise Cancelled()

    def cancelled(self) -> bool:
        try:
            return self.api.status(self.job_id) == "cancelled"
        except CleanroomError:
            return False

    def run(self) -> None:
        ctx: dict[str, Any] | None = None
        try:
            ctx = self.api.context(self.job_id)
            self._run(ctx)
        except Cancelled:
            log.info("job %s was cancelled", self.job_id)
        except JobFailed as exc:
            self.note(f"job failed: {exc.error_class}: {exc.reason}")
            self._fail(ctx, exc.status, exc.error_class, exc.reason)
        except CleanroomError as exc:
            self.note(f"job failed: {exc.code}: {exc.message}")
            self._fail(ctx, "failed", exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - never lose a job
            log.exception("job %s crashed the runner's job code", self.job_id)
            self._fail(ctx, "failed", "internal", f"runner error: {type(exc).__name__}")
        finally:
            self._close_pending()  # also after a cancellation

    def _close_pending(self) -> None:
        """Remove the release container started early, before the job's outcome is reported."""
        if self.pending_release is not None:
            self.pending_release.close()

    def _fail(self, ctx: dict[str, Any] | None, status: str, error_class: str, reason: str) -> None:
        self._close_pending()
        log_blob = self._upload_logs(ctx)
        try:
            waived = sorted({c for phase in self.isolation.values() for c in phase.get("waived", [])})
            self.api.finish(self.job_id, status=status, reason=reason[:4000], error_class=error_class,
                            log_blob=log_blob, waived=waived)
        except CleanroomError as exc:
            log.warning("could not record the failure of job %s: %s", self.job_id, exc.message)

    def _upload_logs(self, ctx: dict[str, Any] | None) -> str | None:
        if ctx is None:
            return None
        owners = [o["enc_public"] for o in ctx["owners"].values() if o.get("enc_public")]
        if not owners:
            return None
        try:
            data = encrypt_bytes(self.logs.getvalue()[: self.settings.job_log_bytes], owners)
            return self.api.artifact(self.job_id, "_logs", data)["blob"]
        except CleanroomError:
            return None

    def _run(self, ctx: dict[str, Any]) -> None:
        started = time.monotonic()
        spec = ctx["job"]["spec"]
        bundles = {pid: self.api.bundle(pid) for pid in ctx["plugins"]}
        effective = verify_context(ctx, bundles, KeyPins(self.settings.runner_home))
        self.timings["verify"] = round(time.monotonic() - started, 3)
        if spec.get("outputs", {}).get("sample_and_aggregate"):  # the analyst's own statistic, once per block
            from cleanroom.runner import blocks

            blocks.run_job(self, ctx, bundles, effective, started)
            return

        self.phase("decrypting")
        # Both phase containers start (create, isolation read-back, imports; no data), each in a thread,
        # while the inputs are fetched, decrypted and recoded: the release phase's imports take about 3 s.
        boxes: dict[str, StartedPhase | BaseException] = {}

        def start_phase(phase: str) -> None:
            try:
                boxes[phase] = self.sandbox.start(phase, self.job_id, limits=effective.get("limits"))
            except BaseException as exc:  # noqa: BLE001 - raised again in the job's own thread
                boxes[phase] = exc

        starters = [threading.Thread(target=start_phase, args=(phase,), name=f"start-{phase}-{self.job_id}",
                                     daemon=True) for phase in ("release", "compute")]
        # The mock run (the pipeline on the inputs' public mock data, in its own container) fixes the
        # release's structure; it needs no plaintext, so it runs while the inputs are decrypted.
        mock: dict[str, Any] = {}
        starters.append(threading.Thread(target=self._mock_run, args=(ctx, bundles, effective, mock),
                                         name=f"mock-{self.job_id}", daemon=True))
        for starter in starters:
            starter.start()
        try:
            t = time.monotonic()
            inputs: dict[str, bytes] = {}
            for index, ds in enumerate(ctx["datasets"]):
                ciphertext = self.api.ciphertext(ds["name"], ds["size"])
                if hashlib.sha256(ciphertext).hexdigest() != ds["sha256"]:
                    raise JobFailed("integrity_error", f"the ciphertext of {ds['name']} does not match its hash")
                try:
                    inputs[f"inputs/{index}.arrow"] = decrypt_bytes(ciphertext, self.keys)
                except IntegrityError as exc:
                    raise JobFailed("integrity_error", f"{ds['name']}: {exc.message}") from exc
                del ciphertext
            self.timings["decrypt"] = round(time.monotonic() - t, 3)
            t = time.monotonic()
            try:  # `_pid` becomes int64 codes, the same in every input and fresh for this job
                inputs = recode.recode_inputs(inputs, {f"inputs/{i}.arrow": ds["name"]
                                                       for i, ds in enumerate(ctx["datasets"])},
                                              max_bytes=_memory_bytes(self.settings.job_memory),
                                              drop=effective.get("never_output", []))
            except recode.TooLarge as exc:
                raise JobFailed("out_of_memory", str(exc)) from exc
            except recode.RecodeError as exc:
                raise JobFailed("integrity_error", str(exc)) from exc
            self.timings["recode"] = round(time.monotonic() - t, 3)

            self.dropped = mockrun.dropped_columns(ctx["datasets"], effective.get("never_output", []))
            self.phase("compute")
            steps = compute_steps(ctx)
            request = io.BytesIO()
            files = dict(inputs)
            files.update({f"plugins/{pid}.tar": data for pid, data in bundles.items()})
            wire.write_message(request, "job.json", {
                "job_id": self.job_id, "steps": steps, "max_output_bytes": self.settings.job_max_output_bytes,
                "inputs": [{"dataset": ds["name"], "file": f"inputs/{i}.arrow"}
                           for i, ds in enumerate(ctx["datasets"])],
            }, files)
            del files, inputs
        except BaseException:
            for starter in starters:
                starter.join()
            for box in boxes.values():  # started early: removed on any failure or cancellation
                if isinstance(box, StartedPhase):
                    box.close()
            raise
        for starter in starters:
            starter.join()
        compute_box, release_box = boxes.get("compute"), boxes.get("release")
        if not (isinstance(compute_box, StartedPhase) and isinstance(release_box, StartedPhase)):
            for ready in (compute_box, release_box):
                if isinstance(ready, StartedPhase):
                    ready.close()
            failure = next((b for b in (compute_box, release_box) if isinstance(b, BaseException)), None)
            if isinstance(failure, SandboxError):
                raise JobFailed(failure.code, failure.message) from failure
            raise failure or JobFailed("sandbox_error", "a sandbox container did not start")
        self.pending_release = release_box  # removed by `run` whatever happens next
        self.note(str(mock.get("log", "")))
        if "failure" in mock:
            compute_box.close()
            raise mock["failure"]
        compute = self._phase_run("compute", request.getbuffer(), started=compute_box)
        del request
        result, out_files = self._decode(compute, "compute")
        if not result.get("ok"):
            # the plugin's message may quote data: it goes only into the log (encrypted to the owners)
            self.note(f"plugin error: {str(result.get('error'))[:2000]}")
            raise JobFailed("plugin_error", "a plugin step failed in the compute phase; its message is in the "
                                            "job log (owners: cleanroom job logs)")
        frame = out_files.get("frames/joined.arrow")
        if frame is None:
            raise JobFailed("protocol_error", "the compute phase returned no frame")

        self.phase("release")
        outputs = spec.get("outputs", {})
        model_specs = [m["spec"] for m in result.get("model_specs", [])]
        if outputs.get("model") and len(model_specs) != 1:
            raise JobFailed("release_check_failed", "a model output needs exactly one model spec")
        request = io.BytesIO()
        wire.write_message(request, "job.json", {
            "job_id": self.job_id, "policy": effective, "outputs": outputs,
            "model_spec": model_specs[0] if outputs.get("model") else None,
            "analysis_specs": [a["spec"] for a in result.get("analysis_specs", [])] if outputs.get("aggregates")
            else [],
            "dp": effective.get("dp") or {"epsilon": None, "delta": None},  # the job's charge (cleanroom.ledger)
            "names": released_names(ctx), "table_names": table_names(ctx), "mock": mock["specs"],
        }, {"frames/joined.arrow": frame, mockrun.MOCK_FRAME: mock["frame"]})
        del frame
        release = self._phase_run("release", request.getbuffer(), started=self.pending_release)
        rel, artifacts = self._decode(release, "release")
        checks = rel.get("checks", [])
        if not rel.get("ok"):
            failed = [c["name"] for c in checks if not c.get("passed")]
            # check details name rules, columns of the mock run and counts, never a data value (owners only)
            details = "; ".join(str(c.get("detail", "")) for c in checks if not c.get("passed"))[:1500]
            raise JobFailed("release_check_failed",
                            f"release checks failed: {', '.join(failed) or rel.get('error')}"
                            + (f" ({details})" if details else ""))

        self.phase("uploading")
        self._publish(ctx, effective, rel, artifacts, bundles, started)

    def _mock_run(self, ctx: dict[str, Any], bundles: dict[str, bytes], effective: dict[str, Any],
                  out: dict[str, Any]) -> None:
        """Run the pipeline on the mock data; `out` gets specs and frame, or the failure (a thread)."""
        t = time.monotonic()
        try:
            request = mockrun.request(self.job_id, ctx["datasets"], compute_steps(ctx), bundles,
                                      self.settings.job_max_output_bytes, effective.get("never_output", []))
            box = self.sandbox.start("compute", self.job_id, limits=effective.get("limits"), pool=False)
            res = box.run(request, cancelled=self.cancelled)
            self.isolation["mock"] = res.isolation
            out["log"] = f"--- mock run (exit {res.exit_code}, {res.seconds:.1f} s) ---\n" + res.stderr.decode(
                "utf-8", "replace")[-4000:]
            for failed, error_class, what in ((res.timed_out, "timeout", "ran past the time limit"),
                                              (res.oom_killed, "out_of_memory", "ran out of memory"),
                                              (res.output_overflow, "output_too_large", "wrote more than the limit"),
                                              (res.exit_code != 0, "sandbox_crash", "exited with an error")):
                if failed:  # the same classes as the real run's (`_phase_run`): the mock data is public
                    raise JobFailed(error_class, f"the pipeline {what} on the inputs' mock data (the mock run)",
                                    status="timed_out" if error_class == "timeout" else "failed")
            result, files = wire.read_message(io.BytesIO(res.stdout), "result.json",
                                              self.settings.job_max_output_bytes)
            out["specs"], out["frame"] = mockrun.outcome(result, files, ctx["job"]["spec"].get("outputs", {}))
        except JobFailed as exc:
            out["failure"] = exc
        except mockrun.MockRunFailed as exc:
            out["failure"] = JobFailed("mock_run_failed", str(exc))
        except SandboxError as exc:
            out["failure"] = JobFailed(exc.code, exc.message)
        except wire.WireError as exc:
            out["failure"] = JobFailed("protocol_error", f"the mock run answered an invalid message: {exc}")
        except Exception as exc:  # noqa: BLE001 - raised again in the job's own thread
            out["failure"] = JobFailed("internal", f"the mock run failed: {type(exc).__name__}")
        self.timings["mock"] = round(time.monotonic() - t, 3)

    def _phase_run(self, phase: str, request: bytes | memoryview, started: StartedPhase | None = None) -> PhaseResult:
        try:
            if started is not None:
                res = started.run(request, cancelled=self.cancelled)
            else:
                res = self.sandbox.run_phase(phase, self.job_id, request, cancelled=self.cancelled)
        except SandboxError as exc:
            raise JobFailed(exc.code, exc.message) from exc
        self.isolation[phase] = res.isolation
        self.timings[phase] = res.seconds
        self.note(f"--- {phase} phase (exit {res.exit_code}, {res.seconds:.1f} s) ---")
        self.note(res.stderr.decode("utf-8", "replace"))
        if self.cancelled():
            raise Cancelled()
        if res.timed_out:
            raise JobFailed("timeout", f"the {phase} phase ran past the time limit", status="timed_out")
        if res.oom_killed:
            raise JobFailed("out_of_memory", f"the {phase} phase ran out of memory")
        if res.output_overflow:
            raise JobFailed("output_too_large", f"the {phase} phase wrote more than the output limit")
        if res.exit_code != 0:
            raise JobFailed("sandbox_crash", f"the {phase} phase exited with an error")
        return res

    def _decode(self, res: PhaseResult, phase: str) -> tuple[dict[str, Any], dict[str, bytes]]:
        try:
            return wire.read_message(io.BytesIO(res.stdout), "result.json", self.settings.job_max_output_bytes)
        except wire.WireError as exc:
            raise JobFailed("protocol_error", f"the {phase} phase answered an invalid message: {exc}") from exc

    def _publish(self, ctx: dict[str, Any], effective: dict[str, Any], rel: dict[str, Any],
                 files: dict[str, bytes], bundles: dict[str, bytes], started: float) -> None:
        spec = ctx["job"]["spec"]
        owners = {name: o["enc_public"] for name, o in ctx["owners"].items() if o.get("enc_public")}
        recipient_key = ctx["recipient"].get("enc_public")
        if not recipient_key:
            raise JobFailed("recipient_has_no_key", f"the recipient {ctx['recipient']['name']} registered no key")
        recipients = [recipient_key] + [k for k in owners.values() if k != recipient_key]
        outputs, uploaded = {}, {}
        for name, data in sorted(files.items()):
            art = name.removeprefix("artifacts/")
            declared = rel.get("artifacts", {}).get(art)
            if not name.startswith("artifacts/") or declared is None:
                raise JobFailed("protocol_error", f"undeclared artifact {name!r}")
            digest = hashlib.sha256(data).hexdigest()
            if declared.get("sha256") != digest:
                raise JobFailed("protocol_error", f"artifact {art} does not match its declared hash")
            outputs[art] = {"sha256": digest, "bytes": len(data)}
            up = self.api.artifact(self.job_id, art, encrypt_bytes(data, recipients))
            uploaded[art] = {"blob": up["blob"], "size": up["size"]}
        review_by = sorted(effective.get("review_by", []))
        manifest = {"job_id": self.job_id, "outputs": outputs, "checks": rel.get("checks", []),
                    "epsilon_spent": rel.get("epsilon_spent", 0.0), "recipient": spec["recipient"],
                    "encrypted_to": sorted([ctx["recipient"]["name"], *owners])}
        self.timings["total"] = round(time.monotonic() - started, 3)
        body = {
            "type": "cleanroom-receipt", "version": 1, "job_id": self.job_id,
            "spec_sha256": hashlib.sha256(canonical_json(spec)).hexdigest(),
            "plugins": {pid: f"{p['name']}@{p['manifest'].get('version')}" for pid, p in ctx["plugins"].items()},
            "datasets": {d["name"]: {"sha256": d["sha256"], "policy_version": d["policy_version"],
                                     "policy_sha256": d["policy_sha256"]} for d in ctx["datasets"]},
            "approvals": covering_approvals(ctx),
            "image": self.isolation.get("compute", {}).get("image"),
            "isolation": self.isolation, "dropped_columns": self.dropped,  # never_output, left out of the inputs
            "epsilon_spent": rel.get("epsilon_spent", 0.0),
            "outputs": outputs,  # no timings, no signing time: how long the job ran is for the owners (log)
            "manifest_sha256": hashlib.sha256(canonical_json(manifest)).hexdigest(),
        }
        self.note("timings: " + json.dumps(self.timings, sort_keys=True))
        receipt = {"body": body, "signature": self.keys.sign(body),
                   "room_keys": {"enc_public": self.keys.enc_public, "sign_public": self.keys.sign_public,
                                 "fingerprint": fingerprint(self.keys.enc_public + self.keys.sign_public)}}
        log_blob = self._upload_logs(ctx)
        waived = sorted({c for phase in self.isolation.values() for c in phase.get("waived", [])})
        self._close_pending()
        self.api.finish(self.job_id, status="succeeded", reason="", error_class=None, log_blob=log_blob, waived=waived,
                        release={"manifest": manifest, "receipt": receipt, "artifacts": uploaded,
                                 "review_by": review_by})
