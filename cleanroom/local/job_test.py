"""`cleanroom job test`: a whole job spec on its inputs' mock data, in the sandbox image, on this machine.

The runner's own parts, in the runner's order: the spec is checked as `job submit` checks it (policies,
step order, parameters and the release checks the spec decides; approvals are not asked for), the
plugins are fetched from the room and checked against their ids, the pipeline runs on the inputs' mock
data exactly as the runner's mock run does (`cleanroom.runner.mockrun`: steps, join, plugins, in a
compute container), and the release phase runs its checks on that run's frame and specs (in a release
container, which imports no plugin code). Nothing is sent to the room but reads: no job, no charge, no
audit event. Every value comes from public mock data.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from cleanroom.crypto import digest
from cleanroom.errors import CleanroomError
from cleanroom.runner import mockrun
from cleanroom.runner.context import DatasetRef, JobContext, PluginRef
from cleanroom.runner.phases import Phase, PhaseRunner, run_phase
from cleanroom.runner.requests import release_request
from cleanroom.settings import Settings

JOB_ID = "job-test"


def _failed(out: dict[str, Any], stage: str, reason: str) -> dict[str, Any]:
    out.update(ok=False, failed_at=stage, reason=reason)
    return out


def job_context(client: Any, spec: Any) -> tuple[JobContext, dict[str, bytes], dict[str, Any], list[dict[str, Any]]]:
    """The runner's job context for `spec`, read from the room (datasets with schema, mock and policy;
    plugins with manifests; their bundles, each checked against its id), the effective policy, and the
    approvals `job submit` would still ask for."""
    from cleanroom import jobspec, release_rules

    datasets = [client.get_dataset(name) for name in spec.dataset_names()]
    plugins, bundles, granted = {}, {}, set()
    owners = {ds["name"]: ds["owner"] for ds in datasets}
    for pid in spec.plugin_ids():
        view = client.get_plugin(pid)
        granted |= {
            (pid, a["dataset"], a["policy_version"], a["dataset_sha256"])
            for a in view["approvals"]
            if a["decision"] == "approve" and not a["revoked_at"] and a["org"] == owners.get(a["dataset"])
        }
        data = client.request("GET", f"/plugins/{pid}/bundle").content
        if digest(data) != pid:
            raise CleanroomError(f"the room's bundle of plugin {pid[:12]} does not hash to its id")
        plugins[pid] = PluginRef(id=pid, name=view["name"], kind=view["kind"], manifest=view["manifest"])
        bundles[pid] = data
    policies = {
        ds["name"]: {
            "owner": ds["owner"],
            "policy": ds["policy"],
            "policy_version": ds["policy_version"],
            "sha256": ds["sha256"],
        }
        for ds in datasets
    }
    # approvals are the owners' business, not the job's shape: every step counts as approved here
    approvals = {
        (s.plugin, name, ds["policy_version"], ds["sha256"]) for s in spec.steps for name, ds in policies.items()
    }
    checked = {pid: p.as_check_input() for pid, p in plugins.items()}
    effective = jobspec.check_job(spec, datasets=policies, plugins=checked, approvals=approvals, recipient_exists=True)
    release_rules.check_spec(spec, checked, {ds["name"]: ds for ds in datasets}, effective)
    missing = [
        {"step": i, "plugin": plugins[s.plugin].name, "dataset": name, "owner": owners[name]}
        for i, s in enumerate(spec.steps)
        for name in ([s.dataset] if s.dataset else spec.inputs)
        if (s.plugin, name, policies[name]["policy_version"], policies[name]["sha256"]) not in granted
    ]
    ctx = JobContext(
        job_id=JOB_ID, spec=spec.to_dict(), datasets=tuple(DatasetRef.from_dict(ds) for ds in datasets), plugins=plugins
    )
    return ctx, bundles, effective.to_dict(), missing


def run_job_test(
    client: Any, spec_text: str, *, image: str, settings: Settings | None = None, phases: PhaseRunner | None = None
) -> dict[str, Any]:
    """Run `spec_text` on mock data; returns {ok, failed_at, reason, checks, tables, model_card, metrics, ...}.
    `phases` defaults to Docker with `image`."""
    from cleanroom.jobspec import parse_jobspec

    out: dict[str, Any] = {
        "ok": True,
        "failed_at": None,
        "reason": None,
        "checks": [],
        "tables": {},
        "model_card": None,
        "metrics": None,
        "log": "",
    }
    spec = parse_jobspec(spec_text)
    if spec.outputs.sample_and_aggregate is not None:
        return _failed(
            out,
            "spec",
            "job test does not run sample_and_aggregate jobs yet: test the statistic with `cleanroom plugin test`",
        )
    try:
        ctx, bundles, effective, missing = job_context(client, spec)
    except CleanroomError as exc:  # what `job submit` would refuse, with its reason
        return _failed(out, "submit", exc.message + (f" ({exc.hint})" if exc.hint else ""))
    out["approvals_missing"] = missing
    settings = dataclasses.replace(settings or Settings.from_env(), sandbox_image=image)
    phases = phases or _docker(settings)
    cap = settings.job_max_output_bytes

    # the mock run, as the runner does it before every real run
    request = mockrun.request(
        JOB_ID,
        [ds.to_dict() for ds in ctx.datasets],
        ctx.compute_steps(),
        bundles,
        cap,
        effective.get("never_output", []),
    )
    res = run_phase(phases, Phase.MOCK, JOB_ID, request)
    out["log"] = res.logs[-4000:]
    for failed, what in (
        (res.timed_out, "ran past the time limit"),
        (res.oom_killed, "ran out of memory"),
        (res.output_overflow, "wrote more than the output limit"),
        (res.exit_code != 0, "exited with an error"),
    ):
        if failed:
            return _failed(out, "compute", f"the pipeline {what} on the mock data")
    try:
        result, files = res.message(Phase.MOCK, cap)
        specs, frame = mockrun.outcome(result, files, ctx.outputs)
    except CleanroomError as exc:
        return _failed(out, "compute", exc.message)
    out["columns"] = result.get("columns")
    out["model_spec"], out["analysis_specs"] = specs["model_spec"], specs["analysis_specs"]
    if ctx.outputs.get("model") and specs["model_spec"] is None:
        return _failed(out, "release", "a model output needs exactly one model spec")

    # the release phase on the mock run's frame, with the mock run as its structure
    body = release_request(
        JOB_ID,
        policy=effective,
        outputs=ctx.outputs,
        result=result,
        names=ctx.released_names(),
        table_names=ctx.table_names(),
        mock=specs,
        frame=frame,
        mock_frame=frame,
    )
    rel_res = run_phase(phases, Phase.RELEASE, JOB_ID, body.getbuffer())
    if rel_res.exit_code != 0 or rel_res.timed_out or rel_res.oom_killed:
        out["log"] += rel_res.logs[-4000:]
        return _failed(out, "release", "the release phase exited with an error")
    try:
        rel, artifacts = rel_res.message(Phase.RELEASE, cap)
    except CleanroomError as exc:
        return _failed(out, "release", exc.message)
    out["checks"] = rel.get("checks", [])
    if not rel.get("ok"):
        refused = [c for c in out["checks"] if not c.get("passed")]
        return _failed(
            out, "release", "; ".join(f"{c['name']}: {c.get('detail', '')}" for c in refused) or str(rel.get("error"))
        )
    for name, data in sorted(artifacts.items()):
        short = name.removeprefix("artifacts/")
        if short.startswith("aggregates/"):
            out["tables"][short.removeprefix("aggregates/").removesuffix(".csv")] = data.decode("utf-8", "replace")
        elif short == "model_card.md":
            out["model_card"] = data.decode("utf-8", "replace")
        elif short == "metrics.json":
            out["metrics"] = json.loads(data)
    out["artifacts"] = sorted(n.removeprefix("artifacts/") for n in artifacts)
    if "artifacts/model.skops" in artifacts:
        out["coefficients"] = _coefficients(artifacts["artifacts/model.skops"], out["metrics"] or {})
    return out


def _docker(settings: Settings) -> PhaseRunner:
    from cleanroom.runner.launcher import Sandbox

    return Sandbox(settings)


def _coefficients(model: bytes, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """A linear model's coefficients by feature and its intercept (loaded as a recipient would: safely)."""
    import tempfile
    from pathlib import Path

    from cleanroom.modelio import load_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.skops"
        path.write_bytes(model)
        fitted = load_model(path)
    coef = getattr(fitted, "coef_", None)
    features = metrics.get("features") or getattr(fitted, "feature_names_in_", None)
    if coef is None or features is None:
        return None
    values = [float(v) for v in coef.ravel()]
    if len(values) != len(features):
        return None
    intercept = getattr(fitted, "intercept_", 0.0)
    return {
        "features": dict(zip(map(str, features), values, strict=True)),
        "intercept": [float(v) for v in getattr(intercept, "ravel", lambda: [intercept])()],
    }
