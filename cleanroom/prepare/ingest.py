"""Data preparation on the owner's machine: check, pseudonymise, drop identifiers, encrypt.

`prepare` streams a CSV or Parquet file in record batches, replaces the id column with `_pid`
(hex HMAC-SHA256 of the raw id under the owners' shared join secret), drops columns that look like
direct identifiers, and writes the rows as an Arrow IPC stream that is encrypted to the room's key
while it is written. Only ciphertext reaches the disk; memory stays flat whatever the file size.

A CSV file is read once: column types are inferred from its first few MiB (`sample_types`) and every
later value is checked against them as it is converted. Only when a later value needs a wider type
(a fraction in a column of integers, say) is the file read again, with types inferred from all of it,
so the result is the same as inferring from the whole file first. Reading, pseudonymising and
encrypting run in three threads (Arrow, hashing and age each hold the interpreter lock only part of
the time), with a couple of batches between them.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import secrets
import sys
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from cleanroom.crypto import KeyPair, decrypt_stream, encrypt_stream
from cleanroom.errors import Conflict, IntegrityError, NotFound, ValidationError
from cleanroom.prepare.pseudonym import pid_array, pseudonym
from cleanroom.prepare.schema import (
    TypesChanged,
    check_columns,
    detect_format,
    file_columns,
    infer_types,
    read_batches,
    sample_types,
)
from cleanroom.published import Column, Schema, load_schema_file
from cleanroom.sandbox.vocabulary import PID

if TYPE_CHECKING:  # pandas is heavy: the owner's side loads it only to make the mock sample
    import pandas as pd

__all__ = [
    "PreparedDataset",
    "decrypt_dataset",
    "decrypt_table",
    "load_join_secret",
    "new_join_secret",
    "pid_array",
    "prepare",
    "pseudonym",
    "save_join_secret",
]

MIN_SECRET_BYTES = 16
# An id column names the privacy unit: a person may have many rows, but a column whose values repeat and
# that has fewer than MIN_ID_VALUES of them, or more than MAX_ROWS_PER_ID rows per value, is some other
# column (region, age).
MIN_ID_VALUES = 10
MAX_ROWS_PER_ID = 1000
_ID_COUNT_CAP = 20_000  # distinct ids counted exactly up to this many (beyond it the column passes)
Progress = Callable[[int, int], None]
_EMAIL = r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$"


# -- join secrets and pseudonyms -------------------------------------------------------------------
def new_join_secret() -> bytes:
    return secrets.token_bytes(32)


def save_join_secret(path: str | Path, secret: bytes) -> None:
    """Write `secret` as hex to a new file readable by its owner only (mode 0600)."""
    _check_secret(secret)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise Conflict(f"{path} exists; refusing to overwrite a join secret") from None
    except OSError as exc:
        raise ValidationError(f"cannot write the join secret to {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")


def load_join_secret(path: str | Path) -> bytes:
    """Read a join secret file written by `save_join_secret`."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise NotFound(
            f"no join secret file at {path}",
            hint="create one with `cleanroom join-secret new` and share it with the other owners",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read the join secret file {path}") from exc
    if os.name == "posix" and mode & 0o077:
        raise ValidationError(f"the join secret file {path} is readable by other users", hint=f"chmod 600 {path}")
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ValidationError(f"{path} is not a join secret file (expected hex text)") from None
    _check_secret(secret)
    return secret


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
        raise ValidationError(
            f"a join secret is at least {MIN_SECRET_BYTES} random bytes", hint="make one with new_join_secret()"
        )


# rows per batch read (a few MiB: three threads each hold one or two), per IPC message, and batches
# waiting between two pipeline stages
_PIPELINE_ROWS = 32_768
_WRITE_ROWS = 16_384
_QUEUE_DEPTH = 2
# while preparing: a thread that waits for the interpreter lock gets it within this many seconds (the
# default, 5 ms, would let the hashing loop starve the reader, which needs the lock briefly many times
# per batch)
_SWITCH_INTERVAL = 0.0005
T = TypeVar("T")


# -- prepare ---------------------------------------------------------------------------------------
@dataclass
class PreparedDataset:
    """The ciphertext of a prepared dataset on the owner's disk, and what the room may see of it."""

    ciphertext_path: Path
    sha256: str
    size: int
    row_count: int
    schema: Schema
    dropped: list[str]
    mock: pd.DataFrame
    dropped_reasons: dict[str, str] = field(default_factory=dict)
    id_values: int | None = None  # distinct raw ids, counted up to a cap (None: more than that); never sent
    # summaries of the rows, for the owner's eyes only (`cleanroom.prepare.mock.suggest_policy`); never sent
    suggested: Schema | None = None

    def metadata(self) -> dict[str, Any]:
        from cleanroom.published import to_records

        """The fields of an upload declaration that describe the data (the API adds name and policy)."""
        return {
            "schema": self.schema.to_dict(),
            "row_count": self.row_count,
            "mock": to_records(self.mock, self.schema),
            "dropped": list(self.dropped),
            "sha256": self.sha256,
            "size": self.size,
        }

    def cleanup(self) -> None:
        self.ciphertext_path.unlink(missing_ok=True)

    def __enter__(self) -> PreparedDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class _ArrowSource(io.RawIOBase):
    """A readable file whose bytes are an Arrow IPC stream, produced batch by batch as they are read.

    The encryptor pulls from it, so at most one batch of plaintext is in memory at a time.
    """

    def __init__(
        self,
        batches: Iterator[pa.RecordBatch],
        schema: pa.Schema,
        compression: str | None,
        written: Callable[[], None] | None = None,
    ) -> None:
        self._batches = batches
        self._written = written
        self._sink = io.BytesIO()
        # one column after another: compressing columns in Arrow's threads costs 10-15 MB more memory
        options = pa.ipc.IpcWriteOptions(compression=compression, use_threads=False)
        self._writer = pa.ipc.new_stream(self._sink, schema, options=options)
        self._buf = memoryview(b"")
        self._done = False
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            while not self._buf and not self._done:
                self._refill()
        except BaseException as exc:  # pyrage would wrap it: keep it to re-raise as is
            self.error = exc
            raise
        size = len(self._buf) if size is None or size < 0 else size
        chunk, self._buf = bytes(self._buf[:size]), self._buf[size:]
        return chunk

    def _refill(self) -> None:
        batch = next(self._batches, None)
        if batch is None:
            self._writer.close()
            self._done = True
        else:
            self._writer.write_batch(batch)
            if self._written:
                self._written()
        self._buf = memoryview(self._sink.getvalue())
        self._sink.seek(0)
        self._sink.truncate()


class _HashingFile(io.RawIOBase):
    def __init__(self, f: BinaryIO) -> None:
        self._f, self.hash, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self._f.write(data)


def prepare(
    path: str | Path,
    *,
    recipient: str | Sequence[str],
    id_column: str,
    join_secret: bytes,
    policy: Any = None,
    schema_override: Schema | dict[str, Any] | str | Path | None = None,
    fmt: str | None = None,
    drop_identifiers: bool = True,
    progress: Progress | None = None,
    workdir: str | Path | None = None,
    mock_rows: int = 100,
    compression: str | None = "zstd",
    identifier_check: Callable[[str], str | None] | None = None,
    text_columns: Sequence[str] = (),
    allow_few_ids: bool = False,
) -> PreparedDataset:
    """Check, pseudonymise and encrypt `path` to the room's key `recipient` into a temporary file.

    Raises ValidationError and leaves nothing behind when it fails: rows that do not fit (naming their
    lines); a CSV column that would be text only because of a few cells (naming lines and values; unless
    it is in `text_columns`); an id column with few distinct values (unless `allow_few_ids`); policy
    `[columns.X]` rules for columns the file does not keep; identifier columns when `drop_identifiers`
    is False.
    """
    with _lean_memory_pool():
        prepared = _prepare(
            Path(path),
            recipient,
            id_column,
            join_secret,
            policy,
            schema_override,
            fmt,
            drop_identifiers,
            progress,
            workdir,
            mock_rows,
            compression,
            identifier_check,
            tuple(text_columns),
        )
    if not allow_few_ids:
        try:
            _check_id_values(id_column, prepared)
        except BaseException:
            prepared.cleanup()
            raise
    return prepared


def _check_id_values(id_column: str, prepared: PreparedDataset) -> None:
    ids, rows = prepared.id_values, prepared.row_count
    if ids is None or ids >= rows or (ids >= MIN_ID_VALUES and ids * MAX_ROWS_PER_ID >= rows):
        return  # (a file with one row per id is fine however small)
    likely = [n for n, why in prepared.dropped_reasons.items() if "id" in why.split()]
    guess = f" ({', '.join(repr(n) for n in likely)} looks like one and would have been dropped)" if likely else ""
    raise ValidationError(
        f"the id column {id_column!r} has only {ids} distinct values in {rows} rows: an id column names "
        "the person (or other privacy unit) each row is about, so it has many values (a person may have "
        "several rows). Nothing was uploaded",
        hint=f"give the column that identifies the person with --id-column{guess}; if this really is the id "
        "column (few units with many rows each), pass --allow-few-ids (SDK: allow_few_ids=True)",
        details={"id_column": id_column, "distinct": ids, "rows": rows, "dropped_id_like": likely},
    )


def _check_policy_columns(policy: Any, names: list[str], id_column: str, dropped: dict[str, str]) -> None:
    """Every `[columns.X]` rule of the policy names a column the dataset keeps."""
    import difflib

    kept = [n for n in names if n != id_column and n not in dropped] + [PID]
    problems = []
    for name in _policy_columns(policy):
        if name in kept:
            continue
        if name == id_column:
            problems.append(
                f"{name!r} is the id column, which leaves this machine only as the pseudonym {PID}"
                f" (a rule for it would be [columns.{PID}])"
            )
        elif name in dropped:
            problems.append(
                f"{name!r} is dropped as a direct identifier ({dropped[name]}); keep it with "
                f"[identifiers] allow = [{name!r}] or remove the rule"
            )
        else:
            close = difflib.get_close_matches(name, kept, n=1)
            problems.append(
                f"{name!r} is not a column of the file" + (f" (did you mean {close[0]!r}?)" if close else "")
            )
    if problems:
        raise ValidationError(
            "the policy has [columns.X] rules for columns the dataset does not have: "
            + "; ".join(problems)
            + ". Nothing was uploaded",
            hint=f"fix or remove those [columns.X] tables in the policy; the dataset's columns are {kept}",
            details={"columns": kept},
        )


def _policy_columns(policy: Any) -> list[str]:
    if policy is None:
        return []
    if hasattr(policy, "columns") and not isinstance(policy, dict):
        return [c.name for c in policy.columns]
    data = policy if isinstance(policy, dict) else {}
    return list((data.get("columns") or {}).keys())


@contextmanager
def _lean_memory_pool() -> Iterator[None]:
    """Arrow's jemalloc pool, while preparing: it hands the CSV reader's many short-lived blocks
    back to the system, so the peak memory is about 30 MB lower than with mimalloc.

    jemalloc keeps freed pages for a second (Arrow's setting) in an arena per thread; with three
    threads that is 30-40 MB more. The arenas made from here on (this module's threads get their own)
    give pages back at once; Arrow's one second is the default again for later arenas.
    """
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # builds without jemalloc (Windows)
        yield
        return
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    pa.jemalloc_set_decay_ms(0)
    try:
        yield
    finally:
        pa.jemalloc_set_decay_ms(_JEMALLOC_DECAY_MS)
        pa.set_memory_pool(previous)


_JEMALLOC_DECAY_MS = 0 if sys.platform == "darwin" else 1000  # Arrow's (je_arrow_malloc_conf)


class _Meter:
    """Progress over the passes over the file: `done` never goes back, the total grows if a pass is
    added (types that must be inferred from the whole file after all)."""

    def __init__(self, progress: Progress | None, size: int) -> None:
        self.progress, self.size = progress, size
        self.start, self.done, self.total = 0, 0, size

    def add_passes(self, passes: int) -> None:
        self.start, self.total = self.done, self.done + passes * self.size

    def reporter(self, index: int = 0) -> Callable[[int], None]:
        """progress(bytes read) for pass `index` (from 0) since the last `add_passes`."""
        base = self.start + index * self.size

        def report(done: int) -> None:
            self.done = max(self.done, base + min(done, self.size))
            if self.progress:
                self.progress(self.done, self.total)

        return report


_tuning_lock = threading.Lock()
_tuning: dict[str, Any] = {"users": 0, "previous": None}


@contextmanager
def _switch_interval(seconds: float) -> Iterator[None]:
    """A shorter interpreter switch interval while any `prepare` runs (they may run in parallel)."""
    with _tuning_lock:
        if not _tuning["users"]:
            _tuning["previous"] = sys.getswitchinterval()
            sys.setswitchinterval(min(_tuning["previous"], seconds))
        _tuning["users"] += 1
    try:
        yield
    finally:
        with _tuning_lock:
            _tuning["users"] -= 1
            if not _tuning["users"]:
                sys.setswitchinterval(_tuning["previous"])


def _prepare(
    path: Path,
    recipient: str | Sequence[str],
    id_column: str,
    join_secret: bytes,
    policy: Any,
    schema_override: Any,
    fmt: str | None,
    drop_identifiers: bool,
    progress: Progress | None,
    workdir: str | Path | None,
    mock_rows: int,
    compression: str | None,
    identifier_check: Callable[[str], str | None] | None,
    text_columns: tuple[str, ...] = (),
) -> PreparedDataset:
    fmt = detect_format(path, fmt)
    _check_secret(join_secret)
    recipients = [recipient] if isinstance(recipient, str) else list(recipient)
    names = file_columns(path, fmt)
    if id_column not in names:
        raise ValidationError(f"no id column {id_column!r} in {path.name}; its columns are {names}")
    reserved = [n for n in names if n.startswith("_")]
    if reserved:
        raise ValidationError(f"column names starting with '_' are reserved: {reserved}", hint="rename these columns")
    meter = _Meter(progress, path.stat().st_size)

    def flag(schema: Schema, first: pa.RecordBatch | None) -> dict[str, str]:
        check_columns(names, schema.names)
        flagged = _identifiers(path, fmt, schema, id_column, policy, identifier_check, first)
        if flagged and not drop_identifiers:
            listing = "; ".join(f"{name!r} ({why})" for name, why in flagged.items())
            raise ValidationError(
                f"columns that look like direct identifiers: {listing}",
                hint="drop them, or list them under [identifiers] allow in the policy",
                details={"identifiers": flagged},
            )
        _check_policy_columns(policy, names, id_column, flagged)
        return flagged

    def encrypt(
        schema: Schema, flagged: dict[str, str], sampled: list[str] | None, report: Callable[[int], None]
    ) -> PreparedDataset:
        kept = [c for c in schema.columns if c.name != id_column and c.name not in flagged]
        read_schema = Schema([Column(id_column, "string", nullable=False)] + kept)
        position = [0]  # bytes read: set in the reading thread, reported from this one

        def tick() -> None:
            report(position[0])

        batches = read_batches(
            path,
            fmt,
            read_schema,
            progress=lambda done: position.__setitem__(0, done),
            sampled=sampled,
            rows=_PIPELINE_ROWS,
        )
        silent = [c.name for c in kept if c.stats == {}]  # an override's `stats = {}`: publish nothing
        prepared = _encrypt(batches, kept, flagged, recipients, join_secret, workdir, mock_rows, compression, tick)
        return _publish_declared(prepared, policy, silent, mock_rows)

    with _switch_interval(_SWITCH_INTERVAL):
        if schema_override is not None or fmt != "csv":
            if text_columns:
                raise ValidationError(
                    "--text-column is for CSV files whose column types are inferred",
                    hint='give the column type "string" in the schema override instead',
                )
            schema = _override(schema_override) if schema_override is not None else infer_types(path, fmt)
            return encrypt(schema, flag(schema, None), None, meter.reporter())
        sample = sample_types(path, text_columns=text_columns)
        flagged = flag(sample.schema, sample.first)
        sample.first = None  # not kept while the file is read
        try:  # the sample is the whole file: its types are final; else check them on every later row
            return encrypt(sample.schema, flagged, None if sample.complete else sample.empty, meter.reporter())
        except TypesChanged:  # a later row needs a wider type: infer from every row, then start again
            meter.add_passes(2)
            schema = infer_types(path, fmt, progress=meter.reporter(0), text_columns=text_columns)
            return encrypt(schema, flag(schema, None), None, meter.reporter(1))


def _publish_declared(prepared: PreparedDataset, policy: Any, silent: list[str], mock_rows: int) -> PreparedDataset:
    """Keep the rows' summaries as suggestions for the owner; publish declared facts only, and mock rows
    made from them (`cleanroom.prepare.mock`)."""
    from cleanroom.published import make_mock, published_schema

    prepared.suggested = prepared.schema
    prepared.schema = published_schema(prepared.schema, policy, silent)
    prepared.mock = make_mock(prepared.schema, n=mock_rows)
    return prepared


def _override(schema_override: Any) -> Schema:
    if isinstance(schema_override, Schema):
        return schema_override
    if isinstance(schema_override, dict):
        return Schema.from_dict(schema_override)
    return load_schema_file(schema_override)


def _encrypt(
    batches: Generator[pa.RecordBatch, None, None],
    kept: list[Column],
    flagged: dict[str, str],
    recipients: list[str],
    join_secret: bytes,
    workdir: str | Path | None,
    mock_rows: int,
    compression: str | None,
    tick: Callable[[], None],
) -> PreparedDataset:
    """Pseudonymise, summarise and encrypt `batches` (the id column first, then `kept`).

    Three threads: one reads and converts (Arrow, mostly outside the interpreter lock), one hashes ids
    and collects summaries, and this one writes the Arrow IPC stream (zstd, outside the lock) that
    age encrypts (inside it) into the hashed temporary file.
    """
    from cleanroom.prepare.mock import StatsCollector
    from cleanroom.published import make_mock

    out_schema = pa.schema(
        [pa.field(PID, pa.string(), nullable=False)] + [pa.field(c.name, c.arrow_type()) for c in kept]
    )
    stats = StatsCollector(kept)
    ids: set[str] | None = set()  # distinct raw ids, while they are few (`prepare` checks the id column)

    def summarised() -> Iterator[pa.RecordBatch]:  # in the reading thread: off the hashing thread's way
        with closing(batches):
            for batch in batches:
                stats.update(batch)
                yield batch

    def transformed(read: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        nonlocal ids
        for batch in read:
            if ids is not None:
                ids.update(pc.unique(batch.column(0)).to_pylist())
                ids = ids if len(ids) <= _ID_COUNT_CAP else None
            for start in range(0, batch.num_rows, _WRITE_ROWS):  # small IPC messages, small buffers
                part = batch.slice(start, _WRITE_ROWS)
                yield pa.record_batch([pid_array(part.column(0), join_secret)] + part.columns[1:], schema=out_schema)

    fd, tmp = tempfile.mkstemp(prefix="cleanroom-", suffix=".age", dir=workdir)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            _in_thread(summarised(), "cleanroom-read") as read,
            _in_thread(transformed(read), "cleanroom-pseudonymise") as ready,
        ):
            sink, source = _HashingFile(raw), _ArrowSource(ready, out_schema, compression, tick)
            try:
                encrypt_stream(source, sink, recipients)  # type: ignore[arg-type]
            except Exception:
                if source.error is not None:
                    raise source.error from None
                raise
            raw.flush()
            os.fsync(raw.fileno())
        tick()
        columns = [Column(PID, "string", nullable=False, stats={})]
        columns += [stats.column(c) for c in kept]
        final = Schema(columns)
        return PreparedDataset(
            Path(tmp),
            sink.hash.hexdigest(),
            sink.size,
            stats.rows,
            final,
            list(flagged),
            make_mock(final, n=mock_rows),
            dict(flagged),
            id_values=None if ids is None else len(ids),
        )
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _in_thread(items: Iterator[T], name: str, depth: int = _QUEUE_DEPTH) -> Iterator[Iterator[T]]:
    """Iterate `items` in a thread of its own, up to `depth` items ahead of the consumer.

    The consumer gets the items, then the producer's exception if it raised one. On leaving the
    block the producer is stopped (and its generator closed, in its thread) before this returns.
    """
    handoff: queue.Queue[tuple[int, Any]] = queue.Queue(depth)
    stop = threading.Event()
    item_, end_, error_ = 0, 1, 2

    def put(entry: tuple[int, Any]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item_, item)):
                    return
            put((end_, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put((error_, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def consume() -> Iterator[T]:
        while True:
            kind, value = handoff.get()
            if kind == end_:
                return
            if kind == error_:
                raise value
            yield value

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        thread.join()


def _identifiers(
    path: Path,
    fmt: str,
    schema: Schema,
    id_column: str,
    policy: Any,
    check: Callable[[str], str | None] | None,
    first: pa.RecordBatch | None = None,
) -> dict[str, str]:
    """Columns to drop (name -> reason): identifier-like names, or values that are mostly e-mail
    addresses, unless the policy's [identifiers] allow list keeps them."""
    if check is None:
        from cleanroom.policy import looks_like_identifier

        check = looks_like_identifier
    allowed = set(_allowed_identifiers(policy))
    flagged = {}
    for col in schema.columns:
        if col.name == id_column or col.name in allowed:
            continue
        reason = check(col.name)
        if reason:
            flagged[col.name] = reason
    candidates = [
        c
        for c in schema.columns
        if c.type == "string" and c.name not in flagged and c.name != id_column and c.name not in allowed
    ]
    if candidates:
        if first is not None:  # the first batch of the file as text (from sample_types)
            batch: pa.RecordBatch | None = first.select([c.name for c in candidates])
        else:
            sample = Schema([Column(c.name, "string") for c in candidates])
            try:
                with closing(read_batches(path, fmt, sample)) as batches:
                    batch = next(batches, None)
            except ValidationError:  # the main pass reports it with line numbers
                batch = None
        for col, values in zip(candidates, batch.columns if batch is not None else [], strict=False):
            values = values.drop_null()
            matches = pc.sum(pc.match_substring_regex(values, _EMAIL).cast(pa.int64())).as_py() or 0
            if len(values) and matches > len(values) / 2:
                flagged[col.name] = "its values look like e-mail addresses"
    return flagged


def _allowed_identifiers(policy: Any) -> list[str]:
    if policy is None:
        return []
    if hasattr(policy, "identifiers_allow"):
        return list(policy.identifiers_allow)
    data = policy if isinstance(policy, dict) else policy.to_dict()
    return list((data.get("identifiers") or {}).get("allow") or [])


# -- the runner's side -----------------------------------------------------------------------------
def decrypt_table(ciphertext: bytes | BinaryIO, keypair: KeyPair) -> pa.Table:
    """Decrypt a prepared dataset in memory. Tampering, truncation, a wrong key or a stream that is
    not a dataset raise IntegrityError."""
    src = io.BytesIO(ciphertext) if isinstance(ciphertext, bytes | bytearray | memoryview) else ciphertext
    plain = io.BytesIO()
    decrypt_stream(src, plain, keypair)
    try:
        with pa.ipc.open_stream(pa.py_buffer(plain.getbuffer())) as reader:
            table = reader.read_all()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise IntegrityError("the decrypted dataset is not a valid Arrow stream") from exc
    if PID not in table.column_names:
        raise IntegrityError("the decrypted dataset has no _pid column")
    return table


def decrypt_dataset(ciphertext: bytes | BinaryIO, keypair: KeyPair) -> pd.DataFrame:
    return decrypt_table(ciphertext, keypair).to_pandas()
