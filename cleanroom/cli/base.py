"""The root command group, shared options, output helpers and error handling."""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Callable, Iterable
from typing import Any

import click
from rich.console import Console
from rich.markup import escape  # cells and messages name TOML tables ([privacy]): text, not markup
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
        table.add_column(c, overflow="fold")
    for row in data:
        table.add_row(*[escape(_cell(row.get(c))) for c in columns])
    _print_table(table)


def _print_table(t: Table) -> None:
    # a terminal wraps cells to its width; a pipe or file gets one line per row (grep, less -S, diffs)
    if out.is_terminal:
        out.print(t)
    else:
        Console(width=10_000, no_color=True).print(t)


def show(state: State, data: Any, render: Callable[[], None]) -> None:
    """The API's object as JSON with --json (exactly as the API gave it), else `render()` for people."""
    if state.as_json:
        emit(state, data)
    else:
        render()


def facts(pairs: Iterable[tuple[str, Any]], title: str | None = None) -> None:
    """A single object as aligned `key  value` lines (values printed whole: ids stay copyable)."""
    rows = [(k, _cell(v)) for k, v in pairs if v is not None and v != "" and v != [] and v != {}]
    if title:
        click.echo(title)
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        click.echo(f"{'  ' if title else ''}{key.ljust(width)}  {value}")


def table(rows: Iterable[Iterable[Any]], columns: list[str], title: str | None = None) -> None:
    """A list as a table (rich), cells as text, never markup."""
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for row in rows:
        t.add_row(*[escape(_cell(v)) for v in row])
    _print_table(t)


def command(state: State | None, args: str) -> str:
    """A command line to copy and paste: with the user's --profile when they gave one."""
    name = getattr(state, "profile_name", None)
    return f"cleanroom --profile {shlex.quote(name)} {args}" if name else f"cleanroom {args}"


def next_step(state: State | None, what: str, args: str) -> None:
    """A "next:" hint on stderr, so that stdout stays the command's data."""
    console.print(escape(f"next: {what}: {command(state, args)}"), soft_wrap=True)


# commands a hint may name that the same user runs with the same profile (not `org create`, an admin's)
_PROFILED = re.compile(
    r"(?<![\w/.-])cleanroom (?!--)(?=(?:dataset|plugin|job|release|result|receipt|audit|room|"
    r"whoami|org (?:list|rotate-token|rotate-keys))\b)"
)


def with_profile(state: State | None, text: str) -> str:
    """Put the user's --profile into the `cleanroom ...` commands of a message (hints from the room)."""
    name = getattr(state, "profile_name", None)
    return _PROFILED.sub(f"cleanroom --profile {shlex.quote(name)} ", text) if name else text


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, float) and value > 1e9:
        return when(value)
    return "" if value is None else str(value)


def when(timestamp: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CleanroomError as exc:
            state = ctx.obj if isinstance(ctx.obj, State) else None
            console.print(f"[bold red]error:[/] {escape(with_profile(state, exc.message))}")
            if exc.details:
                console.print(f"  details: {escape(json.dumps(exc.details, default=str))}")
            if exc.hint:
                console.print(f"  hint: {escape(with_profile(state, exc.hint))}")
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
    from cleanroom.cli import admin, data, jobs, plugins, review, room, server  # noqa: F401  (register commands)

    cli(prog_name="cleanroom")
