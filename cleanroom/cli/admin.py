"""`cleanroom admin check` and `cleanroom admin sweep`: the room's blob storage, over the admin API."""

from __future__ import annotations

import sys

import click

from cleanroom.cli.base import State, command, console, emit, pass_state
from cleanroom.cli.server import admin


@admin.command("check")
@click.option("--no-hashes", is_flag=True, help="Only check that referenced blobs exist (skip re-hashing them).")
@pass_state
def admin_check(state: State, no_hashes: bool) -> None:
    """Verify every referenced blob exists with the right sha256; list orphans. Exit 1 when a
    referenced blob is missing or corrupt (admin profile)."""
    result = state.client.storage_check(verify_hashes=not no_hashes)
    if state.as_json:
        emit(state, result)
    else:
        console.print(
            f"{result['referenced']} referenced blobs, {result['blobs']} stored, "
            f"{len(result['orphans'])} orphans ({result['orphan_bytes']} bytes), "
            f"{result['staged_files']} staged files, {result['pending_uploads']} pending uploads"
        )
        for kind in ("missing", "corrupt"):
            for item in result[kind]:
                console.print(f"[bold red]{kind}:[/] {item['blob']} (needed by {', '.join(item['referenced_by'])})")
        if result["interrupted_sweep"]:
            console.print(
                f"an interrupted sweep (audit event {result['interrupted_sweep']['plan_seq']}): "
                f"run `{command(state, 'admin sweep')}` again to finish it"
            )
        console.print("storage ok" if result["ok"] else "[bold red]storage damaged[/]")
    if not result["ok"]:
        sys.exit(1)


@admin.command("sweep")
@click.option(
    "--grace-seconds",
    type=int,
    default=None,
    help="Keep blobs written more recently than this (default CLEANROOM_BLOB_GRACE_SECONDS; min 3600).",
)
@click.option("--dry-run", is_flag=True, help="Only show what would be removed.")
@pass_state
def admin_sweep(state: State, grace_seconds: int | None, dry_run: bool) -> None:
    """Delete blobs that no record references and that are older than the grace period, stale
    staged files and expired upload declarations (admin profile; audited)."""
    result = state.client.storage_sweep(grace_seconds=grace_seconds, dry_run=dry_run)
    if state.as_json:
        emit(state, result)
        return
    verb = "would delete" if dry_run else "deleted"
    count = result["blobs_count"] if dry_run else result["deleted_count"]
    console.print(
        f"{verb} {count} unreferenced blobs ({result['bytes']} bytes), "
        f"{result['staged_files']} staged files, {len(result['expired_uploads'])} expired uploads "
        f"(grace {result['grace_seconds']} s)"
    )
