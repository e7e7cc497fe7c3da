"""Plugins: submit, review, approve, test on mock data."""

from __future__ import annotations

from pathlib import Path

import click

from cleanroom.cli.base import State, cli, console, emit, pass_state


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
        console.print(f"  [{colour}]{f.get('severity')}[/] {f.get('file')}:{f.get('line')} "
                      f"{f.get('rule')}: {f.get('message')}")


@plugin.command("submit")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@pass_state
def plugin_submit(state: State, folder: str) -> None:
    """Submit a plugin folder; prints its id (content hash) and review report."""
    result = state.client.submit_plugin(folder)
    if state.as_json:
        emit(state, result)
    else:
        _print_review(result)


@plugin.command("list")
@pass_state
def plugin_list(state: State) -> None:
    """List plugins you may see."""
    rows = [{**p, "id": p["id"][:16], "approved_for": [a["dataset"] for a in p["approvals"]
                                                       if a["decision"] == "approve" and not a["revoked_at"]]}
            for p in state.client.list_plugins()]
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
        console.print(f"  {a['decision']} by {a['org']} for {a['dataset']} (policy v{a['policy_version']})"
                      + (" [revoked]" if a["revoked_at"] else ""))
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
        emit(state, state.client.decide_plugin(ref, ds, "approve"))


@plugin.command("reject")
@click.argument("ref")
@click.option("--dataset", required=True)
@click.option("--reason", required=True)
@pass_state
def plugin_reject(state: State, ref: str, dataset: str, reason: str) -> None:
    """Reject a plugin for your dataset, with a reason."""
    emit(state, state.client.decide_plugin(ref, dataset, "reject", reason))


@plugin.command("revoke")
@click.argument("plugin_id")
@click.argument("approval_id")
@pass_state
def plugin_revoke(state: State, plugin_id: str, approval_id: str) -> None:
    """Revoke an approval you gave."""
    emit(state, state.client.revoke_approval(plugin_id, approval_id))


@plugin.command("test")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--dataset", "datasets", multiple=True, required=True, help="Datasets whose mock data to use.")
@click.option("--params", default="{}", help="JSON object of parameters.")
@click.option("--image", envvar="CLEANROOM_SANDBOX_IMAGE", default="cleanroom-sandbox:latest",
              help="Sandbox image (CLEANROOM_SANDBOX_IMAGE; `make images` writes the tag to .env).")
@pass_state
def plugin_test(state: State, folder: str, datasets: tuple[str, ...], params: str, image: str) -> None:
    """Run a plugin on the datasets' mock data in the sandbox image, with a real job's limits."""
    import json

    from cleanroom.local.plugin_test import test_plugin

    result = test_plugin(state.client, Path(folder), list(datasets), json.loads(params), image=image)
    emit(state, result)
    if result.get("exit_code") != 0 or not result.get("ok"):
        # a failing plugin is a failing command, so scripts and CI notice (the log above says why)
        raise SystemExit(1)
