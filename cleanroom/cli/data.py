"""Datasets and using released models."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from cleanroom.cli.base import State, cli, console, emit, pass_state


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
@click.option("--text-column", "text_columns", multiple=True, metavar="COLUMN",
              help="Declare COLUMN as text (repeat for several): upload refuses a column that would be text "
                   "only because of a few cells unless it is declared so.")
@click.option("--allow-few-ids", is_flag=True,
              help="Accept an id column with few distinct values (refused by default: likely the wrong column).")
@pass_state
def dataset_upload(state: State, path: str, name: str, policy_path: str, id_column: str, secret_path: str,
                   schema_path: str | None, description: str, refuse_identifiers: bool,
                   text_columns: tuple[str, ...], allow_few_ids: bool) -> None:
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
    with Progress(TextColumn("{task.description}"), BarColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                  console=console) as bar:
        prep = bar.add_task("encrypting", total=Path(path).stat().st_size)
        sent = bar.add_task("uploading", total=None, visible=False)

        def progress(done: int, total: int) -> None:
            bar.update(prep, completed=done, total=total)

        def upload_progress(done: int, total: int) -> None:
            bar.update(prep, completed=bar.tasks[prep].total)
            bar.update(sent, visible=True, completed=done, total=total)

        result = state.client.upload_dataset(
            path, name=name, policy=Path(policy_path).read_text(), id_column=id_column, join_secret=secret,
            description=description, schema_override=override, drop_identifiers=not refuse_identifiers,
            progress=_two_stage(progress, upload_progress), text_columns=text_columns, allow_few_ids=allow_few_ids)
    from rich.markup import escape

    types = ", ".join(f"{c} ({t})" for c, t in result["column_types"].items() if c != "_pid")
    console.print(escape(f"uploaded {name}: id column {id_column!r} pseudonymised as _pid; columns: {types}"))
    for column, why in sorted(result["dropped_columns"].items()):
        console.print(escape(f"dropped column {column!r}: {why} (keep it with [identifiers] allow = "
                             f"[{column!r}] in the policy)"))
    from cleanroom.policy import parse_policy

    for note in parse_policy(Path(policy_path).read_text()).notes():  # e.g. exact mode forces review
        click.echo(f"policy: {note}", err=True)
    suggested = result.pop("suggested_policy", "") if isinstance(result, dict) else ""
    if suggested:  # plain text: TOML table names are not markup
        click.echo("published: only what the policy declares. Bounds and domains seen in your rows, to check "
                   "and add to the policy if they may be public (cleanroom dataset policy):\n" + suggested, err=True)
    emit(state, result)


@dataset.command("cancel-upload")
@click.argument("upload_id")
@pass_state
def dataset_cancel_upload(state: State, upload_id: str) -> None:
    """Withdraw your pending upload UPLOAD_ID (named in the 409 of a second upload), freeing its name."""
    emit(state, state.client.request("DELETE", f"/datasets/uploads/{upload_id}").json())


def _two_stage(first, second):  # type: ignore[no-untyped-def]
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
    emit(state, state.client.list_datasets(), ["name", "owner", "row_count", "policy_version", "columns",
                                               "withdrawn_at"])


@dataset.command("show")
@click.argument("name")
@pass_state
def dataset_show(state: State, name: str) -> None:
    """Schema, row count, policy, mock sample and ciphertext hash."""
    emit(state, state.client.get_dataset(name))


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
    if not state.as_json:
        console.print(f"withdrew {name}: cancelled {len(result['cancelled_jobs'])} queued job(s); "
                      f"{len(result['running_jobs'])} running job(s) finish; its ciphertext is removed by the "
                      "next `cleanroom admin sweep` after that")
    emit(state, result)


@dataset.command("budget")
@click.argument("name")
@pass_state
def dataset_budget(state: State, name: str) -> None:
    """The dataset's privacy budget: spent and left (its owner and its allowed recipients)."""
    budget = state.client.dataset_budget(name)
    if state.as_json:
        emit(state, budget)
        return
    click.echo(f"{name}: {budget['mode']}; epsilon {budget['remaining_epsilon']:g} of {budget['epsilon']:g} left, "
               f"delta {budget['remaining_delta']:g} of {budget['delta']:g}; at most epsilon "
               f"{budget['job_epsilon']:g}, delta {budget['job_delta']:g} per job")
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
    emit(state, result)


@cli.group()
def model() -> None:
    """Use released models on your own machine."""


@model.command("predict")
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False))
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
def model_predict(model_path: str, csv_path: str, output: str) -> None:
    """Score CSV_PATH with a released .skops model (loaded safely: no untrusted types)."""
    from cleanroom.modelio import predict

    predict(model_path, csv_path, output)
    console.print(f"wrote {output}")
