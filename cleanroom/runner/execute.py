"""One job, end to end, on the runner: verify, decrypt in memory, compute, release, encrypt, upload.

    JobRun.run
      verify          the API's context re-checked: plugin hashes, pinned keys, signed approvals, policies
      start_phases    compute and release phases and the mock run, started while the inputs are decrypted
      decrypt_inputs  fetch, hash check, decrypt, recode (`cleanroom.runner.inputs`)
      compute         the approved plugins on the real inputs
      release         the trusted checks on the joined frame, against the mock run's structure
      publish         outputs encrypted to the recipient and the owners, a signed receipt, finish

Fails closed: any doubt about hashes, signatures or policy versions stops the job before a byte is
decrypted. Plaintext lives only in this process's memory and in the phases' pipes. A failure is a
`JobFailed` (`cleanroom.errors`): its class says what the API records (status, error class); its
message is the reason, which only the input owners see. Phases run through a `PhaseRunner`
(`cleanroom.runner.phases`), given to `JobRun` by its caller.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from types import TracebackType
from typing import Any

from cleanroom.crypto import KeyPair, digest, encrypt_bytes, fingerprint
from cleanroom.errors import (
    CleanroomError,
    JobFailed,
    PhaseFailed,
    PhaseFailure,
    PluginFailed,
    RecipientHasNoKey,
    ReleaseRefused,
)
from cleanroom.runner import mockrun
from cleanroom.runner.api_client import RunnerAPI
from cleanroom.runner.context import JobContext
from cleanroom.runner.inputs import decrypt_inputs
from cleanroom.runner.isolation import memory_bytes
from cleanroom.runner.phases import Phase, PhaseResult, PhaseRunner, StartedPhase
from cleanroom.runner.pins import KeyPins
from cleanroom.runner.requests import JOINED_FRAME, compute_request, release_request

log = logging.getLogger("cleanroom.runner")

__all__ = ["Cancelled", "JobRun", "MockOutcome", "StartedPhases", "phase_outcome"]


class Cancelled(Exception):
    """The job was cancelled while it ran: nothing more is done or reported."""


def phase_outcome(res: PhaseResult, phase: Phase, what: str | None = None) -> None:
    """Raise `PhaseFailed` when the phase hit a limit or crashed. `what` words the message (the mock run)."""
    failure = res.failure
    if failure is not None:
        raise PhaseFailed(phase, failure, what.format(failure=_WORDS[failure]) if what else None)


_WORDS = {
    PhaseFailure.TIMEOUT: "ran past the time limit",
    PhaseFailure.OUT_OF_MEMORY: "ran out of memory",
    PhaseFailure.OUTPUT_TOO_LARGE: "wrote more than the limit",
    PhaseFailure.CRASH: "exited with an error",
}


class MockOutcome:
    """What the mock run gave the release phase (specs and frame), its log, or why it failed."""

    def __init__(self) -> None:
        self.specs: dict[str, Any] = {}
        self.frame = b""
        self.log = ""
        self.failure: JobFailed | None = None


class StartedPhases:
    """The job's compute and release phases and its mock run, started in threads (create, isolation
    read-back, imports; no data) while the inputs are fetched, decrypted and recoded. Every phase started
    here is closed when the block ends, whatever happens (a closed phase closes again as a no-op)."""

    def __init__(self, run: JobRun, ctx: JobContext, bundles: dict[str, bytes], effective: dict[str, Any]) -> None:
        self.run = run
        self.boxes: dict[Phase, StartedPhase | BaseException] = {}
        self.mock = MockOutcome()
        limits = effective.get("limits")
        self.threads = [
            threading.Thread(target=self._start, args=(phase, limits), daemon=True, name=f"start-{phase}-{run.job_id}")
            for phase in (Phase.RELEASE, Phase.COMPUTE)
        ]
        # the mock run (the pipeline on the inputs' public mock data) needs no plaintext: it runs meanwhile
        self.threads.append(
            threading.Thread(
                target=run.mock_run, args=(ctx, bundles, effective, self.mock), name=f"mock-{run.job_id}", daemon=True
            )
        )

    def _start(self, phase: Phase, limits: dict[str, Any] | None) -> None:
        try:
            self.boxes[phase] = self.run.phases.start(phase, self.run.job_id, limits=limits)
        except BaseException as exc:  # noqa: BLE001 - raised again in the job's own thread
            self.boxes[phase] = exc

    def __enter__(self) -> StartedPhases:
        for thread in self.threads:
            thread.start()
        return self

    def ready(self) -> tuple[StartedPhase, StartedPhase, MockOutcome]:
        """Both phases and the mock run's outcome, once all three are done; raises the first failure."""
        for thread in self.threads:
            thread.join()
        started: list[StartedPhase] = []
        for phase in (Phase.COMPUTE, Phase.RELEASE):
            box = self.boxes.get(phase)
            if isinstance(box, BaseException):
                raise box
            if box is None:
                raise JobFailed("a sandbox container did not start", error_class="sandbox_error")
            started.append(box)
        self.run.note(self.mock.log)
        if self.mock.failure is not None:
            raise self.mock.failure
        return started[0], started[1], self.mock

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for thread in self.threads:
            thread.join()
        for box in self.boxes.values():
            if not isinstance(box, BaseException):
                box.close()


class JobRun:
    def __init__(self, api: RunnerAPI, phases: PhaseRunner, keys: KeyPair, job_id: str, settings: Any) -> None:
        self.api = api
        self.phases = phases
        self.keys = keys
        self.job_id = job_id
        self.settings = settings
        self.logs = io.BytesIO()
        self.timings: dict[str, float] = {}
        self.isolation: dict[str, Any] = {}
        self.dropped: dict[str, list[str]] = {}

    def note(self, text: str) -> None:
        if self.logs.tell() < self.settings.job_log_bytes:
            self.logs.write(text.encode()[:4096] + b"\n")

    def phase(self, name: str) -> None:
        """Tell the API which phase the job is in; `Cancelled` when the job is no longer running."""
        if self.api.progress(self.job_id, name) != "running":
            raise Cancelled()

    def cancelled(self) -> bool:
        try:
            return self.api.status(self.job_id) == "cancelled"
        except CleanroomError:
            return False

    def run(self) -> None:
        """Run the job and report its outcome; never raises."""
        ctx: JobContext | None = None
        try:
            ctx = JobContext.from_dict(self.api.context(self.job_id))
            self._run(ctx)
        except Cancelled:
            log.info("job %s was cancelled", self.job_id)
        except JobFailed as exc:
            self._fail(ctx, exc.status, exc.error_class, exc.message)
        except CleanroomError as exc:
            self._fail(ctx, "failed", exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - never lose a job
            log.exception("job %s crashed the runner's job code", self.job_id)
            self._fail(ctx, "failed", "internal", f"runner error: {type(exc).__name__}")

    def _run(self, ctx: JobContext) -> None:
        started = time.monotonic()
        bundles, effective = self.verify(ctx)
        if ctx.outputs.get("sample_and_aggregate"):  # the analyst's own statistic, once per block
            from cleanroom.runner import blocks

            blocks.run_job(self, ctx, bundles, effective, started)
            return
        self.phase("decrypting")
        with StartedPhases(self, ctx, bundles, effective) as phases:
            request = self.decrypt_inputs(ctx, bundles, effective)
            compute_box, release_box, mock = phases.ready()
            result, frame = self.compute(compute_box, request)
            del request
            rel, artifacts = self.release(release_box, ctx, effective, result, frame, mock)
        self.phase("uploading")
        self.publish(ctx, effective, rel, artifacts, started)

    # -- the steps ---------------------------------------------------------------------------------

    def verify(self, ctx: JobContext) -> tuple[dict[str, bytes], dict[str, Any]]:
        """The plugins' bundles and the effective policy, recomputed here (`JobContext.verify`)."""
        t = time.monotonic()
        bundles = {pid: self.api.bundle(pid) for pid in ctx.plugins}
        effective = ctx.verify(bundles, KeyPins(self.settings.runner_home))
        self.timings["verify"] = round(time.monotonic() - t, 3)
        return bundles, effective

    def decrypt_inputs(self, ctx: JobContext, bundles: dict[str, bytes], effective: dict[str, Any]) -> io.BytesIO:
        """The compute phase's request: the inputs decrypted and recoded, the plugins' bundles."""
        t = time.monotonic()
        never_output = effective.get("never_output", [])
        inputs = decrypt_inputs(
            self.api, self.keys, ctx, max_bytes=memory_bytes(self.settings.job_memory), drop=never_output
        )
        self.timings["decrypt"] = round(time.monotonic() - t, 3)
        self.dropped = mockrun.dropped_columns([ds.to_dict() for ds in ctx.datasets], never_output)
        self.phase("compute")
        return compute_request(self.job_id, ctx.compute_steps(), inputs, bundles, self.settings.job_max_output_bytes)

    def compute(self, box: StartedPhase, request: io.BytesIO) -> tuple[dict[str, Any], bytes]:
        """The compute phase's result and the joined frame."""
        res = self._phase_run(Phase.COMPUTE, box, request.getbuffer())
        result, files = res.message(Phase.COMPUTE, self.settings.job_max_output_bytes)
        if not result.get("ok"):
            # the plugin's message may quote data: it goes only into the log (encrypted to the owners)
            self.note(f"plugin error: {str(result.get('error'))[:2000]}")
            raise PluginFailed(
                "a plugin step failed in the compute phase; its message is in the job log (owners: cleanroom job logs)"
            )
        frame = files.get(JOINED_FRAME)
        if frame is None:
            raise PhaseFailed(Phase.COMPUTE, PhaseFailure.PROTOCOL, "the compute phase returned no frame")
        return result, frame

    def release(
        self,
        box: StartedPhase,
        ctx: JobContext,
        effective: dict[str, Any],
        result: dict[str, Any],
        frame: bytes,
        mock: MockOutcome,
    ) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The release phase's answer and artifacts; `ReleaseRefused` when its checks refused the outputs."""
        self.phase("release")
        if ctx.outputs.get("model") and len(result.get("model_specs", [])) != 1:
            raise ReleaseRefused("a model output needs exactly one model spec")
        request = release_request(
            self.job_id,
            policy=effective,
            outputs=ctx.outputs,
            result=result,
            names=ctx.released_names(),
            table_names=ctx.table_names(),
            mock=mock.specs,
            frame=frame,
            mock_frame=mock.frame,
        )
        del frame
        res = self._phase_run(Phase.RELEASE, box, request.getbuffer())
        rel, artifacts = res.message(Phase.RELEASE, self.settings.job_max_output_bytes)
        checks = rel.get("checks", [])
        if not rel.get("ok"):
            failed = [c["name"] for c in checks if not c.get("passed")]
            # check details name rules, columns of the mock run and counts, never a data value (owners only)
            details = "; ".join(str(c.get("detail", "")) for c in checks if not c.get("passed"))[:1500]
            raise ReleaseRefused(
                f"release checks failed: {', '.join(failed) or rel.get('error')}" + (f" ({details})" if details else "")
            )
        return rel, artifacts

    def mock_run(self, ctx: JobContext, bundles: dict[str, bytes], effective: dict[str, Any], out: MockOutcome) -> None:
        """Run the pipeline on the mock data; `out` gets specs and frame, or the failure (a thread)."""
        t = time.monotonic()
        try:
            request = mockrun.request(
                self.job_id,
                [ds.to_dict() for ds in ctx.datasets],
                ctx.compute_steps(),
                bundles,
                self.settings.job_max_output_bytes,
                effective.get("never_output", []),
            )
            res = self.phases.start(Phase.MOCK, self.job_id, limits=effective.get("limits")).run(
                request, cancelled=self.cancelled
            )
            self.isolation["mock"] = res.isolation
            out.log = f"--- mock run (exit {res.exit_code}, {res.seconds:.1f} s) ---\n" + res.logs[-4000:]
            # the same classes as the real run's: the mock data is public
            phase_outcome(res, Phase.MOCK, "the pipeline {failure} on the inputs' mock data (the mock run)")
            result, files = res.message(Phase.MOCK, self.settings.job_max_output_bytes)
            out.specs, out.frame = mockrun.outcome(result, files, ctx.outputs)
        except JobFailed as exc:
            out.failure = exc
        except CleanroomError as exc:  # a sandbox that could not start
            out.failure = JobFailed(exc.message, error_class=exc.code)
        except Exception as exc:  # noqa: BLE001 - raised again in the job's own thread
            out.failure = JobFailed(f"the mock run failed: {type(exc).__name__}", error_class="internal")
        self.timings["mock"] = round(time.monotonic() - t, 3)

    def _phase_run(self, phase: Phase, box: StartedPhase, request: bytes | memoryview) -> PhaseResult:
        res = box.run(request, cancelled=self.cancelled)
        self.isolation[phase.value] = res.isolation
        self.timings[phase.value] = res.seconds
        self.note(f"--- {phase} phase (exit {res.exit_code}, {res.seconds:.1f} s) ---")
        self.note(res.logs)
        if self.cancelled():
            raise Cancelled()
        phase_outcome(res, phase)
        return res

    # -- the outcome -------------------------------------------------------------------------------

    def _fail(self, ctx: JobContext | None, status: str, error_class: str, reason: str) -> None:
        self.note(f"job failed: {error_class}: {reason}")
        log_blob = self._upload_logs(ctx)
        try:
            self.api.finish(
                self.job_id,
                status=status,
                reason=reason[:4000],
                error_class=error_class,
                log_blob=log_blob,
                waived=self._waived(),
            )
        except CleanroomError as exc:
            log.warning("could not record the failure of job %s: %s", self.job_id, exc.message)

    def _waived(self) -> list[str]:
        return sorted({c for phase in self.isolation.values() for c in phase.get("waived", [])})

    def _upload_logs(self, ctx: JobContext | None) -> str | None:
        """The job's log, encrypted to the input owners only; None when there is no owner key to encrypt to."""
        owners = list(ctx.owner_enc_keys().values()) if ctx is not None else []
        if not owners:
            return None
        try:
            data = encrypt_bytes(self.logs.getvalue()[: self.settings.job_log_bytes], owners)
            return str(self.api.artifact(self.job_id, "_logs", data)["blob"])
        except CleanroomError:
            return None

    def publish(
        self, ctx: JobContext, effective: dict[str, Any], rel: dict[str, Any], files: dict[str, bytes], started: float
    ) -> None:
        """Encrypt and upload the artifacts, sign the receipt, upload the log, finish the job as succeeded."""
        owners = ctx.owner_enc_keys()
        recipient_key = ctx.recipient.enc_public
        if not recipient_key:
            raise RecipientHasNoKey(f"the recipient {ctx.recipient.name} registered no key")
        recipients = [recipient_key] + [k for k in owners.values() if k != recipient_key]
        outputs, uploaded = {}, {}
        for name, data in sorted(files.items()):
            art = name.removeprefix("artifacts/")
            declared = rel.get("artifacts", {}).get(art)
            if not name.startswith("artifacts/") or declared is None:
                raise PhaseFailed(Phase.RELEASE, PhaseFailure.PROTOCOL, f"undeclared artifact {name!r}")
            sha = digest(data)
            if declared.get("sha256") != sha:
                raise PhaseFailed(
                    Phase.RELEASE, PhaseFailure.PROTOCOL, f"artifact {art} does not match its declared hash"
                )
            outputs[art] = {"sha256": sha, "bytes": len(data)}
            up = self.api.artifact(self.job_id, art, encrypt_bytes(data, recipients))
            uploaded[art] = {"blob": up["blob"], "size": up["size"]}
        manifest = {
            "job_id": self.job_id,
            "outputs": outputs,
            "checks": rel.get("checks", []),
            "epsilon_spent": rel.get("epsilon_spent", 0.0),
            "recipient": ctx.spec["recipient"],
            "encrypted_to": sorted([ctx.recipient.name, *owners]),
        }
        self.timings["total"] = round(time.monotonic() - started, 3)
        receipt = self._receipt(ctx, rel, outputs, manifest)
        self.note("timings: " + json.dumps(self.timings, sort_keys=True))
        log_blob = self._upload_logs(ctx)
        self.api.finish(
            self.job_id,
            status="succeeded",
            reason="",
            error_class=None,
            log_blob=log_blob,
            waived=self._waived(),
            release={
                "manifest": manifest,
                "receipt": receipt,
                "artifacts": uploaded,
                "review_by": sorted(effective.get("review_by", [])),
            },
        )

    def _receipt(
        self, ctx: JobContext, rel: dict[str, Any], outputs: dict[str, Any], manifest: dict[str, Any]
    ) -> dict[str, Any]:
        body = {
            "type": "cleanroom-receipt",
            "version": 1,
            "job_id": self.job_id,
            "spec_sha256": digest(ctx.spec),
            "plugins": {pid: f"{p.name}@{p.manifest.get('version')}" for pid, p in ctx.plugins.items()},
            "datasets": {
                d.name: {"sha256": d.sha256, "policy_version": d.policy_version, "policy_sha256": d.policy_sha256}
                for d in ctx.datasets
            },
            "approvals": ctx.covering_approvals(),
            "image": self.isolation.get("compute", {}).get("image"),
            "isolation": self.isolation,
            "dropped_columns": self.dropped,  # never_output, left out of the inputs
            "epsilon_spent": rel.get("epsilon_spent", 0.0),
            "outputs": outputs,  # no timings, no signing time: how long the job ran is for the owners (log)
            "manifest_sha256": digest(manifest),
        }
        return {
            "body": body,
            "signature": self.keys.sign(body),
            "room_keys": {
                "enc_public": self.keys.enc_public,
                "sign_public": self.keys.sign_public,
                "fingerprint": fingerprint(self.keys.enc_public + self.keys.sign_public),
            },
        }
