"""The docs keep up with the code (in the spirit of datasette's test_docs).

- every CLI command and subcommand is mentioned in a docs page or the README, and every
  `cleanroom ...` command line the docs show parses with the real CLI (no made-up flags);
- every hook of `cleanroom.hookspecs` is documented in docs/plugins.md, with its signature, and
  implemented by at least one built-in plugin under plugins/;
- every setting of `cleanroom.settings.Settings` appears as its CLEANROOM_ variable in the README,
  and the README's settings table names no variable that nothing reads;
- the public names of the `cleanroom` package are pinned;
- relative links between docs pages resolve, and docs/index.md links every page.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import shlex
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

import cleanroom
from cleanroom import hookspecs
from cleanroom.cli import base
from cleanroom.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [REPO / "README.md"]
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
# README settings-table variables that are read outside `Settings` (by the CLI, the SDK or the build)
NOT_SETTINGS = {"CLEANROOM_BASE_IMAGE", "CLEANROOM_PROFILE", "CLEANROOM_HOME"}


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# The CLI ----------------------------------------------------------------------------------------


def _load_cli() -> click.Group:
    """The root group with every command registered, importing exactly what `cleanroom.cli.main` imports."""
    tree = ast.parse(inspect.getsource(base.main))
    modules = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "cleanroom.cli"
        for alias in node.names
    ]
    assert modules, "cleanroom.cli.base.main imports no command modules any more: update this test"
    for module in modules:
        importlib.import_module(module)
    return base.cli


CLI = _load_cli()


def _walk(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        yield path, command
        if isinstance(command, click.Group):
            yield from _walk(command, path)


COMMANDS = {" ".join(path): command for path, command in _walk(CLI)}


def _docs_text() -> str:
    return "\n".join(page.read_text() for page in PAGES)


def test_the_cli_has_commands():
    assert {"dataset upload", "plugin approve", "job wait", "admin rotate-token", "serve"} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_is_documented(path):
    words = r"\s+".join(re.escape(w) for w in path.split())
    pattern = re.compile(rf"cleanroom(?:\s+--profile\s+\S+|\s+--json)*\s+{words}(?![\w-])")
    assert pattern.search(_docs_text()), (
        f"`cleanroom {path}` is not mentioned in docs/*.md or README.md: document it in the page of the role "
        "that uses it (docs/operator.md, data-owner.md, analyst.md or reviewer.md)"
    )


# Every command line the docs show parses ----------------------------------------------------------


def _code_lines(text: str) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, strict) of the shell lines in fenced blocks (strict) and of inline
    `cleanroom ...` spans in the prose (not strict: they may leave out required arguments)."""
    fence: str | None = None
    pending, start = "", 0
    prose = []  # the text outside fences, with the fenced lines blanked (so line numbers stay)
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().lower()
            prose.append("")
            continue
        if fence is None:
            prose.append(line)
            continue
        prose.append("")
        if fence not in SHELL_FENCES:
            continue
        if not pending:
            start = n
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + stripped, True
        pending = ""
    joined = "\n".join(prose)
    for match in re.finditer(r"`((?:\S*/)?cleanroom\s[^`]+)`", joined):
        yield joined.count("\n", 0, match.start()) + 1, " ".join(match.group(1).split()), False


def _invocations(line: str) -> Iterator[list[str]]:
    """The argument lists given to `cleanroom` on a shell line (after pipes, `&&`, `exec api`...)."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return
    segment: list[str] = []
    redirected = False
    for token in [*tokens, ";"]:
        if re.match(r"\d*[<>]", token) and not re.fullmatch(r"<[^<>]+>", token):  # `<id>` is a placeholder
            redirected = True  # `> file`, `2>/dev/null`, `< in`: not arguments (and last on the line)
        elif token not in ("|", "||", "&&", ";") and not redirected:
            segment.append(token)
        if token in ("|", "||", "&&", ";"):
            for i, word in enumerate(segment):
                if word == "cleanroom" or word.endswith("/bin/cleanroom"):
                    yield segment[i + 1 :]
                    break
            segment, redirected = [], False


def _documented_commands() -> list[tuple[str, int, list[str], bool]]:
    found = []
    for page in PAGES:
        for n, line, strict in _code_lines(page.read_text()):
            for args in _invocations(line):
                found.append((_rel(page), n, args, strict))
    return found


DOCUMENTED = _documented_commands()


def _given(value: object) -> bool:
    """A value the parser found (click 8.2+ marks an absent one with a sentinel, older clicks with None)."""
    return value is not None and value not in ((), []) and "UNSET" not in repr(value)


def _check_args(command: click.Command, ctx: click.Context, args: list[str], strict: bool) -> None:
    """Parse `args` with the command's real parser (no type conversion, so files need not exist)."""
    parser = command.make_parser(ctx)
    opts, rest, _ = parser.parse_args(args=list(args))  # raises NoSuchOption, BadOptionUsage ...
    if isinstance(command, click.Group):
        if not rest:
            return
        name, *more = rest
        sub = command.get_command(ctx, name)
        if sub is None:
            raise click.UsageError(f"no such command {name!r} under {ctx.command_path!r}")
        _check_args(sub, click.Context(sub, info_name=name, parent=ctx), more, strict)
        return
    if opts.get("help"):
        return
    for p in command.params:
        value = opts.get(p.name)
        if isinstance(p.type, click.Choice) and _given(value):
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if item not in p.type.choices and not re.fullmatch(r"<[^<>]+>", item):
                    raise click.UsageError(f"{item!r} is not one of {list(p.type.choices)} for {p.opts[0]}")
    if rest:
        raise click.UsageError(f"unexpected extra arguments {rest}")
    if strict:
        missing = [
            p.opts[0] if isinstance(p, click.Option) else p.human_readable_name
            for p in command.params
            if p.required and not _given(opts.get(p.name))
        ]
        if missing:
            raise click.UsageError(f"missing {', '.join(missing)}")


def test_the_docs_show_command_lines():
    assert len(DOCUMENTED) > 40, "the command-line extraction found too few commands: is it broken?"


@pytest.mark.parametrize(
    ("page", "line", "args", "strict"), DOCUMENTED, ids=[f"{page}:{line}" for page, line, _, _ in DOCUMENTED]
)
def test_documented_command_lines_parse(page, line, args, strict):
    ctx = click.Context(CLI, info_name="cleanroom")
    try:
        _check_args(CLI, ctx, args, strict)
    except click.ClickException as exc:
        pytest.fail(f"{page}:{line}: `cleanroom {shlex.join(args)}` does not parse: {exc.format_message()}")


# The TOML the role pages show is valid ------------------------------------------------------------

ROLE_PAGES = [DOCS / name for name in ("operator.md", "data-owner.md", "analyst.md", "reviewer.md")]


def _toml_blocks() -> list[tuple[str, int, str]]:
    blocks = []
    for page in ROLE_PAGES:
        for match in re.finditer(r"```toml\n(.*?)```", page.read_text(), re.DOTALL):
            blocks.append((_rel(page), page.read_text().count("\n", 0, match.start()) + 1, match.group(1)))
    return blocks


TOML_BLOCKS = _toml_blocks()


@pytest.mark.parametrize(("page", "line", "text"), TOML_BLOCKS, ids=[f"{p}:{n}" for p, n, _ in TOML_BLOCKS])
def test_toml_examples_parse(page, line, text):
    """Job specs (they have [[inputs]]) parse as job specs, anything else as a dataset policy."""
    from cleanroom.jobspec import parse_jobspec
    from cleanroom.policy import parse_policy

    if "[[inputs]]" in text:
        parse_jobspec(re.sub(r'"<[^"<>]*plugin id>"', '"' + "0" * 64 + '"', text))
    else:
        parse_policy(text)


# Hooks --------------------------------------------------------------------------------------------

HOOKS = {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "cleanroom_spec")}


def test_hookspecs_are_found():
    assert set(HOOKS) == set(hookspecs.HOOK_BY_KIND.values())


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_every_hook_is_documented_with_its_signature(hook):
    params = ", ".join(inspect.signature(HOOKS[hook]).parameters)
    assert f"`{hook}({params})`" in (DOCS / "plugins.md").read_text(), (
        f"docs/plugins.md does not document the hook `{hook}({params})`"
    )


def _builtin_plugins() -> dict[str, set[str]]:
    """Each built-in plugin's implemented hooks, loaded exactly as the compute phase loads a bundle."""
    from cleanroom import bundle
    from cleanroom.sandbox.compute import phase as compute

    found = {}
    for folder in sorted(p.parent for p in (REPO / "plugins").glob("*/cleanroom-plugin.toml")):
        with tempfile.TemporaryDirectory() as work:
            pm = compute.load_plugin(bundle.unpack(bundle.pack(folder)), work)
            found[folder.name] = {name for name in HOOKS if getattr(pm.hook, name).get_hookimpls()}
    return found


def test_every_hook_is_implemented_by_a_builtin_plugin():
    plugins = _builtin_plugins()
    assert plugins, "no built-in plugins under plugins/"
    implemented = set().union(*plugins.values())
    assert set(HOOKS) - implemented == set(), "hooks no built-in plugin implements"


def test_every_builtin_plugin_is_listed_in_plugins_md():
    text = (DOCS / "plugins.md").read_text()
    for folder in sorted(p.parent for p in (REPO / "plugins").glob("*/cleanroom-plugin.toml")):
        assert f"| `{folder.name}` |" in text, f"plugin {folder.name} is missing from docs/plugins.md's table"


# Settings -----------------------------------------------------------------------------------------

SETTINGS = {"CLEANROOM_" + f.name.upper() for f in dataclasses.fields(Settings)}


@pytest.mark.parametrize("variable", sorted(SETTINGS))
def test_every_setting_is_in_the_readme(variable):
    assert re.search(rf"`{variable}`", (REPO / "README.md").read_text()), (
        f"{variable} (cleanroom.settings.Settings) is missing from README.md's settings table"
    )


def test_the_readme_settings_table_names_only_real_settings():
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `CLEANROOM_")]
    named = {v for row in rows for v in re.findall(r"`(CLEANROOM_[A-Z0-9_]+)`", row.split("|")[1])}
    assert named, "no settings table in README.md"
    assert named - SETTINGS - NOT_SETTINGS == set(), "README names settings that nothing reads"


# The public API -----------------------------------------------------------------------------------


def test_public_names_are_pinned():
    # Changing this list changes the SDK's public API: update docs/analyst.md with it.
    assert sorted(cleanroom.__all__) == ["Client", "__version__", "errors"]
    for name in cleanroom.__all__:
        assert getattr(cleanroom, name) is not None
    from cleanroom.client import Client

    assert cleanroom.Client is Client


# Links --------------------------------------------------------------------------------------------


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", target)]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE)
    }


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(target)
    assert not broken, f"{_rel(page)} has links to missing files or headings: {broken}"


def test_the_index_links_every_page():
    linked = {t.split("#", 1)[0] for t in _links(DOCS / "index.md")}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "index.md" and p.name not in linked]
    assert not missing, f"docs/index.md does not link: {missing}"
