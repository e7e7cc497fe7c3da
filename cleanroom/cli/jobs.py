"""Jobs, releases, results and the demo."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cleanroom.cli.base import State, cli, console, emit, out, pass_state

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
        show_cost(state, state.client.job_cost(Path(spec_path).read_text()))
        return
    result = state.client.submit_job(Path(spec_path).read_text())
    if state.as_json:
        emit(state, result)
    else:
        click.echo(result["id"])


@job.command("cost")
@click.argument("spec_path", type=click.Path(exists=True, dir_okay=False))
@pass_state
def job_cost(state: State, spec_path: str) -> None:
    """What a job would spend of each input's privacy budget, and the noise on what it releases."""
    show_cost(state, state.client.job_cost(Path(spec_path).read_text()))


@job.command("test")
@click.argument("spec_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--image", envvar="CLEANROOM_SANDBOX_IMAGE", default="cleanroom-sandbox:latest",
              help="Sandbox image (CLEANROOM_SANDBOX_IMAGE; `make images` writes the tag to .env).")
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
    out.print("[bold green]would release[/] (values from mock data, not the real data): "
                  + ", ".join(result.get("artifacts", [])))
    for name, csv in result["tables"].items():
        out.print(f"\n[bold]table {escape(name)}[/]\n{escape(csv)}")
    if result.get("model_card"):
        out.print(f"\n[bold]model card[/]\n{escape(result['model_card'])}")
    if result.get("coefficients"):
        coefs = result["coefficients"]
        out.print("\n[bold]coefficients[/]\n" + "\n".join(f"  {escape(name)}: {value:.4g}"
                                                          for name, value in coefs["features"].items())
                  + f"\n  intercept: {', '.join(f'{v:.4g}' for v in coefs['intercept'])}")
    if result.get("metrics") is not None:
        out.print(f"\n[bold]metrics[/] {escape(str(result['metrics']))}")
    out.print("\nrelease checks: " + ", ".join(c["name"] for c in result["checks"] if c.get("passed")))
    for gap in result.get("approvals_missing") or []:
        out.print(f"note: step {gap['step']} ({escape(gap['plugin'])}) still needs {escape(gap['owner'])}'s "
                  f"approval for {escape(gap['dataset'])}: `job submit` refuses the job until then")


def show_cost(state: State, cost: dict[str, Any]) -> None:
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
                click.echo(f"    noise scale {scale:.4g} ({info.get('unit', '')}), 95% within "
                           f"+-{info['interval_95']:.4g}")
            for name, out in (info.get("outputs") or {}).items():  # sample-and-aggregate: per declared output
                lo, hi = out["range"]
                noise = (f"noise scale {out['noise_scale']:.4g}, 95% within +-{out['interval_95']:.4g}"
                         if "noise_scale" in out else "DP median over the blocks")
                click.echo(f"    {name} in [{lo:g}, {hi:g}] over {info['blocks']} blocks: {noise}")
            if info.get("note"):
                click.echo(f"    {info['note']}")
    for name, left in cost.get("budgets", {}).items():
        click.echo(f"{name}: {left['mode']}, epsilon {left['remaining_epsilon']:g} of {left['epsilon']:g} left")


@job.command("list")
@pass_state
def job_list(state: State) -> None:
    """Jobs you submitted or that touch your data."""
    emit(state, state.client.list_jobs(), ["id", "name", "submitted_by", "status", "phase", "error_class",
                                           "outcome_at"])


@job.command("status")
@click.argument("job_id")
@pass_state
def job_status(state: State, job_id: str) -> None:
    """A job's status."""
    emit(state, state.client.get_job(job_id))


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
    emit(state, state.client.cancel_job(job_id))


@cli.group()
def release() -> None:
    """Releases: what a job lets out, after the release checks."""


@release.command("list")
@pass_state
def release_list(state: State) -> None:
    """Releases addressed to you or over your data."""
    rows = [{**r, "pending_review": r["pending_review"]} for r in state.client.list_releases()]
    emit(state, rows, ["id", "job_id", "recipient", "pending_review", "downloadable"])


@release.command("show")
@click.argument("ref")
@pass_state
def release_show(state: State, ref: str) -> None:
    """Manifest, check results and review state (by release or job id)."""
    emit(state, state.client.get_release(ref))


@release.command("approve")
@click.argument("ref")
@click.option("--dataset", default=None, help="Which of your datasets approves (default: all pending).")
@pass_state
def release_approve(state: State, ref: str, dataset: str | None) -> None:
    """Approve a release held for your review, signed with your org key."""
    emit(state, state.client.approve_release(ref, dataset))


@release.command("reject")
@click.argument("ref")
@click.option("--reason", default="", help="Why (kept with the rejection, for the owners; the analyst sees only "
                                           "that nothing was released).")
@click.option("--dataset", default=None, help="Which of your datasets rejects (default: all pending).")
@pass_state
def release_reject(state: State, ref: str, reason: str, dataset: str | None) -> None:
    """Reject a release held for your review: its recipient can never download it."""
    emit(state, state.client.reject_release(ref, dataset, reason))


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
    for f in done["files"]:
        console.print(f"wrote {f}")


@cli.command()
@click.option("--customers", default=50_000, help="Number of customers to generate.")
@click.option("--workdir", default=None, type=click.Path(file_okay=False))
@pass_state
def demo(state: State, customers: int, workdir: str | None) -> None:
    """Play the motivating scenario against the room that `make up` started."""
    from cleanroom.demo import run_demo

    run_demo(admin_profile=state.profile_name or "admin", customers=customers, workdir=workdir)
