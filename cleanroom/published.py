"""What a dataset publishes: the schema model, the declared facts, and mock rows made from them alone.

Shared by every zone: the owner's machine builds it (`cleanroom.prepare`), the API stores and serves
it, the runner's mock run and `cleanroom job test` run plugins on its mock rows. Nothing here reads a
dataset: the schema and the policy's declared bounds and domains are its only inputs.

Published (`published_schema`): only what the owner declares public: names, types, nullability, and
the policy's declared bounds (`[columns.X] bounds`) and category domains (`[columns.X] domain`), or
summaries written by hand in a schema override. Nothing is computed from the rows for publication:
an exact mean, range or category count of the data is one exact release per dataset, given to every
org with no budget, and one exact job plus a published mean gives away a person.

Mock rows let analysts write and test plugins without seeing data. They are drawn from the published
schema only (uniform in declared bounds, uniform over declared categories, random tokens otherwise).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from cleanroom.errors import ValidationError
from cleanroom.sandbox.vocabulary import PID

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "TYPES",
    "Column",
    "Schema",
    "declared_stats",
    "load_schema_file",
    "make_mock",
    "publish",
    "published_schema",
    "to_records",
]

TYPES = ("integer", "number", "boolean", "string", "date", "datetime")


_ARROW = {
    "integer": pa.int64(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
    "string": pa.string(),
    "date": pa.date32(),
}


@dataclass
class Column:
    """One column. `stats` None means "not summarised"; {} means "publish nothing"."""

    name: str
    type: str
    nullable: bool = True
    timezone: str | None = None
    stats: dict[str, Any] | None = None

    def arrow_type(self) -> pa.DataType:
        if self.type == "datetime":
            return pa.timestamp("us", tz=self.timezone)
        return _ARROW[self.type]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "nullable": self.nullable}
        if self.timezone:
            out["timezone"] = self.timezone
        if self.stats is not None:
            out["stats"] = self.stats
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Column:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
            raise ValidationError("every schema column needs a non-empty string 'name'")
        name = data["name"]
        if data.get("type") not in TYPES:
            raise ValidationError(f"column {name!r}: type must be one of {', '.join(TYPES)}")
        nullable, tz, stats = data.get("nullable", True), data.get("timezone"), data.get("stats")
        if not isinstance(nullable, bool):
            raise ValidationError(f"column {name!r}: 'nullable' must be true or false")
        if tz is not None and (data["type"] != "datetime" or tz != "UTC"):
            raise ValidationError(f"column {name!r}: 'timezone' may only be \"UTC\", on datetimes")
        if stats is not None and not isinstance(stats, dict):
            raise ValidationError(f"column {name!r}: 'stats' must be a table")
        return cls(name, data["type"], nullable, tz, stats)


@dataclass
class Schema:
    columns: list[Column]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for col in self.columns:
            if col.name in seen:
                raise ValidationError(f"column {col.name!r} appears twice in the schema")
            seen.add(col.name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise ValidationError(f"no column {name!r} in the schema")

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow_type(), nullable=c.nullable) for c in self.columns])

    def to_dict(self) -> dict[str, Any]:
        return {"columns": [c.to_dict() for c in self.columns]}

    @classmethod
    def from_dict(cls, data: Any) -> Schema:
        if not isinstance(data, dict) or not isinstance(data.get("columns"), list) or not data["columns"]:
            raise ValidationError("a schema is a table with a non-empty 'columns' list")
        return cls([Column.from_dict(c) for c in data["columns"]])


def load_schema_file(path: str | Path) -> Schema:
    """A schema override written by hand: JSON or TOML (`[[columns]]` tables), same shape as to_dict."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read the schema file {path.name}: {exc}") from exc
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ValidationError(
            f"{path.name} is not valid {path.suffix.lstrip('.').upper()}: {exc}", hint="schema files are .json or .toml"
        ) from exc
    return Schema.from_dict(data)


_DEFAULT_DATES = ("2000-01-01", "2024-12-31")


# -- what is published -----------------------------------------------------------------------------
def declared_stats(col: Column, rule: Any) -> dict[str, Any]:
    """A column's published summary: the bounds and domain its policy rule declares, nothing else."""
    out: dict[str, Any] = {"declared": True}
    bounds = getattr(rule, "bounds", None)
    domain = getattr(rule, "domain", None)
    if bounds is not None and col.type in ("integer", "number"):
        low, high = bounds
        out.update(
            min=int(math.ceil(low)) if col.type == "integer" else float(low),
            max=int(math.floor(high)) if col.type == "integer" else float(high),
        )
    if domain is not None and col.type == "string":
        out["categories"] = dict.fromkeys(domain, 1)
    return out


def _rules(policy: Any) -> dict[str, Any]:
    from cleanroom.policy import Policy

    if isinstance(policy, dict):
        try:
            policy = Policy.from_dict(policy)
        except Exception:  # noqa: BLE001 - a partial dict (tests, tools): no declarations
            return {}
    return {c.name: c for c in getattr(policy, "columns", ()) or ()}


def published_schema(schema: Schema, policy: Any, silent: Iterable[str] = ()) -> Schema:
    """`schema` with every summary replaced by declared facts: the policy's bounds and domains. Columns
    in `silent` (a schema override's `stats = {}`) and `_pid` publish nothing at all."""
    rules, silent = _rules(policy), set(silent)
    columns = []
    for col in schema.columns:
        if col.name.startswith("_") or col.name in silent:
            stats: dict[str, Any] = {}
        else:
            stats = declared_stats(col, rules.get(col.name))
        columns.append(Column(col.name, col.type, col.nullable, col.timezone, stats))
    return Schema(columns)


def publish(schema: dict[str, Any], policy: Any, mock_rows: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What the room stores and shows of an upload declaration: the published schema and mock rows made
    from it, whatever the client sent (the API calls this; a client's summaries are dropped)."""
    parsed = Schema.from_dict(schema)
    silent = [c.name for c in parsed.columns if c.stats == {}]
    published = published_schema(parsed, policy, silent)
    return published.to_dict(), to_records(make_mock(published, n=mock_rows), published)


# -- synthetic rows --------------------------------------------------------------------------------
def make_mock(schema: Schema | dict[str, Any], n: int = 100, seed: int = 0) -> pd.DataFrame:
    """`n` synthetic rows with `schema`'s columns and types, drawn from its summaries only."""
    if isinstance(schema, dict):
        schema = Schema.from_dict(schema)
    rng = np.random.default_rng(seed)
    arrays = [_mock_column(col, n, rng) for col in schema.columns]
    return pa.Table.from_arrays(arrays, schema=schema.arrow_schema()).to_pandas()


def _mock_column(col: Column, n: int, rng: np.random.Generator) -> pa.Array:
    stats = col.stats or {}
    if col.name == PID:
        return pa.array([rng.bytes(32).hex() for _ in range(n)], pa.string())
    values: Any
    if col.type in ("integer", "number"):
        values = _numbers(stats, n, rng, integer=col.type == "integer")
    elif col.type == "boolean":
        values = rng.random(n) < float(stats.get("true_fraction", 0.5))
    elif col.type in ("date", "datetime"):
        values = _instants(col, stats, n, rng)
    else:
        values = _strings(col.name, stats, n, rng)
    mask = None
    if col.nullable and stats.get("null_fraction", 0.05 if stats.get("declared") else 0):
        mask = rng.random(n) < float(stats.get("null_fraction", 0.05))
    return pa.array(values, type=col.arrow_type(), mask=mask)


def _numbers(stats: dict[str, Any], n: int, rng: np.random.Generator, *, integer: bool) -> np.ndarray:
    low, high = float(stats.get("min", 0)), float(stats.get("max", 100))
    if "mean" not in stats and "std" not in stats:  # declared bounds only: uniform between them
        values = rng.uniform(low, high, n)
        return np.clip(np.rint(values), math.ceil(low), math.floor(high)).astype(np.int64) if integer else values
    mean = float(stats.get("mean", (low + high) / 2))
    std = float(stats.get("std", (high - low) / 4))
    values = rng.normal(mean, std, n) if std > 0 else np.full(n, mean)
    outside = (values < low) | (values > high)  # redraw in range rather than pile up on min and max
    values[outside] = rng.uniform(low, high, int(outside.sum()))
    if integer:
        return np.clip(np.rint(values), math.ceil(low), math.floor(high)).astype(np.int64)
    return values


def _instants(col: Column, stats: dict[str, Any], n: int, rng: np.random.Generator) -> pa.Array:
    low = dt.datetime.fromisoformat(stats.get("min", _DEFAULT_DATES[0]))
    high = dt.datetime.fromisoformat(stats.get("max", _DEFAULT_DATES[1]))
    if (low.tzinfo is None) != (high.tzinfo is None):
        low, high = low.replace(tzinfo=None), high.replace(tzinfo=None)
    span = max((high - low) // dt.timedelta(microseconds=1), 0)
    offsets = rng.integers(0, span + 1, n) if span else np.zeros(n, dtype=np.int64)
    if low.tzinfo is not None:
        low = low.astimezone(dt.UTC).replace(tzinfo=None)
    start = np.datetime64(low, "us")
    stamps = start + offsets.astype("timedelta64[us]")
    if col.type == "date":
        return pa.array(stamps.astype("datetime64[D]"), pa.date32())
    return pa.array(stamps, pa.timestamp("us")).cast(col.arrow_type())


def _strings(name: str, stats: dict[str, Any], n: int, rng: np.random.Generator) -> list[str]:
    categories = stats.get("categories") or {}
    tokens = [f"{name[:12]}-{rng.bytes(4).hex()}" for _ in range(n)]
    if not categories:
        return tokens
    values, counts = list(categories), np.array(list(categories.values()), dtype=float)
    picks = rng.choice(len(values), size=n, p=counts / counts.sum())
    other = rng.random(n) < float(stats.get("other_fraction", 0.0))
    return [tokens[i] if other[i] else values[picks[i]] for i in range(n)]


def to_records(frame: pd.DataFrame, schema: Schema | None = None) -> list[dict[str, Any]]:
    """JSON-ready rows: missing values as None, dates and times as ISO 8601 text, and integer
    columns (which pandas turns into floats when they have gaps) as integers."""
    import pandas as pd

    integers = {c.name for c in schema.columns if c.type == "integer"} if schema else set()
    rows = []
    for record in frame.astype(object).where(frame.notna(), None).to_dict(orient="records"):
        rows.append(
            {
                k: v.isoformat()
                if isinstance(v, dt.date | pd.Timestamp)
                else int(v)
                if k in integers and v is not None
                else _plain(v)
                for k, v in record.items()
            }
        )
    return rows


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
