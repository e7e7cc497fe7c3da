"""The root command group, shared options, output helpers and error handling."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from cleanroom.errors import CleanroomError

console = Console(stderr=True)
out = Console()


class State:
    def __init__(self, profile: str | None, as_json: bool) -> None:
        self.profile_name = profile
        self.as_json = as_json
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from cleanroom.client import Client

            self._client = Client.from_profile(self.profile_name)
            if self._client.token:
                self._client.keys()  # first use on this machine: make the org's key pair, register the public half
        return self._client


pass_state = click.make_pass_decorator(State)


def emit(state: State, data: Any, columns: list[str] | None = None, title: str | None = None) -> None:
    """Print JSON with --json (or for nested data), else a table of `columns`."""
    if state.as_json or columns is None:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for row in data:
        table.add_row(*[_cell(row.get(c)) for c in columns])
    out.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float) and value > 1e9:
        import datetime

        return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(value)


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CleanroomError as exc:
            from rich.markup import escape  # messages name TOML tables ([privacy]): text, not markup

            console.print(f"[bold red]error:[/] {escape(exc.message)}")
            if exc.details:
                console.print(f"  details: {escape(json.dumps(exc.details, default=str))}")
            if exc.hint:
                console.print(f"  hint: {escape(exc.hint)}")
            sys.exit(1)


@click.group(cls=Group)
@click.option("--profile", envvar="CLEANROOM_PROFILE", help="Profile name (default: 'default').")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.version_option(package_name="cleanroom")
@click.pass_context
def cli(ctx: click.Context, profile: str | None, as_json: bool) -> None:
    """cleanroom: train models and compute statistics over combined data without sharing it."""
    ctx.obj = State(profile, as_json)


def main() -> None:
    from cleanroom.cli import admin, data, jobs, plugins, room, server  # noqa: F401  (register commands)

    cli(prog_name="cleanroom")
