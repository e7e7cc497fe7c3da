"""Per-job codes for the pseudonyms, given on the runner before any data enters the sandbox.

Every input carries `_pid`, a 64-character HMAC-SHA256 hex pseudonym (`cleanroom.prepare.pseudonym`) that
is the same for a person in every dataset and every job of a join secret. The runner holds all of a
job's inputs in plaintext, so it replaces `_pid` in each of them with an int64 code:

- consistent across the inputs of the job: equal pseudonyms get equal codes, so the sandbox joins
  on 8-byte integers instead of 64-byte strings (and the frames that cross the Docker attach stream
  shrink accordingly);
- fresh per job: the codes are 0..m-1 (m distinct pseudonyms over all inputs) in an order drawn at
  random for each job, so they reveal neither the pseudonyms' order nor anything a later job could
  compare them with (the hex pseudonyms are stable across jobs; the codes are not);
- never released: the release phase counts distinct units with them but no artifact contains
  `_pid` (models and aggregates exclude it; see `cleanroom.sandbox.release.models` and `aggregates`).

The other columns are passed on as they are (schema metadata, such as pandas', is dropped: it would
describe the old `_pid`); each input is written again as one Arrow IPC stream (zstd), which is what
the compute phase reads. Memory: the `_pid` columns of all inputs are read first, then one input at
a time is read without them, given its codes and written; the plaintext streams are released as
they are consumed.
"""

from __future__ import annotations

import io
import secrets
import struct
from collections.abc import Collection, Iterator, Mapping, MutableMapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cleanroom.sandbox.vocabulary import PID

CODE_TYPE = pa.int64()
_WIDTH = 64  # hex characters of an HMAC-SHA256 pseudonym
_BLOCK = 1 << 16  # rows per step of the exactness check (bounds its temporary arrays)


class RecodeError(ValueError):
    """An input cannot be recoded (not an Arrow stream, no `_pid`, missing pseudonyms)."""


class TooLarge(RecodeError):
    """The inputs would decode to more than the caller's limit (checked before anything is decoded)."""


def _read(data: bytes | memoryview, label: str, fields: list[int] | None = None) -> pa.Table:
    """An Arrow IPC stream (only the top-level `fields`, by index, when given), fully validated."""
    try:
        options = pa.ipc.IpcReadOptions(included_fields=fields)
        with pa.ipc.open_stream(pa.py_buffer(data), options=options) as reader:
            table = reader.read_all()
        table.validate(full=True)  # offsets and UTF-8 are trusted by the kernels below and the writer
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise RecodeError(f"{label} is not a valid Arrow stream") from exc
    return table


def _schema(data: bytes | memoryview, label: str) -> tuple[pa.Schema, int]:
    """The stream's schema and the position of its one `_pid` column."""
    try:
        with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
            schema = reader.schema
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise RecodeError(f"{label} is not a valid Arrow stream") from exc
    found = schema.get_all_field_indices(PID)
    if len(found) != 1:
        raise RecodeError(f"{label} has {'no' if not found else 'more than one'} {PID} column")
    if pa.types.is_nested(schema.field(PID).type) or pa.types.is_dictionary(schema.field(PID).type):
        raise RecodeError(f"the {PID} column of {label} has an unsupported type {schema.field(PID).type}")
    return schema, found[0]


def decoded_size(data: bytes | memoryview, label: str) -> int:
    """The bytes an Arrow IPC stream's record and dictionary batches decode to, as their metadata
    declares them, read without decoding (or decompressing) anything.

    A zstd-compressed buffer starts with its length once decompressed: a few kilobytes can declare
    gigabytes (a decompression bomb), which the runner must refuse before Arrow allocates them.
    """
    total = 0
    try:
        reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(data))
        for message in reader:
            if message.type in ("record batch", "dictionary batch"):
                total += _batch_bytes(message.metadata.to_pybytes(), message.body)
    except (pa.ArrowException, OSError, ValueError, IndexError, struct.error) as exc:
        raise RecodeError(f"{label} is not a valid Arrow stream") from exc
    return total


def _batch_bytes(meta: bytes, body: pa.Buffer | None) -> int:
    """Decoded bytes of one batch message: `meta` is its flatbuffer (format/Message.fbs)."""

    def table(pos: int) -> tuple[int, int, int]:  # (table position, vtable position, vtable length)
        vtable = pos - struct.unpack_from("<i", meta, pos)[0]
        return pos, vtable, struct.unpack_from("<H", meta, vtable)[0]

    def field(t: tuple[int, int, int], index: int) -> int | None:  # position of a present field
        pos, vtable, size = t
        at = 4 + 2 * index
        offset = struct.unpack_from("<H", meta, vtable + at)[0] if at + 2 <= size else 0
        return pos + offset if offset else None

    def ref(position: int) -> int:  # an offset field: where it points
        return position + int(struct.unpack_from("<I", meta, position)[0])

    message = table(ref(0))
    kind, header = field(message, 1), field(message, 2)
    if kind is None or header is None:
        raise ValueError("a batch message without a header")
    batch = table(ref(header))
    if meta[kind] == 2:  # DictionaryBatch { id, data: RecordBatch, isDelta }
        data = field(batch, 1)
        if data is None:
            raise ValueError("a dictionary batch without data")
        batch = table(ref(data))
    elif meta[kind] != 3:  # RecordBatch { length, nodes, buffers, compression }
        raise ValueError("an unexpected message header")
    buffers = field(batch, 2)
    compressed = field(batch, 3) is not None
    if buffers is None:
        return 0
    vector = ref(buffers)
    raw = memoryview(body) if body is not None else memoryview(b"")
    total = 0
    for i in range(struct.unpack_from("<I", meta, vector)[0]):
        offset, length = struct.unpack_from("<qq", meta, vector + 4 + 16 * i)
        if offset < 0 or length < 0 or offset + length > len(raw):
            raise ValueError("a buffer outside the message body")
        if compressed and length >= 8:
            declared = struct.unpack_from("<q", raw, offset)[0]  # -1: stored uncompressed
            total += length - 8 if declared == -1 else max(declared, 0)
        else:
            total += length
    return total


def read_table(data: bytes | memoryview, label: str) -> pa.Table:
    """A whole input (its `_pid` checked as `recode_inputs` checks it); `label` names it in errors."""
    _schema(data, label)
    table = _read(data, label)
    if table.column(PID).null_count:
        raise RecodeError(f"{label} has missing {PID} values")
    return table


def recode_columns(columns: list[pa.ChunkedArray], rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """One int64 code per row of each column: equal values, equal codes, over all the columns.

    The codes are 0..m-1 for the m distinct values, in an order drawn from `rng` (for tests; by
    default a fresh seed from `secrets` for each call).
    """
    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    found = _factorize_hex([chunk for c in columns for chunk in c.chunks])
    groups, distinct = found if found is not None else _factorize_any(columns)
    order = rng.permutation(distinct).astype(np.int64)
    out, start = [], 0
    for column in columns:
        out.append(order[groups[start : start + len(column)]])
        start += len(column)
    return out


def recode_tables(tables: list[pa.Table], rng: np.random.Generator | None = None) -> list[pa.Table]:
    """New tables with int64 codes (`recode_columns`) where `_pid` was, without schema metadata."""
    codes = recode_columns([t.column(PID) for t in tables], rng)
    return [
        _with_codes(t.replace_schema_metadata(None), t.schema.get_field_index(PID), c)
        for t, c in zip(tables, codes, strict=True)
    ]


def _with_codes(rest: pa.Table, position: int, codes: np.ndarray) -> pa.Table:
    field = pa.field(PID, CODE_TYPE, nullable=False)
    if PID in rest.column_names:
        return rest.set_column(position, field, pa.array(codes, type=CODE_TYPE))
    return rest.add_column(position, field, pa.array(codes, type=CODE_TYPE))


def write_table(table: pa.Table, compression: str | None = "zstd") -> bytes:
    sink = io.BytesIO()
    options = pa.ipc.IpcWriteOptions(compression=compression, use_threads=True)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue()


def recode_inputs(
    inputs: MutableMapping[str, bytes],
    labels: Mapping[str, str] | None = None,
    *,
    max_bytes: int | None = None,
    rng: np.random.Generator | None = None,
    compression: str | None = "zstd",
    drop: Collection[str] = (),
) -> dict[str, bytes]:
    """`{name: Arrow IPC stream}` with every `_pid` recoded (`recode_columns`), written again.

    Takes each stream out of `inputs` once it is no longer needed (`inputs` is empty afterwards,
    unless this raises). `labels` name the inputs in errors (the dataset names; default: the keys).
    Raises TooLarge, before decoding anything, when the inputs declare more than `max_bytes` of
    decoded data in all (`decoded_size`). Columns named in `drop` (the policies' `never_output`) are
    left out of every input, so they never reach the compute phase.
    """
    names = list(inputs)
    label = {name: (labels or {}).get(name, name) for name in names}
    layout = {name: _schema(inputs[name], label[name]) for name in names}
    if max_bytes is not None:
        total = 0
        for name in names:
            total += decoded_size(inputs[name], label[name])
            if total > max_bytes:
                raise TooLarge(
                    f"the inputs decode to more than {max_bytes} bytes ({label[name]} and those "
                    "before it), over what a sandbox phase may hold"
                )
    pids = []
    for name in names:
        column = _read(inputs[name], label[name], [layout[name][1]]).column(0)
        if column.null_count:
            raise RecodeError(f"{label[name]} has missing {PID} values")
        pids.append(column)
    codes = recode_columns(pids, rng)
    del pids
    out: dict[str, bytes] = {}
    for name in names:
        schema, position = layout[name]
        others = [i for i in range(len(schema)) if i != position and schema.field(i).name not in drop]
        if others:
            kept = _read(inputs[name], label[name], others).replace_schema_metadata(None)
            table = _with_codes(kept, sum(1 for i in others if i < position), codes.pop(0))
        else:  # `_pid` alone (an empty field list would read every field)
            table = pa.table(
                {PID: pa.array(codes.pop(0), type=CODE_TYPE)},
                schema=pa.schema([pa.field(PID, CODE_TYPE, nullable=False)]),
            )
        del inputs[name]
        out[name] = write_table(table, compression)
        del table
    pa.default_memory_pool().release_unused()  # the runner idles between jobs: give the pages back
    return out


def _factorize_any(columns: list[pa.ChunkedArray]) -> tuple[np.ndarray, int]:
    """(a group number per row over all `columns`, the number of groups): Arrow's hash kernel."""
    if len({c.type for c in columns}) > 1:  # e.g. string and large_string: one type, one hash table
        try:
            columns = [c.cast(pa.large_string()) for c in columns]
        except (pa.ArrowException, NotImplementedError) as exc:
            raise RecodeError(f"the inputs' {PID} columns have different types") from exc
    values = pa.chunked_array([chunk for c in columns for chunk in c.chunks], type=columns[0].type)
    encoded = pc.dictionary_encode(values.combine_chunks())  # chunk by chunk is quadratic in pyarrow
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), len(encoded.dictionary)


def _factorize_hex(chunks: list[pa.Array]) -> tuple[np.ndarray, int] | None:
    """`_factorize_any` for 64-character lowercase hex pseudonyms, several times faster; None for others.

    The first 16 characters give a 64-bit key per row (integers hash far faster than 64-byte
    strings); then every row is compared, in full, with one row of its key's group, so that two
    pseudonyms sharing a key (or values that are not hex at all) are never merged: on any
    difference this returns None and the caller falls back to hashing the strings themselves.
    """
    rows = []  # per chunk, its pseudonyms as (n, 8) uint64 words: views of Arrow's buffer, no copy
    for chunk in chunks:
        if chunk.type not in (pa.string(), pa.large_string()) or chunk.null_count:
            return None
        n = len(chunk)
        if n == 0:
            continue
        offset_type = np.dtype(np.int32 if chunk.type == pa.string() else np.int64)
        offsets = np.frombuffer(
            chunk.buffers()[1], dtype=offset_type, count=n + 1, offset=chunk.offset * offset_type.itemsize
        )
        if offsets[-1] - offsets[0] != n * _WIDTH or (np.diff(offsets) != _WIDTH).any():
            return None
        data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)
        rows.append(data[offsets[0] : offsets[-1]].reshape(n, _WIDTH).view(np.uint64))
    if not rows:
        return np.zeros(0, dtype=np.int64), 0
    # per byte, '0'-'9' -> 0-9 and 'a'-'f' -> 10-15 (bit 6 is set for letters): one nibble per byte,
    # the first 8 characters in the low and the next 8 in the high nibbles of a 64-bit key
    low, letters, nine = np.uint64(0x0F0F0F0F0F0F0F0F), np.uint64(0x0101010101010101), np.uint64(9)
    shift6, shift4 = np.uint64(6), np.uint64(4)
    keys = np.empty(sum(len(r) for r in rows), dtype=np.uint64)
    for start, stop, block in _blocks(rows):
        first, second = block[:, 0], block[:, 1]
        key = (first & low) + ((first >> shift6) & letters) * nine
        key |= ((second & low) + ((second >> shift6) & letters) * nine) << shift4
        keys[start:stop] = key
    groups, uniques = pd.factorize(keys)
    del keys
    # exactness: every row equals the row its group kept (any row of the group; the last written)
    kept = np.empty((len(uniques), rows[0].shape[1]), dtype=np.uint64)
    for start, stop, block in _blocks(rows):
        kept[groups[start:stop]] = block
    for start, stop, block in _blocks(rows):
        if not np.array_equal(block, np.take(kept, groups[start:stop], axis=0)):
            return None
    return groups.astype(np.int64, copy=False), len(uniques)


def _blocks(rows: list[np.ndarray]) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, block) over the rows of every chunk in order, at most `_BLOCK` rows at a time."""
    start = 0
    for chunk in rows:
        for first in range(0, len(chunk), _BLOCK):
            block = chunk[first : first + _BLOCK]
            yield start, start + len(block), block
            start += len(block)
