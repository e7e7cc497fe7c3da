"""Jobs, releases, results and the demo."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from cleanroom.cli.base import State, cli, command, console, emit, facts, next_step, out, pass_state, show, table

EXIT = {"succeeded": 0, "released": 0, "failed": 3, "nothing_released": 3, "cancelled": 4, "timed_out": 5}


@cli.group()
def job() -> None:
    """Jobs over the room's data."""


@job.command("submit")
@click.argument("spec_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Show the privacy charge and the noise; submit nothing.")
@pass_state
def job_submit(state: State, spec_path: str, dry_run: bool) -> None:
    """Submit a job spec (TOML); refused with a precise reason when it cannot run."""
    if dry_run:
        show_cost(state, state.client.job_cost(Path(spec_path).read_text()), spec_path)
        return
    result = state.client.submit_job(Path(spec_path).read_text())
    if state.as_json:
        emit(state, result)
    else:
        click.echo(result["id"])  # alone on stdout: JOB=$(cleanroom job submit spec.toml)
        next_step(state, "follow it", f"job wait {result['id']}")


@job.command("cost")
@click.argument("spec_path", type=click.Path(exists=True, dir_okay=False))
@pass_state
def job_cost(state: State, spec_path: str) -> None:
    """What a job would spend of each input's privacy budget, and the noise on what it releases."""
    show_cost(state, state.client.job_cost(Path(spec_path).read_text()), spec_path)


@job.command("test")
@click.argument("spec_path", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--image",
    envvar="CLEANROOM_SANDBOX_IMAGE",
    default="cleanroom-sandbox:latest",
    help="Sandbox image (CLEANROOM_SANDBOX_IMAGE; `make images` writes the tag to .env).",
)
@pass_state
def job_test(state: State, spec_path: str, image: str) -> None:
    """Run the whole job on the inputs' mock data in the sandbox image, here: what would be released, or
    why not. No budget is spent and nothing is stored in the room."""
    from cleanroom.local.job_test import run_job_test

    result = run_job_test(state.client, Path(spec_path).read_text(), image=image)
    if state.as_json:
        emit(state, result)
    else:
        show_job_test(result)
    if not result["ok"]:
        raise SystemExit(1)  # a failing job is a failing command, so scripts and CI notice


def show_job_test(result: dict[str, Any]) -> None:
    from rich.markup import escape

    if not result["ok"]:
        out.print(f"[bold red]would fail[/] at {result['failed_at']}: {escape(str(result['reason']))}")
        if result.get("log"):
            out.print("--- log ---\n" + escape(result["log"]))
        return
    out.print(
        "[bold green]would release[/] (values from mock data, not the real data): "
        + ", ".join(result.get("artifacts", []))
    )
    for name, csv in result["tables"].items():
        out.print(f"\n[bold]table {escape(name)}[/]\n{escape(csv)}")
    if result.get("model_card"):
        out.print(f"\n[bold]model card[/]\n{escape(result['model_card'])}")
    if result.get("coefficients"):
        coefs = result["coefficients"]
        out.print(
            "\n[bold]coefficients[/]\n"
            + "\n".join(f"  {escape(name)}: {value:.4g}" for name, value in coefs["features"].items())
            + f"\n  intercept: {', '.join(f'{v:.4g}' for v in coefs['intercept'])}"
        )
    if result.get("metrics") is not None:
        out.print(f"\n[bold]metrics[/] {escape(str(result['metrics']))}")
    out.print("\nrelease checks: " + ", ".join(c["name"] for c in result["checks"] if c.get("passed")))
    for gap in result.get("approvals_missing") or []:
        out.print(
            f"note: step {gap['step']} ({escape(gap['plugin'])}) still needs {escape(gap['owner'])}'s "
            f"approval for {escape(gap['dataset'])}: `job submit` refuses the job until then"
        )


def show_cost(state: State, cost: dict[str, Any], spec_path: str | None = None) -> None:
    if state.as_json:
        emit(state, cost)
        return
    plan = cost.get("plan")
    click.echo("would be admitted" if cost["admitted"] else f"would be refused: {cost['reason']}")
    if plan is None:
        click.echo("mode: exact (every input has require_dp = false): no privacy charge; releases are reviewed")
    else:
        click.echo(f"charge: epsilon {plan['epsilon']:g}, delta {plan['delta']:g} on every DP input")
        for part, info in plan["parts"].items():
            click.echo(f"  {part}: epsilon {info['epsilon']:.4g} - {info['mechanism']}")
            scale = info.get("noise_scale")
            if isinstance(scale, dict):
                for key, value in scale.items():
                    click.echo(f"    {key}: noise scale {value:.4g}, 95% within +-{info['interval_95'][key]:.4g}")
            elif scale is not None:
                click.echo(
                    f"    noise scale {scale:.4g} ({info.get('unit', '')}), 95% within +-{info['interval_95']:.4g}"
                )
            for name, out in (info.get("outputs") or {}).items():  # sample-and-aggregate: per declared output
                lo, hi = out["range"]
                noise = (
                    f"noise scale {out['noise_scale']:.4g}, 95% within +-{out['interval_95']:.4g}"
                    if "noise_scale" in out
                    else "DP median over the blocks"
                )
                click.echo(f"    {name} in [{lo:g}, {hi:g}] over {info['blocks']} blocks: {noise}")
            if info.get("note"):
                click.echo(f"    {info['note']}")
    for name, left in cost.get("budgets", {}).items():
        click.echo(f"{name}: {left['mode']}, epsilon {left['remaining_epsilon']:g} of {left['epsilon']:g} left")
    if cost["admitted"]:
        next_step(state, "submit it", f"job submit {shlex.quote(spec_path) if spec_path else 'SPEC'}")


@job.command("list")
@pass_state
def job_list(state: State) -> None:
    """Jobs you submitted or that touch your data."""
    emit(
        state, state.client.list_jobs(), ["id", "name", "submitted_by", "status", "phase", "error_class", "outcome_at"]
    )


@job.command("status")
@click.argument("job_id")
@pass_state
def job_status(state: State, job_id: str) -> None:
    """A job's status (--json: with its spec, as the API gives it)."""
    job = state.client.get_job(job_id)
    show(state, job, lambda: show_job(state, job))


def show_job(state: State, job: dict[str, Any]) -> None:
    facts(
        [
            ("job", job["id"]),
            ("name", job.get("name")),
            ("submitted by", job.get("submitted_by")),
            ("recipient", job.get("recipient")),
            ("inputs", job.get("inputs")),
            ("status", job["status"] + (f" ({job['phase']})" if job.get("phase") else "")),
            ("error class", job.get("error_class")),
            ("reason", job.get("reason")),
            ("created", job.get("created_at")),
            ("started", job.get("started_at")),
            ("finished", job.get("finished_at")),
            ("outcome at", job.get("outcome_at")),
            ("release", job.get("release_id")),
        ]
    )
    outcome_hint(state, job)


def outcome_hint(state: State, job: dict[str, Any]) -> None:
    """What to run next, given what the caller sees of the job."""
    status, ref = job["status"], job["id"]
    if status == "released":
        next_step(state, "download and verify the result", f"result get {ref} -o out/")
    elif status == "succeeded":
        next_step(state, "see the release checks and review state", f"release show {ref}")
    elif status in ("failed", "timed_out") and job.get("error_class"):
        next_step(state, "read the job's log", f"job logs {ref}")
    elif status in ("queued", "running"):
        next_step(state, "wait for the outcome", f"job wait {ref}")


@job.command("wait")
@click.argument("job_id")
@click.option("--timeout", default=1800.0, help="Seconds to wait before giving up (the job keeps running).")
@pass_state
def job_wait(state: State, job_id: str, timeout: float) -> None:
    """Follow a job until its outcome; the exit code tells it (0 released or succeeded, 3 nothing released or
    failed, 4 cancelled, 5 timed out). An analyst learns the outcome at the job's outcome time (its start
    plus the spec's time budget); input owners see the phases and the end as they happen."""

    def show(j: dict[str, Any]) -> None:
        console.print(f"{j['id']}: {j['status']}" + (f" ({j['phase']})" if j.get("phase") else ""))

    final = state.client.wait_job(job_id, timeout=timeout, on_update=show)
    if final.get("error_class"):
        console.print(f"error class: {final['error_class']}")
    if final.get("reason") and final["status"] != "succeeded":
        console.print(f"reason: {final['reason']}")
    if state.as_json:
        emit(state, final)
    else:
        outcome_hint(state, final)
    sys.exit(EXIT.get(final["status"], 1))


@job.command("logs")
@click.argument("job_id")
@pass_state
def job_logs(state: State, job_id: str) -> None:
    """The job's logs (input owners only; decrypted with your org key)."""
    click.echo(state.client.job_logs(job_id))


@job.command("cancel")
@click.argument("job_id")
@pass_state
def job_cancel(state: State, job_id: str) -> None:
    """Cancel a queued or running job."""
    job = state.client.cancel_job(job_id)
    show(state, job, lambda: click.echo(f"{job['id']}: {job['status']}"))


@cli.group()
def release() -> None:
    """Releases: what a job lets out, after the release checks."""


@release.command("list")
@pass_state
def release_list(state: State) -> None:
    """Releases addressed to you or over your data."""
    emit(state, state.client.list_releases(), ["id", "job_id", "recipient", "pending_review", "downloadable"])


@release.command("show")
@click.argument("ref")
@pass_state
def release_show(state: State, ref: str) -> None:
    """Check results, outputs and review state (by release or job id; --json: the manifest and receipt too)."""
    rel = state.client.get_release(ref)
    show(state, rel, lambda: show_release(state, rel))


def show_release(state: State, rel: dict[str, Any]) -> None:
    from cleanroom.client import manifest_sha256

    manifest = rel.get("manifest") or {}
    rejected = rel.get("rejected_by") or []
    reasons = rel.get("rejection_reasons") or {}
    facts(
        [
            ("release", rel["id"]),
            ("job", rel.get("job_id")),
            ("recipient", rel.get("recipient")),
            ("created", rel.get("created_at")),
            ("manifest sha256", manifest_sha256(manifest)),
            ("epsilon spent", manifest.get("epsilon_spent")),
            ("reviewed by", rel.get("review_by")),
            ("approved by", rel.get("approved_by")),
            ("rejected by", [f"{d} ({reasons[d]})" if reasons.get(d) else d for d in rejected]),
            ("waits for", rel.get("pending_review")),
            ("downloadable", rel.get("downloadable")),
        ]
    )
    checks = manifest.get("checks") or []
    if checks:
        click.echo()
        table(
            [
                (c.get("name"), "passed" if c.get("passed") else "FAILED", c.get("detail") or c.get("reason"))
                for c in checks
            ],
            ["check", "result", "detail"],
            title="release checks",
        )
    outputs = manifest.get("outputs") or {}
    if outputs:
        click.echo()
        # sizes of the content itself (the manifest's), not of the ciphertext the room stores
        table(
            [(name, entry.get("bytes"), entry.get("sha256")) for name, entry in sorted(outputs.items())],
            ["output", "bytes", "sha256"],
            title="what leaves",
        )
    job = rel.get("job_id") or rel["id"]
    next_step(state, "see the content, decrypted on this machine", f"result get {job} -o review/")
    if rel.get("pending_review"):
        next_step(
            state, "decide", f"release approve {job}   or   {command(state, f'release reject {job}')} --reason '...'"
        )


@release.command("approve")
@click.argument("ref")
@click.option("--dataset", default=None, help="Which of your datasets approves (default: all pending).")
@pass_state
def release_approve(state: State, ref: str, dataset: str | None) -> None:
    """Approve a release held for your review, signed with your org key."""
    rel = state.client.approve_release(ref, dataset)
    show(state, rel, lambda: click.echo(decided("approved", rel)))


def decided(verb: str, rel: dict[str, Any]) -> str:
    """One line: the decision, what it was signed over, and what the release waits for now."""
    from cleanroom.client import manifest_sha256

    line = f"{verb} release {rel['id']} (sha256 {manifest_sha256(rel.get('manifest') or {})})"
    if rel.get("pending_review"):
        return line + f"; still waits for {', '.join(rel['pending_review'])}"
    if rel.get("downloadable"):
        return line + f"; {rel.get('recipient')} can download it"
    return line


@release.command("reject")
@click.argument("ref")
@click.option(
    "--reason",
    default="",
    help="Why (kept with the rejection, for the owners; the analyst sees only that nothing was released).",
)
@click.option("--dataset", default=None, help="Which of your datasets rejects (default: all pending).")
@pass_state
def release_reject(state: State, ref: str, reason: str, dataset: str | None) -> None:
    """Reject a release held for your review: its recipient can never download it."""
    rel = state.client.reject_release(ref, dataset, reason)
    show(state, rel, lambda: click.echo(decided("rejected", rel)))


@cli.group()
def result() -> None:
    """Results released to you."""


@result.command("get")
@click.argument("job_id")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False))
@pass_state
def result_get(state: State, job_id: str, out_dir: str) -> None:
    """Download and decrypt a job's released artifacts and its signed receipt."""
    done = state.client.get_result(job_id, out_dir)
    if state.as_json:
        emit(state, done)
        return
    for f in done["files"]:
        console.print(f"wrote {f}")
    next_step(state, "check the files against the signed receipt, offline", f"receipt verify {out_dir}")


@cli.command()
@click.option("--customers", default=50_000, help="Number of customers to generate.")
@click.option("--workdir", default=None, type=click.Path(file_okay=False))
@pass_state
def demo(state: State, customers: int, workdir: str | None) -> None:
    """Play the motivating scenario against the room that `make up` started."""
    from cleanroom.demo import run_demo

    run_demo(admin_profile=state.profile_name or "admin", customers=customers, workdir=workdir)
