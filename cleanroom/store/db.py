"""The API's database (SQLite, WAL, by default; or PostgreSQL) with numbered migrations, plus the blob directory.

Each state change runs in one transaction together with its audit event (`Store.tx`), so a crash
never leaves a half-visible record. The migrations are SQLite's SQL; on PostgreSQL the same ones run
translated (`cleanroom.store.dialect`), never a second schema.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cleanroom.store import dialect
from cleanroom.store.blobs import BlobStore

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE orgs (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, roles TEXT NOT NULL,
        enc_public TEXT, sign_public TEXT, created_at REAL NOT NULL);
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY, org_id TEXT NOT NULL REFERENCES orgs(id), hash TEXT NOT NULL,
        created_at REAL NOT NULL, revoked_at REAL);
    CREATE TABLE room (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE uploads (
        id TEXT PRIMARY KEY, org_id TEXT NOT NULL, meta TEXT NOT NULL, created_at REAL NOT NULL);
    CREATE TABLE datasets (
        name TEXT PRIMARY KEY, owner_id TEXT NOT NULL REFERENCES orgs(id), sha256 TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL, row_count INTEGER NOT NULL, schema TEXT NOT NULL, mock TEXT NOT NULL,
        dropped TEXT NOT NULL, description TEXT NOT NULL, policy_version INTEGER NOT NULL,
        created_at REAL NOT NULL);
    CREATE TABLE policies (
        dataset TEXT NOT NULL, version INTEGER NOT NULL, text TEXT NOT NULL, policy TEXT NOT NULL,
        sha256 TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (dataset, version));
    CREATE TABLE plugins (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, version TEXT NOT NULL, kind TEXT NOT NULL,
        manifest TEXT NOT NULL, review TEXT NOT NULL, size INTEGER NOT NULL,
        submitted_by TEXT NOT NULL, created_at REAL NOT NULL, UNIQUE (name, version));
    CREATE TABLE approvals (
        id TEXT PRIMARY KEY, plugin_id TEXT NOT NULL REFERENCES plugins(id), dataset TEXT NOT NULL,
        policy_version INTEGER NOT NULL, dataset_sha256 TEXT NOT NULL, org_id TEXT NOT NULL,
        decision TEXT NOT NULL, reason TEXT NOT NULL, payload TEXT NOT NULL, signature TEXT NOT NULL,
        created_at REAL NOT NULL, revoked_at REAL);
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY, org_id TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL,
        effective_policy TEXT NOT NULL, status TEXT NOT NULL, phase TEXT, reason TEXT,
        error_class TEXT, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
        runner_id TEXT, log_blob TEXT, attempts INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX jobs_status ON jobs(status, created_at);
    CREATE TABLE budget (
        dataset TEXT NOT NULL, job_id TEXT NOT NULL, epsilon REAL NOT NULL, state TEXT NOT NULL,
        created_at REAL NOT NULL, PRIMARY KEY (dataset, job_id));
    CREATE TABLE releases (
        id TEXT PRIMARY KEY, job_id TEXT NOT NULL UNIQUE REFERENCES jobs(id), recipient_id TEXT NOT NULL,
        manifest TEXT NOT NULL, receipt TEXT NOT NULL, review_by TEXT NOT NULL, created_at REAL NOT NULL);
    CREATE TABLE release_artifacts (
        release_id TEXT NOT NULL, name TEXT NOT NULL, blob TEXT NOT NULL, size INTEGER NOT NULL,
        PRIMARY KEY (release_id, name));
    CREATE TABLE release_approvals (
        release_id TEXT NOT NULL, dataset TEXT NOT NULL, org_id TEXT NOT NULL, payload TEXT NOT NULL,
        signature TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (release_id, dataset));
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY, ts REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        object_type TEXT NOT NULL, object_id TEXT NOT NULL, details TEXT NOT NULL,
        prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
    """,
    # 2: owners can reject a release held for their review
    """
    CREATE TABLE release_rejections (
        release_id TEXT NOT NULL, dataset TEXT NOT NULL, org_id TEXT NOT NULL, reason TEXT NOT NULL,
        payload TEXT NOT NULL, signature TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (release_id, dataset));
    """,
    # 3: orgs rotate their keys with a statement signed by the old and the new signing key
    """
    CREATE TABLE key_rotations (
        seq INTEGER PRIMARY KEY, org_id TEXT NOT NULL REFERENCES orgs(id), payload TEXT NOT NULL,
        old_signature TEXT NOT NULL, new_signature TEXT NOT NULL, created_at REAL NOT NULL);
    """,
    # 4: uploads reserve their dataset name while pending and stay (done) so a retried PUT is answered
    """
    ALTER TABLE uploads ADD COLUMN name TEXT;
    ALTER TABLE uploads ADD COLUMN sha256 TEXT;
    ALTER TABLE uploads ADD COLUMN done_at REAL;
    UPDATE uploads SET name = json_extract(meta, '$.name'), sha256 = json_extract(meta, '$.sha256');
    CREATE INDEX uploads_name ON uploads(name);
    CREATE INDEX uploads_sha256 ON uploads(sha256);
    """,
    # 5: the append-only privacy ledger (cleanroom.ledger): one charge per job and DP input, never refunded;
    # charges of the old budget table (reserved or spent) are kept as charges
    """
    CREATE TABLE privacy_charges (
        seq INTEGER PRIMARY KEY, job_id TEXT NOT NULL, dataset TEXT NOT NULL, recipient TEXT NOT NULL,
        epsilon REAL NOT NULL, delta REAL NOT NULL, policy_sha256 TEXT NOT NULL, created_at REAL NOT NULL,
        UNIQUE (job_id, dataset));
    CREATE INDEX privacy_charges_dataset ON privacy_charges(dataset, recipient);
    INSERT INTO privacy_charges (job_id, dataset, recipient, epsilon, delta, policy_sha256, created_at)
        SELECT b.job_id, b.dataset, COALESCE(json_extract(j.spec, '$.recipient'), ''), b.epsilon, 0, '',
               b.created_at FROM budget AS b LEFT JOIN jobs AS j ON j.id = b.job_id;
    """,
    # review-page sessions: their own short-lived secrets (stored hashed), bound to the org token
    # that logged in (rotating or revoking that token ends them), revoked at logout
    """
    CREATE TABLE web_sessions (
        id TEXT PRIMARY KEY, org_id TEXT NOT NULL REFERENCES orgs(id), token_id TEXT NOT NULL,
        hash TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL, revoked_at REAL);
    CREATE INDEX web_sessions_token ON web_sessions(token_id);
    """,
    # a job's outcome is shown to its analyst only at `reveal_at` (started_at plus the spec's time budget);
    # the audit events of a running job are held until then; an analyst's cancel after the start withdraws
    """
    ALTER TABLE jobs ADD COLUMN reveal_at REAL;
    ALTER TABLE jobs ADD COLUMN held_events TEXT;
    ALTER TABLE jobs ADD COLUMN withdrawn_at REAL;
    CREATE INDEX jobs_held ON jobs(reveal_at) WHERE held_events IS NOT NULL;
    """,
    # an owner withdraws a dataset: gone from other orgs' lists, no new jobs; its blob is left to the sweep
    """
    ALTER TABLE datasets ADD COLUMN withdrawn_at REAL;
    """,
    # plugins are content-addressed for everyone: another org that submits the same bytes may use them
    # (its own view; the name stays with the first submitter's lineage)
    """
    CREATE TABLE plugin_users (
        plugin_id TEXT NOT NULL REFERENCES plugins(id), org_id TEXT NOT NULL REFERENCES orgs(id),
        created_at REAL NOT NULL, PRIMARY KEY (plugin_id, org_id));
    """,
    # runner instances (one per runner process, several per room): each heartbeats with its random id and
    # its name; a job's runner_id is the instance that claimed it; recover re-queues only jobs of instances
    # that are gone (ended: the same name started again, or lapsed: silent for longer than their ttl)
    """
    CREATE TABLE runner_instances (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, started_at REAL NOT NULL, last_seen REAL NOT NULL,
        ttl REAL NOT NULL, ended_at REAL, ended_reason TEXT);
    CREATE INDEX runner_instances_name ON runner_instances(name, ended_at);
    """,
    # indexes for the list pages (keyset order) and the lookups of every request (cleanroom.store.*)
    """
    CREATE INDEX jobs_created ON jobs(created_at DESC, id);
    CREATE INDEX jobs_org ON jobs(org_id, status);
    CREATE INDEX releases_created ON releases(created_at DESC, id);
    CREATE INDEX approvals_plugin ON approvals(plugin_id, created_at);
    CREATE INDEX approvals_dataset ON approvals(dataset, decision);
    CREATE INDEX plugins_order ON plugins(name, created_at, id);
    CREATE INDEX datasets_owner ON datasets(owner_id);
    CREATE INDEX tokens_org ON tokens(org_id);
    """,
]


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def now() -> float:
    return round(time.time(), 6)


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def row_dict(row: Any, *json_fields: str) -> dict[str, Any]:
    """A row as a dict, with the named JSON text columns decoded."""
    data = dict(row)
    for f in json_fields:
        if f in data and isinstance(data[f], str):
            data[f] = json.loads(data[f])
    return data


def placeholders(values: Any) -> str:
    """`?,?,?` for an `IN (...)` over `values` (never empty: `IN ()` is not SQL)."""
    return ",".join("?" * max(len(values), 1))


class Store:
    """The API's state: one database (a SQLite file in `data_dir` by default, or PostgreSQL named by
    `database_url`: `cleanroom.store.dialect`) and one blob directory under `data_dir`."""

    def __init__(self, data_dir: Path, database_url: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.backend = dialect.backend(database_url, self.data_dir)
        self.dialect = self.backend.dialect
        self.db_path = self.backend.db_path  # the SQLite file (None on PostgreSQL)
        self.blobs = BlobStore(self.data_dir / "blobs")
        self._write_lock = threading.Lock()
        self._readers = threading.local()  # one read connection per thread, kept open (see `read`)
        self._writer: Any = None
        self.migrate()

    def _connect(self) -> Any:
        return self.backend.connect()

    def migrate(self) -> int:
        """Apply the migrations not applied yet, each in its own transaction; returns the schema version.
        On PostgreSQL replicas that start together wait for each other (an advisory lock)."""
        with self._write_lock, self.backend.migration() as conn:
            version = self.backend.version(conn)
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                self.backend.apply(conn, script, number)
            return self.backend.version(conn)

    @contextmanager
    def read(self) -> Iterator[Any]:
        """A connection for reading (autocommit: each statement sees the latest commit). Each thread keeps
        its own open: opening one (and its pragmas) cost more than most of the API's queries."""
        conn = getattr(self._readers, "conn", None)
        if conn is None or not self.backend.usable(conn):
            conn = self._readers.conn = self._connect()
        try:
            yield conn
        finally:
            if conn.in_transaction:  # a caller's BEGIN left open must not pin an old snapshot
                conn.rollback()

    @contextmanager
    def tx(self) -> Iterator[Any]:
        """A write transaction: all or nothing. Writers are serialised: SQLite allows one, and on PostgreSQL
        each takes the room's write lock first, so replicas serialise them the same way (`dialect`)."""
        with self._write_lock:
            if self._writer is None or not self.backend.usable(self._writer):
                self._writer = self._connect()  # one connection for every write: they are serialised anyway
            conn = self._writer
            self.backend.begin_write(conn)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close every connection this store opened (a server that ends, a test)."""
        with self._write_lock:
            self._writer = None
            self.backend.close()
