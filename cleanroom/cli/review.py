"""`cleanroom review`: the owner's review pages, served from this machine."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from cleanroom.cli.base import State, cli, console, pass_state


@cli.command("review")
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="Local port (default: a free one).")
@click.option("--no-browser", is_flag=True, help="Print the address only; do not open a browser.")
@pass_state
def review(state: State, port: int, no_browser: bool) -> None:
    """Review the releases held for you in your browser: each release's content decrypted here, beside its
    checks, and approve or reject it (signed here with your org's key). Serves 127.0.0.1 only, behind a
    random token in the printed address; stop with Ctrl-C."""
    from cleanroom.local.review_server import ReviewServer, open_browser

    client = state.client  # a bad profile or token fails here, before anything listens
    server = ReviewServer(client, port=port)
    folder = Path(tempfile.mkdtemp(prefix="cleanroom-review-"))
    try:
        click.echo(server.url)
        console.print(f"reviewing as {client.whoami()['name']} on {client.url}; Ctrl-C stops")
        if not no_browser and not open_browser(server.url, folder):
            console.print("no browser found: open the address above")
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        shutil.rmtree(folder, ignore_errors=True)
