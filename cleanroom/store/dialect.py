"""The two databases the store runs on, and every difference between them.

The store's SQL is written once, in SQLite's dialect, and runs as written on SQLite (the embedded
default: one file in the data directory). On PostgreSQL (several API replicas, many runners) each
statement goes through `translate` first, a closed list of rewrites:

| SQLite                                   | PostgreSQL                                           |
| ---                                      | ---                                                  |
| `?`, `:name` placeholders                | `%s`, `%(name)s` (a literal `%` doubled)             |
| `json_extract(x, '$.key')`               | `(x::json ->> 'key')` (text; the store compares text) |
| `json_each(x, '$.key') AS i` (`i.value`) | `json_array_elements(x::json -> 'key') AS i(value)`  |
| `group_concat(x)`                        | `string_agg(x, ',')`                                 |
| `json_group_object(k, v)`                | `json_object_agg(k, v)::text`                        |
| `t.rowid` (a tie-break in insertion order)| `t.id` (ties of the same microsecond order by id)   |

and in the migrations (`translate_ddl`): `INTEGER PRIMARY KEY` (SQLite's rowid alias, numbered on
insert) becomes an identity column, `INTEGER` is `BIGINT` (sizes above 2 GiB), `REAL` is
`DOUBLE PRECISION` (PostgreSQL's `REAL` is 4 bytes: no timestamp fits). A statement that still holds a
SQLite-only construct after these rewrites is refused (`Untranslatable`), never sent half-translated.

JSON is cast to `json`, not `jsonb`: `jsonb` refuses a `\\u0000` escape, and one such string in one
job's spec would break every list over the jobs table.

Transactions: SQLite has one writer (`BEGIN IMMEDIATE`); on PostgreSQL every write transaction first
takes one transaction-scoped advisory lock (`WRITE_LOCK`), so write transactions are serialised
across every replica exactly as SQLite serialises them in one process. That keeps each check and its
write in one atomic step everywhere the API relies on it: the privacy ledger's admission check and
charge, an upload's name reservation, a runner's claim of the oldest queued job, the per-org queue
limit, and the audit chain's next sequence number and previous hash (the chain stays linear). Each
statement runs at READ COMMITTED, so after the lock it sees every commit before it. Reads never take
the lock. The audit log is appended in nearly every write, so the chain alone would serialise these
writes; the lock makes the rule one line instead of one per table.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from cleanroom.errors import ValidationError

SQLITE = "sqlite"
POSTGRES = "postgresql"
WRITE_LOCK = 0x636C65616E  # the advisory lock every write transaction takes ("clean")
MIGRATE_LOCK = WRITE_LOCK + 1  # held while migrations run, so replicas starting together apply each once
LOCK_TIMEOUT_SECONDS = 30  # as SQLite's busy timeout: a writer waits this long for the lock, then fails


class Untranslatable(ValueError):
    """A statement holds SQLite-only SQL that `translate` has no rewrite for (a bug in the store)."""


def parse_url(url: str | None, data_dir: Path) -> tuple[str, str]:
    """(dialect, target) of CLEANROOM_DATABASE_URL: a SQLite file path or a PostgreSQL conninfo URL.
    Empty or None: the SQLite file `cleanroom.db` in the data directory."""
    if not url:
        return SQLITE, str(data_dir / "cleanroom.db")
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        path = url.split(":", 1)[1]
        if not path.startswith("///") or len(path) == 3:
            raise ValidationError(
                f"CLEANROOM_DATABASE_URL {url!r} is not a SQLite URL",
                hint="sqlite:///relative/path.db or sqlite:////absolute/path.db",
            )
        return SQLITE, unquote(path[3:])
    if scheme in ("postgresql", "postgres"):
        if not urlsplit(url).path.strip("/"):
            raise ValidationError(
                "CLEANROOM_DATABASE_URL names no database", hint="postgresql://user:password@host:5432/database"
            )
        return POSTGRES, url
    raise ValidationError(
        f"CLEANROOM_DATABASE_URL has the scheme {scheme!r}; the store runs on sqlite or postgresql",
        hint="sqlite:///path/cleanroom.db or postgresql://user:password@host/database",
    )


def safe_url(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


# translation ------------------------------------------------------------------------------------

_IDENT = r"[A-Za-z_][\w.]*"
_REWRITES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(rf"json_each\(\s*({_IDENT})\s*,\s*'\$\.(\w+)'\s*\)\s+AS\s+(\w+)", re.I),
        r"json_array_elements(\1::json -> '\2') AS \3(value)",
    ),
    (re.compile(rf"json_extract\(\s*({_IDENT})\s*,\s*'\$\.(\w+)'\s*\)", re.I), r"(\1::json ->> '\2')"),
    (re.compile(rf"group_concat\(\s*({_IDENT})\s*\)", re.I), r"string_agg(\1, ',')"),
    (re.compile(rf"json_group_object\(\s*({_IDENT})\s*,\s*({_IDENT})\s*\)", re.I), r"json_object_agg(\1, \2)::text"),
    (re.compile(r"\b(\w+)\.rowid\b", re.I), r"\1.id"),
)
_SQLITE_ONLY = re.compile(
    r"json_extract|json_each|group_concat|json_group_object|\browid\b|sqlite_|PRAGMA|"
    r"INSERT\s+OR\b|BEGIN\s+IMMEDIATE|AUTOINCREMENT",
    re.I,
)
_LITERAL = re.compile(r"('(?:[^']|'')*')")
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """A statement of the store (SQLite's dialect) in PostgreSQL's, with psycopg's placeholders."""
    for pattern, replacement in _REWRITES:
        sql = pattern.sub(replacement, sql)
    parts = _LITERAL.split(sql)  # odd parts are string literals: left as they are
    for i in range(0, len(parts), 2):
        code = parts[i]
        left = _SQLITE_ONLY.search(code)
        if left:
            raise Untranslatable(f"no PostgreSQL translation for {left.group(0)!r} in: {sql.strip()[:200]}")
        code = code.replace("%", "%%").replace("?", "%s")
        parts[i] = _NAMED.sub(r"%(\1)s", code)
    return "".join(parts)


def translate_ddl(statement: str) -> str:
    """A migration statement for PostgreSQL: column types, then `translate`."""
    statement = re.sub(
        r"\bINTEGER\s+PRIMARY\s+KEY\b", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", statement, flags=re.I
    )
    statement = re.sub(r"\bINTEGER\b", "BIGINT", statement, flags=re.I)
    statement = re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement, flags=re.I)
    return translate(statement)


# connections ------------------------------------------------------------------------------------


class SqliteConnection(sqlite3.Connection):
    """sqlite3's connection, marked with its dialect."""

    dialect = SQLITE


def dialect_of(conn: Any) -> str:
    return str(getattr(conn, "dialect", SQLITE))


class Row(tuple):  # type: ignore[type-arg]
    """A PostgreSQL row that reads like `sqlite3.Row`: by position, by column name, `keys()`, `dict(row)`."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return super().__getitem__(self._index[key])
        return super().__getitem__(key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    index = {col.name: i for i, col in enumerate(cursor.description or [])}
    return lambda values: Row(values, index)


def _has_nul(params: Any) -> bool:
    values = params.values() if isinstance(params, dict) else params
    return any(isinstance(v, str) and "\x00" in v for v in values)


class PgConnection:
    """A psycopg connection with sqlite3's surface as the store uses it: `execute(sql, params)` with
    SQLite's SQL and placeholders (translated), rows by name and position, a trace callback."""

    dialect = POSTGRES

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self._trace: Callable[[str], None] | None = None

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        if self._trace is not None:
            self._trace(sql)
        if _has_nul(params):  # PostgreSQL's text cannot hold NUL; SQLite's can: refuse it the same everywhere
            raise ValidationError("text with a NUL character cannot be stored")
        return self.raw.execute(translate(sql), params)

    def execute_ddl(self, statement: str) -> None:
        self.raw.execute(translate_ddl(statement), ())

    def set_trace_callback(self, callback: Callable[[str], None] | None) -> None:
        self._trace = callback

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return bool(self.raw.info.transaction_status != TransactionStatus.IDLE)

    @property
    def usable(self) -> bool:
        return not (self.raw.closed or self.raw.broken)

    def rollback(self) -> None:
        self.raw.execute("ROLLBACK")

    def close(self) -> None:
        self.raw.close()


# backends ---------------------------------------------------------------------------------------

_C = TypeVar("_C")


class Backend:
    """How the store connects, writes, migrates and closes on one database."""

    dialect: str
    db_path: Path | None = None

    def __init__(self) -> None:
        self._opened: list[Any] = []
        self._opened_lock = threading.Lock()

    def _keep(self, conn: _C) -> _C:
        with self._opened_lock:
            self._opened.append(conn)
        return conn

    def connect(self) -> Any:
        raise NotImplementedError

    def usable(self, conn: Any) -> bool:
        return True

    def begin_write(self, conn: Any) -> None:
        raise NotImplementedError

    @contextmanager
    def migration(self) -> Iterator[Any]:
        raise NotImplementedError
        yield  # pragma: no cover

    def version(self, conn: Any) -> int:
        raise NotImplementedError

    def apply(self, conn: Any, script: str, number: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            try:
                conn.close()
            except Exception:  # noqa: S110 - closing what may be broken already
                pass


class SqliteBackend(Backend):
    dialect = SQLITE

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = self.db_path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=LOCK_TIMEOUT_SECONDS,
            isolation_level=None,
            check_same_thread=False,
            factory=SqliteConnection,
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=FULL")
        return self._keep(conn)

    def begin_write(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    @contextmanager
    def migration(self) -> Iterator[Any]:
        conn = self.connect()
        try:
            yield conn
        finally:
            conn.close()

    def version(self, conn: Any) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def apply(self, conn: Any, script: str, number: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


class PostgresBackend(Backend):
    dialect = POSTGRES

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def connect(self) -> PgConnection:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise ValidationError(
                "CLEANROOM_DATABASE_URL names PostgreSQL but psycopg is not installed",
                hint="pip install 'psycopg[binary]'",
            ) from exc
        try:
            raw = psycopg.connect(self.url, autocommit=True, row_factory=_row_factory)
        except psycopg.OperationalError as exc:
            raise ValidationError(
                f"cannot connect to the database {safe_url(self.url)}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
            ) from None
        raw.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'")
        return self._keep(PgConnection(raw))

    def usable(self, conn: Any) -> bool:
        return bool(conn.usable)

    def begin_write(self, conn: Any) -> None:
        conn.raw.execute("BEGIN")
        conn.raw.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))

    @contextmanager
    def migration(self) -> Iterator[Any]:
        conn = self.connect()
        try:
            conn.raw.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
            conn.raw.execute("CREATE TABLE IF NOT EXISTS cleanroom_schema (version BIGINT NOT NULL)")
            yield conn
        finally:
            if conn.usable:
                conn.raw.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))
            conn.close()

    def version(self, conn: Any) -> int:
        row = conn.raw.execute("SELECT MAX(version) FROM cleanroom_schema").fetchone()
        return int(row[0] or 0)

    def apply(self, conn: Any, script: str, number: int) -> None:
        with conn.raw.transaction():  # PostgreSQL's DDL is transactional: a migration applies whole or not at all
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute_ddl(statement)
            conn.raw.execute("DELETE FROM cleanroom_schema")
            conn.raw.execute("INSERT INTO cleanroom_schema (version) VALUES (%s)", (number,))


def backend(url: str | None, data_dir: Path) -> Backend:
    dialect, target = parse_url(url, data_dir)
    return PostgresBackend(target) if dialect == POSTGRES else SqliteBackend(target)


def table_names(conn: Any) -> list[str]:
    """The store's tables (not the database's own, nor the migration bookkeeping)."""
    if dialect_of(conn) == POSTGRES:
        return [
            r[0]
            for r in conn.raw.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
                " AND table_type = 'BASE TABLE' AND table_name != 'cleanroom_schema' ORDER BY table_name"
            )
        ]
    return [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]


def index_names(conn: Any) -> set[str]:
    if dialect_of(conn) == POSTGRES:
        return {r[0] for r in conn.raw.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
