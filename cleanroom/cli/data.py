"""Datasets and using released models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from cleanroom.cli.base import State, cli, command, console, emit, facts, next_step, pass_state, show, table
from cleanroom.sandbox.vocabulary import PID


@cli.group()
def dataset() -> None:
    """Encrypted datasets."""


@dataset.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", required=True, help="Dataset name, e.g. retail.customers")
@click.option("--policy", "policy_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--id-column", required=True, help="The privacy unit / join key column (pseudonymised here).")
@click.option("--join-secret", "secret_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--schema", "schema_path", default=None, type=click.Path(exists=True, dir_okay=False))
@click.option("--description", default="")
@click.option("--refuse-identifiers", is_flag=True, help="Refuse (instead of drop) identifier columns.")
@click.option(
    "--text-column",
    "text_columns",
    multiple=True,
    metavar="COLUMN",
    help="Declare COLUMN as text (repeat for several): upload refuses a column that would be text "
    "only because of a few cells unless it is declared so.",
)
@click.option(
    "--allow-few-ids",
    is_flag=True,
    help="Accept an id column with few distinct values (refused by default: likely the wrong column).",
)
@pass_state
def dataset_upload(
    state: State,
    path: str,
    name: str,
    policy_path: str,
    id_column: str,
    secret_path: str,
    schema_path: str | None,
    description: str,
    refuse_identifiers: bool,
    text_columns: tuple[str, ...],
    allow_few_ids: bool,
) -> None:
    """Prepare PATH on this machine (schema, pseudonyms, mock sample), encrypt it and upload it.

    Refused before anything is sent (each refusal says how to fix or override it): a column that would be
    text only because of a few cells, an id column with few distinct values, policy rules for columns
    the dataset does not have; the room refuses recipients that are not orgs in it. Columns that look
    like direct identifiers are dropped, and listed."""
    from cleanroom.prepare.ingest import load_join_secret

    override = None
    if schema_path:
        from cleanroom.published import load_schema_file

        override = load_schema_file(schema_path)
    secret = load_join_secret(secret_path)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TransferSpeedColumn(), TimeRemainingColumn(), console=console
    ) as bar:
        prep = bar.add_task("encrypting", total=Path(path).stat().st_size)
        sent = bar.add_task("uploading", total=None, visible=False)

        def progress(done: int, total: int) -> None:
            bar.update(prep, completed=done, total=total)

        def upload_progress(done: int, total: int) -> None:
            bar.update(prep, completed=bar.tasks[prep].total)
            bar.update(sent, visible=True, completed=done, total=total)

        result = state.client.upload_dataset(
            path,
            name=name,
            policy=Path(policy_path).read_text(),
            id_column=id_column,
            join_secret=secret,
            description=description,
            schema_override=override,
            drop_identifiers=not refuse_identifiers,
            progress=_two_stage(progress, upload_progress),
            text_columns=text_columns,
            allow_few_ids=allow_few_ids,
        )
    from rich.markup import escape

    types = ", ".join(f"{c} ({t})" for c, t in result["column_types"].items() if c != PID)
    console.print(escape(f"uploaded {name}: id column {id_column!r} pseudonymised as _pid; columns: {types}"))
    for column, why in sorted(result["dropped_columns"].items()):
        console.print(
            escape(f"dropped column {column!r}: {why} (keep it with [identifiers] allow = [{column!r}] in the policy)")
        )
    from cleanroom.policy import parse_policy

    for note in parse_policy(Path(policy_path).read_text()).notes():  # e.g. exact mode forces review
        click.echo(f"policy: {note}", err=True)
    suggested = result.pop("suggested_policy", "") if isinstance(result, dict) else ""
    if suggested:  # plain text: TOML table names are not markup
        click.echo(
            "published: only what the policy declares. Bounds and domains seen in your rows, to check "
            f"and add to the policy if they may be public ({command(state, 'dataset policy')}):\n" + suggested,
            err=True,
        )
    if state.as_json:
        emit(state, result)
        return
    facts(
        [
            ("dataset", result.get("name")),
            ("rows", result.get("row_count")),
            ("ciphertext sha256", result.get("sha256")),
            ("policy version", result.get("policy_version")),
        ]
    )
    next_step(state, "see what other orgs see of it", f"dataset show {name}")


@dataset.command("cancel-upload")
@click.argument("upload_id")
@pass_state
def dataset_cancel_upload(state: State, upload_id: str) -> None:
    """Withdraw your pending upload UPLOAD_ID (named in the 409 of a second upload), freeing its name."""
    result = state.client.request("DELETE", f"/datasets/uploads/{upload_id}").json()
    show(
        state,
        result,
        lambda: click.echo(f"cancelled upload {result['upload_id']}: the name {result['name']} is free again"),
    )


def _two_stage(first: Callable[[int, int], None], second: Callable[[int, int], None]) -> Callable[[int, int], None]:
    """The SDK reports encryption progress, then upload progress; route them to two bars."""
    stage = {"n": 0, "last": -1}

    def report(done: int, total: int) -> None:
        if done < stage["last"]:
            stage["n"] = 1
        stage["last"] = done
        (first if stage["n"] == 0 else second)(done, total)

    return report


@dataset.command("list")
@pass_state
def dataset_list(state: State) -> None:
    """List datasets in the room (your withdrawn ones too, with the time they were withdrawn)."""
    emit(
        state, state.client.list_datasets(), ["name", "owner", "row_count", "policy_version", "columns", "withdrawn_at"]
    )


@dataset.command("show")
@click.argument("name")
@click.option(
    "--mock",
    "mock_rows",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Also show the first N mock rows (synthetic, drawn from the declared schema).",
)
@pass_state
def dataset_show(state: State, name: str, mock_rows: int) -> None:
    """Schema, policy summary and ciphertext hash (--mock N: mock rows too; --json: all of it, as the API)."""
    ds = state.client.get_dataset(name)
    if state.as_json:
        emit(state, ds)
        return
    show_dataset(state, ds, mock_rows)


def show_dataset(state: State, ds: dict[str, Any], mock_rows: int = 0) -> None:
    policy = ds.get("policy") or {}
    rules = policy.get("columns") or {}
    facts(
        [
            ("dataset", ds["name"]),
            ("owner", ds.get("owner")),
            ("description", ds.get("description")),
            ("rows", ds.get("row_count")),
            ("created", ds.get("created_at")),
            ("withdrawn", ds.get("withdrawn_at")),
            ("ciphertext sha256", ds.get("sha256")),
            ("ciphertext bytes", ds.get("size")),
            ("policy", f"v{ds.get('policy_version')} (sha256 {ds.get('policy_sha256')})"),
            ("dropped before upload", ds.get("dropped")),
        ]
    )
    click.echo()
    table(
        [
            (
                c.get("name"),
                c.get("type"),
                "yes" if c.get("nullable", True) else "no",
                (rules.get(c.get("name")) or {}).get("rule", "join key" if c.get("name") == PID else "allowed"),
                public_facts(c),
            )
            for c in (ds.get("schema") or {}).get("columns", [])
        ],
        ["column", "type", "nullable", "rule", "published (declared in the policy)"],
        title="schema",
    )
    click.echo()
    for line in policy_summary(policy):
        click.echo(line)
    mock = ds.get("mock") or []
    if mock_rows and mock:
        columns = [c.get("name") for c in (ds.get("schema") or {}).get("columns", [])]
        columns += sorted({k for row in mock for k in row} - set(columns))
        click.echo()
        table(
            [[row.get(c) for c in columns] for row in mock[:mock_rows]],
            [str(c) for c in columns],
            title=f"mock rows (synthetic; {min(mock_rows, len(mock))} of {len(mock)})",
        )
    elif mock:
        next_step(state, f"{len(mock)} synthetic mock rows", f"dataset show {ds['name']} --mock 10")


def public_facts(column: dict[str, Any]) -> str:
    """What the schema publishes of a column: declared bounds or categories, nothing computed from rows."""
    stats = column.get("stats") or {}
    parts = []
    if stats.get("min") is not None or stats.get("max") is not None:
        parts.append(f"bounds [{stats.get('min')}, {stats.get('max')}]")
    if stats.get("categories"):
        parts.append("domain " + ", ".join(map(str, stats["categories"])))
    if column.get("timezone"):
        parts.append(f"timezone {column['timezone']}")
    return "; ".join(parts)


def policy_summary(policy: dict[str, Any]) -> list[str]:
    """The policy in a few lines: the mode and budget, k, who receives, what may leave."""
    privacy, release = policy.get("privacy") or {}, policy.get("release") or {}
    lines = ["policy:"]
    if privacy.get("require_dp", True):
        p = {key: privacy.get(key, 0) for key in ("epsilon", "delta", "job_epsilon", "job_delta")}
        lines.append(
            f"  differential privacy: epsilon {p['epsilon']:g}, delta {p['delta']:g} for the dataset's "
            f"lifetime; at most epsilon {p['job_epsilon']:g}, delta {p['job_delta']:g} per job"
        )
        if privacy.get("recipient_epsilon") is not None:
            lines.append(f"  at most epsilon {privacy['recipient_epsilon']:g} per recipient org")
    else:
        lines.append("  exact results (require_dp = false): every release waits for the owner's review")
    lines.append(f"  k = {privacy.get('k')} (minimum group size)")
    lines.append(
        f"  recipients: {', '.join(release.get('recipients') or []) or 'none'}; "
        f"review: {'yes' if release.get('review') else 'no'}"
    )
    allowed = (policy.get("outputs") or {}).get("allowed")
    if allowed:
        lines.append(f"  outputs allowed: {', '.join(allowed)}")
    estimators = (policy.get("models") or {}).get("estimators")
    if estimators:
        lines.append(f"  estimators: {', '.join(estimators)}")
    limits = policy.get("limits") or {}
    if limits.get("max_jobs_per_day"):
        lines.append(f"  at most {limits['max_jobs_per_day']} jobs per day per org")
    return lines


@dataset.command("withdraw")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def dataset_withdraw(state: State, name: str, yes: bool) -> None:
    """Withdraw your dataset NAME: no new jobs over it (queued ones are cancelled, running ones finish),
    gone from other orgs' lists; `admin sweep` removes its ciphertext later. Cannot be undone."""
    if not yes:
        click.confirm(f"withdraw {name}? New jobs over it will be refused; this cannot be undone", abort=True)
    result = state.client.withdraw_dataset(name)
    if state.as_json:
        emit(state, result)
        return
    console.print(
        f"withdrew {name}: cancelled {len(result['cancelled_jobs'])} queued job(s); "
        f"{len(result['running_jobs'])} running job(s) finish; its ciphertext is removed by the "
        "next `cleanroom admin sweep` after that"
    )


@dataset.command("budget")
@click.argument("name")
@pass_state
def dataset_budget(state: State, name: str) -> None:
    """The dataset's privacy budget: spent and left (its owner and its allowed recipients)."""
    budget = state.client.dataset_budget(name)
    if state.as_json:
        emit(state, budget)
        return
    click.echo(
        f"{name}: {budget['mode']}; epsilon {budget['remaining_epsilon']:g} of {budget['epsilon']:g} left, "
        f"delta {budget['remaining_delta']:g} of {budget['delta']:g}; at most epsilon "
        f"{budget['job_epsilon']:g}, delta {budget['job_delta']:g} per job"
    )
    if budget["charges"]:
        emit(state, budget["charges"], ["job_id", "recipient", "epsilon", "delta", "created_at"], title="charges")


@dataset.command("policy")
@click.argument("name")
@click.argument("policy_path", type=click.Path(exists=True, dir_okay=False))
@pass_state
def dataset_policy(state: State, name: str, policy_path: str) -> None:
    """Publish a new policy version (voids approvals bound to the old one)."""
    from cleanroom.policy import parse_policy

    text = Path(policy_path).read_text()
    result = state.client.update_policy(name, text)
    for note in parse_policy(text).notes():  # e.g. exact mode forces review
        click.echo(f"policy: {note}", err=True)
    show(
        state,
        result,
        lambda: click.echo(
            f"published policy v{result['policy_version']} of {name} (sha256 {result['policy_sha256']}); approvals "
            "given under earlier versions no longer count: plugins need approving again"
        ),
    )


@cli.group()
def model() -> None:
    """Use released models on your own machine."""


@model.command("predict")
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--keep",
    "keep",
    multiple=True,
    metavar="COLUMN",
    help="Copy COLUMN of the input beside the prediction (repeat for several). Default: the id column "
    "(_pid, or a first column with distinct values the model does not use).",
)
@click.option(
    "--unseen",
    type=click.Choice(["error", "ignore"]),
    default="error",
    show_default=True,
    help="A category value the model never saw: an error naming it, or (ignore) scored with all-zero "
    "indicators and counted in a warning.",
)
def model_predict(model_path: str, csv_path: str, output: str, keep: tuple[str, ...], unseen: str) -> None:
    """Score CSV_PATH with a released .skops model (loaded safely: no untrusted types). Nothing is written
    when the CSV does not fit the model."""
    import pandas as pd

    from cleanroom.modelio import predict

    n = predict(
        model_path,
        csv_path,
        output,
        keep=list(keep) or None,
        unseen=unseen,
        warn=lambda text: console.print(f"[yellow]warning:[/] {escape(text)}"),
    )
    columns = list(pd.read_csv(output, nrows=0).columns)
    carried = columns[: columns.index("prediction")]
    console.print(
        escape(
            f"wrote {n} predictions to {output}"
            + (f" beside {', '.join(carried)}" if carried else " (no id column carried: name one with --keep)")
        )
    )
