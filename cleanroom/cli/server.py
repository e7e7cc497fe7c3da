"""Service commands: `serve` (the API), `runner`, and operator helpers."""

from __future__ import annotations

import signal
import sys

import click

from cleanroom.cli.base import cli


@cli.command()
@click.option("--host", default=None, help="Bind address (CLEANROOM_HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (CLEANROOM_PORT, default 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Run the API service."""
    import ipaddress

    import uvicorn

    from cleanroom.api.app import create_app
    from cleanroom.errors import ValidationError
    from cleanroom.settings import Settings

    settings = Settings.from_env(host=host, port=port)
    tls = bool(settings.tls_cert and settings.tls_key)
    try:
        loopback = ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        loopback = settings.host == "localhost"
    if not tls and not loopback and not settings.allow_insecure_remote:
        raise ValidationError(
            f"refusing plain HTTP on {settings.host}: give CLEANROOM_TLS_CERT and "
            "CLEANROOM_TLS_KEY, or set CLEANROOM_ALLOW_INSECURE_REMOTE=true behind a "
            "private network (as docker-compose.yml does for the published loopback port)"
        )
    app = create_app(settings)
    token = app.state.bootstrap_token
    if token:
        print(f"cleanroom: bootstrap admin token (shown once): {token}", file=sys.stderr, flush=True)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        ssl_certfile=settings.tls_cert if tls else None,
        ssl_keyfile=settings.tls_key if tls else None,
    )


@cli.command()
@click.option("--once", is_flag=True, help="Run queued jobs, then exit.")
@click.option("--pinned-keys", is_flag=True, help="List the owners' signing keys this runner pinned, then exit.")
@click.option(
    "--forget-key", metavar="ORG", help="Drop the pinned signing key of ORG (after a genuine key change), then exit."
)
def runner(once: bool, pinned_keys: bool, forget_key: str | None) -> None:
    """Run the job runner (needs the Docker engine and the room key volume)."""
    from cleanroom.runner.pins import KeyPins
    from cleanroom.runner.service import RunnerService
    from cleanroom.settings import Settings

    settings = Settings.from_env()
    if forget_key:
        KeyPins(settings.runner_home).forget(forget_key)
        click.echo(f"dropped the pinned key of {forget_key}; the next job pins the key the room reports")
    elif pinned_keys:
        for org, fp in KeyPins(settings.runner_home).pinned().items():
            click.echo(f"{org}\t{fp}")
    else:
        service = RunnerService(Settings.from_env())
        # `docker compose down` and `docker stop` send SIGTERM: stop claiming, let running jobs end,
        # remove the warm pool (the engine's SIGKILL after its grace period cuts this short; the next
        # start removes what is left and re-queues interrupted jobs)
        signal.signal(signal.SIGTERM, lambda *_: service.stop.set())
        service.run(once=once)


@cli.group()
def admin() -> None:
    """Operator commands: rotate-token runs where the API's data directory is; check and sweep go over
    the API with an admin profile."""


@admin.command("rotate-token")
def rotate_token() -> None:
    """Revoke the admin tokens and print a new one (stdout, nothing else)."""
    from cleanroom.api.app import ensure_admin, rotate_admin_token
    from cleanroom.settings import Settings
    from cleanroom.store.db import Store

    settings = Settings.from_env()
    store = Store(settings.data_dir, settings.database_url)
    ensure_admin(store, settings)
    click.echo(rotate_admin_token(store))
