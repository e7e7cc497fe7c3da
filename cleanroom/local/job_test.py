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

import hashlib
import io
import json
from typing import Any

from cleanroom.errors import CleanroomError
from cleanroom.runner import mockrun
from cleanroom.runner.execute import compute_steps, released_names, table_names
from cleanroom.runner.launcher import Sandbox
from cleanroom.sandbox import wire
from cleanroom.settings import Settings

JOB_ID = "job-test"


def _failed(out: dict[str, Any], stage: str, reason: str) -> dict[str, Any]:
    out.update(ok=False, failed_at=stage, reason=reason)
    return out


def job_context(client: Any, spec: Any) -> tuple[dict[str, Any], dict[str, bytes], Any]:
    """The runner's job context for `spec`, read from the room (datasets with schema, mock and policy;
    plugins with manifests; their bundles, each checked against its id), and the effective policy.
    `ctx["approvals_missing"]` lists the approvals `job submit` would still ask for."""
    from cleanroom import jobspec, release_rules

    datasets = [client.get_dataset(name) for name in spec.dataset_names()]
    plugins, bundles, granted = {}, {}, set()
    owners = {ds["name"]: ds["owner"] for ds in datasets}
    for pid in spec.plugin_ids():
        view = client.get_plugin(pid)
        granted |= {(pid, a["dataset"], a["policy_version"], a["dataset_sha256"]) for a in view["approvals"]
                    if a["decision"] == "approve" and not a["revoked_at"] and a["org"] == owners.get(a["dataset"])}
        data = client.request("GET", f"/plugins/{pid}/bundle").content
        if hashlib.sha256(data).hexdigest() != pid:
            raise CleanroomError(f"the room's bundle of plugin {pid[:12]} does not hash to its id")
        plugins[pid] = {"id": pid, "name": view["name"], "kind": view["kind"], "manifest": view["manifest"]}
        bundles[pid] = data
    policies = {ds["name"]: {"owner": ds["owner"], "policy": ds["policy"], "policy_version": ds["policy_version"],
                             "sha256": ds["sha256"]} for ds in datasets}
    # approvals are the owners' business, not the job's shape: every step counts as approved here
    approvals = {(s.plugin, name, ds["policy_version"], ds["sha256"])
                 for s in spec.steps for name, ds in policies.items()}
    effective = jobspec.check_job(spec, datasets=policies, plugins=plugins, approvals=approvals,
                                  recipient_exists=True)
    release_rules.check_spec(spec, plugins, {ds["name"]: ds for ds in datasets}, effective)
    missing = [{"step": i, "plugin": plugins[s.plugin]["name"], "dataset": name, "owner": owners[name]}
               for i, s in enumerate(spec.steps) for name in ([s.dataset] if s.dataset else spec.inputs)
               if (s.plugin, name, policies[name]["policy_version"], policies[name]["sha256"]) not in granted]
    ctx = {"job": {"id": JOB_ID, "spec": spec.to_dict()}, "datasets": datasets, "plugins": plugins,
           "approvals_missing": missing}
    return ctx, bundles, effective.to_dict()


def run_job_test(client: Any, spec_text: str, *, image: str, settings: Settings | None = None) -> dict[str, Any]:
    """Run `spec_text` on mock data; returns {ok, failed_at, reason, checks, tables, model_card, metrics, ...}."""
    from cleanroom.jobspec import parse_jobspec

    out: dict[str, Any] = {"ok": True, "failed_at": None, "reason": None, "checks": [], "tables": {},
                           "model_card": None, "metrics": None, "log": ""}
    spec = parse_jobspec(spec_text)
    if spec.outputs.sample_and_aggregate is not None:
        return _failed(out, "spec", "job test does not run sample_and_aggregate jobs yet: test the statistic "
                                    "with `cleanroom plugin test`")
    try:
        ctx, bundles, effective = job_context(client, spec)
    except CleanroomError as exc:  # what `job submit` would refuse, with its reason
        return _failed(out, "submit", exc.message + (f" ({exc.hint})" if exc.hint else ""))
    out["approvals_missing"] = ctx["approvals_missing"]
    settings = settings or Settings.from_env(sandbox_image=image)
    sandbox = Sandbox(settings)
    cap = settings.job_max_output_bytes

    # the mock run, as the runner does it before every real run
    request = mockrun.request(JOB_ID, ctx["datasets"], compute_steps(ctx), bundles, cap,
                              effective.get("never_output", []))
    res = sandbox.run_phase("compute", JOB_ID, request, image=image)
    out["log"] = res.stderr.decode("utf-8", "replace")[-4000:]
    for failed, what in ((res.timed_out, "ran past the time limit"), (res.oom_killed, "ran out of memory"),
                         (res.output_overflow, "wrote more than the output limit"),
                         (res.exit_code != 0, "exited with an error")):
        if failed:
            return _failed(out, "compute", f"the pipeline {what} on the mock data")
    result, files = wire.read_message(io.BytesIO(res.stdout), "result.json", cap)
    try:
        specs, frame = mockrun.outcome(result, files, spec.to_dict()["outputs"])
    except mockrun.MockRunFailed as exc:
        return _failed(out, "compute", str(exc))
    out["columns"] = result.get("columns")
    out["model_spec"], out["analysis_specs"] = specs["model_spec"], specs["analysis_specs"]
    outputs = ctx["job"]["spec"]["outputs"]
    if outputs.get("model") and specs["model_spec"] is None:
        return _failed(out, "release", "a model output needs exactly one model spec")

    # the release phase on the mock run's frame, with the mock run as its structure
    body = io.BytesIO()
    wire.write_message(body, "job.json", {
        "job_id": JOB_ID, "policy": effective, "outputs": outputs, "model_spec": specs["model_spec"],
        "analysis_specs": specs["analysis_specs"], "dp": effective.get("dp") or {"epsilon": None, "delta": None},
        "names": released_names(ctx), "table_names": table_names(ctx), "mock": specs,
    }, {"frames/joined.arrow": frame, mockrun.MOCK_FRAME: frame})
    rel_res = sandbox.run_phase("release", JOB_ID, body.getvalue(), image=image)
    if rel_res.exit_code != 0 or rel_res.timed_out or rel_res.oom_killed:
        out["log"] += rel_res.stderr.decode("utf-8", "replace")[-4000:]
        return _failed(out, "release", "the release phase exited with an error")
    rel, artifacts = wire.read_message(io.BytesIO(rel_res.stdout), "result.json", cap)
    out["checks"] = rel.get("checks", [])
    if not rel.get("ok"):
        refused = [c for c in out["checks"] if not c.get("passed")]
        return _failed(out, "release", "; ".join(f"{c['name']}: {c.get('detail', '')}" for c in refused)
                       or str(rel.get("error")))
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
    return {"features": dict(zip(map(str, features), values, strict=True)),
            "intercept": [float(v) for v in getattr(intercept, "ravel", lambda: [intercept])()]}
