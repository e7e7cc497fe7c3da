"""Profiles, the room, orgs, the audit log and receipts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cleanroom.cli.base import State, cli, console, emit, facts, next_step, pass_state, show


@cli.group()
def profile() -> None:
    """Connection profiles (one per org you act as)."""


@profile.command("save")
@click.argument("name")
@click.option("--url", required=True, help="The room's API, e.g. https://room.example:8000")
@click.option("--token", default=None, help="The org token (prefer --token-stdin).")
@click.option("--token-stdin", is_flag=True, help="Read the token from standard input.")
@click.option("--ca-file", default=None, help="CA bundle to verify the room's HTTPS certificate.")
def profile_save(name: str, url: str, token: str | None, token_stdin: bool, ca_file: str | None) -> None:
    """Save a profile."""
    from cleanroom.errors import ValidationError
    from cleanroom.profile import Profile

    if token_stdin:
        token = sys.stdin.readline().strip()
    if not token:
        raise ValidationError("give --token or --token-stdin")
    p = Profile.load(name)
    p.url, p.token, p.ca_file = url.rstrip("/"), token, ca_file
    p.save()
    console.print(f"saved profile {name} ({p.path})")


@profile.command("list")
@pass_state
def profile_list(state: State) -> None:
    """List saved profiles."""
    from cleanroom.profile import home

    names = sorted(p.stem for p in (home() / "profiles").glob("*.json"))
    emit(state, [{"profile": n} for n in names], ["profile"])


@cli.group()
def room() -> None:
    """The clean room itself."""


@room.command("info")
@pass_state
def room_info(state: State) -> None:
    """The room's public keys and fingerprint (pinned in your profile on first use)."""
    info = state.client.room()
    keys = info.get("keys") or {}
    show(
        state,
        info,
        lambda: facts(
            [
                ("room", state.client.url),
                ("version", info.get("version")),
                ("ready", info.get("ready") if keys else "no: no room key yet (is the runner up?)"),
                ("fingerprint", keys.get("fingerprint")),
                ("encryption key", keys.get("enc_public")),
                ("signing key", keys.get("sign_public")),
                ("holds", ", ".join(f"{n} {what}" for what, n in (info.get("counts") or {}).items())),
            ]
        ),
    )


@cli.command()
@pass_state
def whoami(state: State) -> None:
    """The org behind your profile's token."""
    me = state.client.whoami()
    show(
        state,
        me,
        lambda: facts(
            [
                ("org", me.get("name")),
                ("roles", me.get("roles")),
                ("key fingerprint", (me.get("keys") or {}).get("fingerprint") or "no keys yet"),
                ("profile", state.profile_name or "default"),
            ]
        ),
    )


@cli.group()
def org() -> None:
    """Orgs in the room."""


@org.command("create")
@click.argument("name")
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    type=click.Choice(["owner", "analyst", "reviewer"]),
    help="Repeat for several roles.",
)
@click.option("--save-profile", default=None, help="Also save a profile with the new token.")
@pass_state
def org_create(state: State, name: str, roles: tuple[str, ...], save_profile: str | None) -> None:
    """Create an org (admin); prints its token once."""
    result = state.client.create_org(name, list(roles))
    if save_profile:
        from cleanroom.profile import Profile

        p = Profile.load(save_profile)
        p.url, p.token = state.client.url, result["token"]
        p.ca_file = state.client.profile.ca_file if state.client.profile else None
        p.save()
        console.print(f"saved profile {save_profile}")
    if state.as_json:
        emit(state, result)
        return
    org = result.get("org") or result
    click.echo(f"created org {org.get('name', name)} ({', '.join(org.get('roles') or roles)})")
    click.echo(f"token (shown once): {result['token']}")
    if save_profile:
        next_step(None, "act as it", f"--profile {save_profile} whoami")
    else:
        click.echo(
            f"next: give the token to the org, which saves it with: cleanroom profile save {name} "
            f"--url {state.client.url} --token-stdin",
            err=True,
        )


@org.command("rotate-token")
@click.argument("name", default="me")
@pass_state
def org_rotate_token(state: State, name: str) -> None:
    """Revoke an org's tokens and print a new one, once (your own org by default; admins: any org).
    Rotating your own token also updates the profile in use."""
    result = state.client.rotate_token(name)
    if state.as_json:
        emit(state, result)
        return
    org = result["org"]["name"]
    click.echo(f"new token for {org} (shown once; its earlier tokens no longer work): {result['token']}")
    if org == state.client.whoami()["name"] and state.client.profile is not None:
        click.echo(f"profile {state.client.profile.name} now uses it", err=True)


@org.command("rotate-keys")
@pass_state
def org_rotate_keys(state: State) -> None:
    """Replace your org's key pair (signed by the old and the new key). Earlier releases stay readable;
    your plugin approvals are revoked and must be given again."""
    result = state.client.rotate_keys()
    if state.as_json:
        emit(state, result)
        return
    click.echo(
        f"new key pair for {result.get('name')}: fingerprint {(result.get('keys') or {}).get('fingerprint')}; "
        f"{result.get('approvals_revoked', 0)} plugin approval(s) revoked"
    )
    if result.get("approvals_revoked"):
        next_step(state, "approve again with the new key", "plugin approve <id> --dataset NAME")


@org.command("list")
@pass_state
def org_list(state: State) -> None:
    """List orgs and their roles."""
    orgs = state.client.list_orgs()
    if state.as_json:
        emit(state, orgs)
        return
    rows = [{**o, "fingerprint": (o.get("keys") or {}).get("fingerprint")} for o in orgs]
    emit(state, rows, ["name", "roles", "fingerprint"])


@cli.group()
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command("list")
@click.option("--limit", default=50, help="Show the last N events.")
@pass_state
def audit_list(state: State, limit: int) -> None:
    """Show the latest audit events."""
    events = list(state.client.audit_events())[-limit:]
    if not state.as_json:  # events about other orgs come redacted: only their place and hashes
        events = [{**e, "action": "(redacted)"} if e.get("redacted") else e for e in events]
    emit(state, events, ["seq", "ts", "actor", "action", "object_type", "object_id"])


@audit.command("verify")
@pass_state
def audit_verify(state: State) -> None:
    """Verify the hash chain here; exit 1 naming the first broken event."""
    result = state.client.audit_verify()
    if state.as_json:
        emit(state, result)
        if not result["ok"]:
            sys.exit(1)
        return
    if result["ok"]:
        console.print(f"audit log intact: {result['count']} events, head {result['head']['hash'][:16]}")
        return
    console.print(f"[bold red]audit log broken at event {result['broken_at']}:[/] {result['reason']}")
    sys.exit(1)


@cli.group()
def receipt() -> None:
    """Signed receipts of jobs."""


@receipt.command("verify")
@click.argument("path", type=click.Path(exists=True))
@click.option("--fingerprint", default=None, help="Expected room key fingerprint (default: your profile's).")
@pass_state
def receipt_verify(state: State, path: str, fingerprint: str | None) -> None:
    """Check a receipt offline: its signature, and given the folder `result get` wrote, that the files
    in it are exactly the receipt's outputs (names, sha256, sizes)."""
    from cleanroom.client import verify_receipt, verify_result_dir
    from cleanroom.errors import ValidationError
    from cleanroom.profile import Profile

    expected = fingerprint or Profile.load(state.profile_name).room_fingerprint
    if Path(path).is_dir():
        result = verify_result_dir(path, expected_fingerprint=expected)
        if state.as_json:
            emit(state, result)
            return
        console.print(
            f"receipt valid: job {result['job']}, signed by room key {result['fingerprint']}; "
            f"{len(result['files'])} file(s) match it"
        )
    else:
        try:
            data = json.loads(Path(path).read_text())
        except ValueError as exc:
            raise ValidationError(f"{path} is not JSON") from exc
        result = verify_receipt(data, expected_fingerprint=expected)
        if state.as_json:
            emit(state, result)
            return
        console.print(f"receipt valid: job {result['job']}, signed by room key {result['fingerprint']}")
        console.print("note: only the signature was checked; pass the folder to check the files too")
    if not expected:
        console.print("note: no pinned room fingerprint to compare with; pass --fingerprint")


@cli.group("join-secret")
def join_secret() -> None:
    """The secret data owners share to pseudonymise join keys."""


@join_secret.command("new")
@click.argument("path", type=click.Path(dir_okay=False))
def join_secret_new(path: str) -> None:
    """Write a new random join secret to PATH (mode 0600). Share it only with the other owners."""
    from cleanroom.errors import Conflict
    from cleanroom.prepare.ingest import new_join_secret, save_join_secret

    if Path(path).exists():
        raise Conflict(f"{path} exists; refusing to overwrite a join secret")
    save_join_secret(path, new_join_secret())
    console.print(f"wrote {path}")
