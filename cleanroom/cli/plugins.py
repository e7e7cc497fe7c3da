"""Plugins: submit, review, approve, test on mock data."""

from __future__ import annotations

from pathlib import Path

import click

from cleanroom.cli.base import State, cli, console, emit, facts, next_step, pass_state, show, table


@cli.group()
def plugin() -> None:
    """Analysis plugins and their approvals."""


def _print_review(result: dict) -> None:  # type: ignore[type-arg]
    findings = result.get("review", {}).get("findings", [])
    console.print(f"plugin {result['name']} {result['version']} ({result['kind']})  id {result['id']}")
    if not findings:
        console.print("review: no findings")
    for f in findings:
        colour = "red" if f.get("severity") == "blocking" else "yellow"
        console.print(
            f"  [{colour}]{f.get('severity')}[/] {f.get('file')}:{f.get('line')} {f.get('rule')}: {f.get('message')}"
        )


@plugin.command("submit")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@pass_state
def plugin_submit(state: State, folder: str) -> None:
    """Submit a plugin folder; prints its id (content hash) and review report."""
    result = state.client.submit_plugin(folder)
    if state.as_json:
        emit(state, result)
        return
    _print_review(result)
    click.echo(
        f"next: the owner of each dataset it touches approves it, with their own profile: "
        f"cleanroom --profile OWNER plugin approve {result['id']} --dataset NAME",
        err=True,
    )
    next_step(state, "see its approvals so far", f"plugin show {result['id'][:16]}")


@plugin.command("list")
@pass_state
def plugin_list(state: State) -> None:
    """List plugins you may see."""
    listed = state.client.list_plugins()
    if state.as_json:  # the API's objects, full ids
        emit(state, listed)
        return
    rows = [
        {
            **p,
            "id": p["id"][:16],
            "approved_for": [
                a["dataset"] for a in p["approvals"] if a["decision"] == "approve" and not a["revoked_at"]
            ],
        }
        for p in listed
    ]
    emit(state, rows, ["id", "name", "version", "kind", "submitted_by", "blocking_findings", "approved_for"])


@plugin.command("show")
@click.argument("ref")
@click.option("--diff", is_flag=True, help="Show the diff against the last approved version.")
@pass_state
def plugin_show(state: State, ref: str, diff: bool) -> None:
    """Code, manifest, review findings and approvals of a plugin (id, id prefix or name@version)."""
    p = state.client.get_plugin(ref)
    if state.as_json:
        emit(state, p)
        return
    _print_review(p)
    for a in p["approvals"]:
        console.print(
            f"  {a['decision']} by {a['org']} for {a['dataset']} (policy v{a['policy_version']})"
            + (" [revoked]" if a["revoked_at"] else "")
        )
    if diff and p.get("diff_against"):
        click.echo(p["diff_against"]["diff"])
    else:
        for path, text in p["files"].items():
            click.echo(f"--- {path}")
            for n, line in enumerate(text.splitlines(), 1):
                click.echo(f"{n:4d}  {line}")


@plugin.command("approve")
@click.argument("ref")
@click.option("--dataset", "datasets", multiple=True, required=True)
@pass_state
def plugin_approve(state: State, ref: str, datasets: tuple[str, ...]) -> None:
    """Approve this exact plugin for your dataset(s), signed with your org key."""
    for ds in datasets:
        decision = state.client.decide_plugin(ref, ds, "approve")
        show(
            state,
            decision,
            lambda d=decision: click.echo(  # type: ignore[misc]
                f"approved plugin {d['plugin_id']} for {d['dataset']} (approval {d['id']})"
            ),
        )


@plugin.command("reject")
@click.argument("ref")
@click.option("--dataset", required=True)
@click.option("--reason", required=True)
@pass_state
def plugin_reject(state: State, ref: str, dataset: str, reason: str) -> None:
    """Reject a plugin for your dataset, with a reason."""
    d = state.client.decide_plugin(ref, dataset, "reject", reason)
    show(state, d, lambda: click.echo(f"rejected plugin {d['plugin_id']} for {d['dataset']} (decision {d['id']})"))


@plugin.command("revoke")
@click.argument("plugin_id")
@click.argument("approval_id")
@pass_state
def plugin_revoke(state: State, plugin_id: str, approval_id: str) -> None:
    """Revoke an approval you gave."""
    result = state.client.revoke_approval(plugin_id, approval_id)
    show(state, result, lambda: click.echo(f"revoked approval {result['id']}: jobs that relied on it are refused"))


@plugin.command("test")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--dataset", "datasets", multiple=True, required=True, help="Datasets whose mock data to use.")
@click.option("--params", default="{}", help="JSON object of parameters.")
@click.option(
    "--image",
    envvar="CLEANROOM_SANDBOX_IMAGE",
    default="cleanroom-sandbox:latest",
    help="Sandbox image (CLEANROOM_SANDBOX_IMAGE; `make images` writes the tag to .env).",
)
@pass_state
def plugin_test(state: State, folder: str, datasets: tuple[str, ...], params: str, image: str) -> None:
    """Run a plugin on the datasets' mock data in the sandbox image, with a real job's limits."""
    import json

    from cleanroom.local.plugin_test import test_plugin

    result = test_plugin(state.client, Path(folder), list(datasets), json.loads(params), image=image)
    show(state, result, lambda: show_plugin_test(result))
    if result.get("exit_code") != 0 or not result.get("ok"):
        # a failing plugin is a failing command, so scripts and CI notice (the log above says why)
        raise SystemExit(1)


def show_plugin_test(result: dict) -> None:  # type: ignore[type-arg]
    from rich.markup import escape

    ok = result.get("exit_code") == 0 and result.get("ok")
    how = (
        f"{result.get('seconds', 0):.1f} s"
        + (", out of memory" if result.get("oom_killed") else "")
        + (", timed out" if result.get("timed_out") else "")
    )
    console.print(("[bold green]worked[/]" if ok else "[bold red]failed[/]") + f" on mock data ({escape(how)})")
    facts(
        [
            ("plugin id", result.get("plugin_id")),
            ("error", result.get("error")),
            ("exit code", result.get("exit_code") if result.get("exit_code") else None),
            ("rows", result.get("rows")),
            ("columns", result.get("columns")),
            ("model spec", result.get("model_specs")),
            ("analysis spec", result.get("analysis_specs")),
            ("statistic", result.get("statistic")),
        ]
    )
    head = result.get("head") or []
    if head:
        columns = list(head[0])
        table([[row.get(c) for c in columns] for row in head], columns, title="first rows (mock data)")
    if result.get("log") and not ok:
        click.echo("--- log ---\n" + result["log"])
