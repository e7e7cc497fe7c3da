"""Dataset schemas: column names, types and nullability, read from CSV or Parquet in record batches.

Files are never loaded whole. When rows do not fit a schema, the error names their lines (CSV) or
rows (Parquet), the column and the kind of the bad value, never the value itself. The summaries that
mock data is made from are computed by `cleanroom.prepare.mock.StatsCollector`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cleanroom.errors import ValidationError
from cleanroom.published import TYPES, Column, Schema, load_schema_file

__all__ = [
    "FORMATS",
    "TYPES",
    "Column",
    "Sample",
    "Schema",
    "TypesChanged",
    "check_columns",
    "detect_format",
    "file_columns",
    "infer_schema",
    "infer_types",
    "load_schema_file",
    "read_batches",
    "sample_types",
    "validate",
]


# -- reading ---------------------------------------------------------------------------------------
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
BATCH_ROWS = 65_536
# the CSV reader keeps a few dozen blocks in flight, so blocks are small (about 10 MiB in flight)
# and joined into batches of about BATCH_ROWS rows
CSV_BLOCK = 1 << 18
MAX_VIOLATIONS = 10
# CSV types are inferred from about this much of the start of a file, then checked on every later row
SAMPLE_BYTES = 8 << 20
_DT = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
PATTERNS = {  # strict on purpose: "007" or "02139" stay strings, so leading zeros survive
    "integer": r"^-?(0|[1-9][0-9]{0,17})$",
    "number": r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?$",
    "boolean": r"^(true|false|True|False|TRUE|FALSE)$",
    "date": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
    "datetime": rf"^{_DT}$",
    "datetime_tz": rf"^{_DT}(Z|[+-][0-9]{{2}}:?[0-9]{{2}})$",
}


def _pattern_key(col: Column) -> str:
    return "datetime_tz" if col.type == "datetime" and col.timezone else col.type


def detect_format(path: str | Path, fmt: str | None = None) -> str:
    """The format, csv or parquet: `fmt` if given, else from the file name's extension."""
    if fmt is not None:
        if fmt.lower() not in ("csv", "parquet"):
            raise ValidationError(f"unknown format {fmt!r}: use csv or parquet")
        return fmt.lower()
    found = FORMATS.get(Path(path).suffix.lower())
    if found is None:
        raise ValidationError(
            f"cannot tell the format of {Path(path).name} from its extension",
            hint="name it .csv or .parquet, or pass the format explicitly",
        )
    return found


def _open_csv(
    path: str | Path,
    types: dict[str, pa.DataType],
    *,
    threads: bool = True,
    handler: Callable[[Any], str] | None = None,
) -> tuple[pa.OSFile, pacsv.CSVStreamingReader]:
    try:
        f = pa.OSFile(str(path))
    except OSError as exc:
        raise ValidationError(f"cannot read {Path(path).name}") from exc
    try:
        reader = pacsv.open_csv(
            f,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK, use_threads=threads),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=handler),
            convert_options=pacsv.ConvertOptions(
                column_types=types, include_columns=list(types), strings_can_be_null=True
            ),
        )
    except (pa.ArrowInvalid, OSError):
        f.close()
        raise
    return f, reader


def _joined(batches: Iterator[pa.RecordBatch], rows: int | None = None) -> Iterator[pa.RecordBatch]:
    rows = BATCH_ROWS if rows is None else rows
    pending: list[pa.RecordBatch] = []
    for batch in batches:
        pending.append(batch)
        if sum(b.num_rows for b in pending) >= rows:
            yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
            pending = []
    if pending and sum(b.num_rows for b in pending):
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def file_columns(path: str | Path, fmt: str | None = None) -> list[str]:
    """The column names of a file, in order; refuses empty and duplicate names."""
    fmt = detect_format(path, fmt)
    if fmt == "parquet":
        names = [n for n, _ in parquet_types(path)]
    else:
        try:
            f, reader = _open_csv(path, {}, handler=lambda row: "skip")
        except pa.ArrowInvalid as exc:
            raise ValidationError(f"{Path(path).name} has no CSV header line") from exc
        with f:
            names = reader.schema.names
    for i, name in enumerate(names):
        if not name.strip():
            raise ValidationError(f"column {i + 1} of {Path(path).name} has no name")
        if names.index(name) != i:
            raise ValidationError(f"column {name!r} appears twice in {Path(path).name}")
    return names


def check_columns(found: list[str], expected: list[str]) -> None:
    missing, extra = [n for n in expected if n not in found], [n for n in found if n not in expected]
    if missing or extra:
        raise ValidationError(
            f"the file's columns do not match the schema: missing {missing}, not in the schema {extra}",
            hint="a schema must describe every column",
        )


def _parquet(path: str | Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except (pa.ArrowException, OSError) as exc:
        raise ValidationError(f"{Path(path).name} is not a readable Parquet file") from exc


def parquet_types(path: str | Path) -> list[tuple[str, pa.DataType]]:
    return [(f.name, f.type) for f in _parquet(path).schema_arrow]


def parquet_kind(name: str, t: pa.DataType) -> str:
    """Our column type for a Parquet column's Arrow type."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    for test, kind in (
        (pa.types.is_integer, "integer"),
        (pa.types.is_floating, "number"),
        (pa.types.is_decimal, "number"),
        (pa.types.is_boolean, "boolean"),
        (pa.types.is_string, "string"),
        (pa.types.is_large_string, "string"),
        (pa.types.is_null, "string"),
        (pa.types.is_date, "date"),
        (pa.types.is_timestamp, "datetime"),
    ):
        if test(t):
            return kind
    raise ValidationError(
        f"column {name!r} has Arrow type {t}, which a dataset cannot hold",
        hint="store it as text, numbers, booleans, dates or timestamps",
    )


def _to_type(values: pa.Array, target: pa.DataType) -> pa.Array:
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if values.type == target:
        return values
    # timestamps only lose sub-microsecond digits, which nobody joins or aggregates on
    safe = not (pa.types.is_timestamp(values.type) and pa.types.is_timestamp(target))
    return pc.cast(values, target, safe=safe)


class _Mismatch(Exception):
    pass


class TypesChanged(Exception):
    """A row past the sample that a CSV file's types were inferred from needs a wider type (or has a
    value in a column that was empty in the sample): infer the types from the whole file instead."""

    def __init__(self, column: str) -> None:
        super().__init__(column)
        self.column = column


def read_batches(
    path: str | Path,
    fmt: str,
    schema: Schema,
    *,
    progress: Callable[[int], None] | None = None,
    sampled: Collection[str] | None = None,
    rows: int | None = None,
) -> Generator[pa.RecordBatch, None, None]:
    """Typed record batches of `schema`'s columns (in its order), of about `rows` rows (BATCH_ROWS).
    Rows that do not fit raise ValidationError naming their lines (CSV) or rows (Parquet).
    `progress(bytes_read)`.

    `sampled` (CSV only) says that `schema`'s types were inferred from a sample of the file
    (`sample_types`), and names the columns that had no value there: every value is then read as text,
    checked against the strict pattern inference used and converted, and a value that inference from
    the whole file would not have given the column's type raises TypesChanged, so that the caller can
    fall back to `infer_types`. Rows that do not fit in other ways (missing values in a non-nullable
    column, wrong field counts) still raise ValidationError with their lines.
    """
    types = {c.name: c.arrow_type() for c in schema.columns}
    failed = False
    try:
        if fmt == "csv":
            checked = sampled is not None
            f, reader = _open_csv(path, {n: pa.string() for n in types} if checked else types)
            target = pa.schema([pa.field(c.name, c.arrow_type()) for c in schema.columns])
            empty = frozenset(sampled or ())
            with f:
                for batch in _joined(reader, rows):
                    _check_nulls(batch, schema)
                    yield _conform(batch, schema, empty, target) if checked else batch
                    if progress:
                        progress(f.tell())
        else:
            pfile = _parquet(path)
            total, rows, size = max(pfile.metadata.num_rows, 1), 0, Path(path).stat().st_size
            for raw in pfile.iter_batches(batch_size=rows or BATCH_ROWS, columns=list(types)):
                try:
                    arrays = [_to_type(raw.column(n), t) for n, t in types.items()]
                except pa.ArrowNotImplementedError as exc:
                    raise ValidationError(
                        "a Parquet column's type does not convert to the schema's type",
                        hint="check the schema override's types",
                    ) from exc
                batch = pa.record_batch(arrays, schema=schema.arrow_schema().remove_metadata())
                _check_nulls(batch, schema)
                yield batch
                rows += batch.num_rows
                if progress:
                    progress(size * rows // total)
    except (pa.ArrowInvalid, _Mismatch):
        failed = True
    if failed:  # when the types came from a sample, only nullability and field counts are known to be wrong
        _raise_violations(
            path,
            fmt,
            schema if sampled is None else Schema([Column(c.name, "string", c.nullable) for c in schema.columns]),
        )


def _conform(batch: pa.RecordBatch, schema: Schema, empty: frozenset[str], target: pa.Schema) -> pa.RecordBatch:
    """`batch` (all text) converted to `schema`'s types, each value checked as `_candidate_ok` would."""
    arrays = []
    for col, values in zip(schema.columns, batch.columns, strict=True):
        if col.name in empty:
            if values.null_count != len(values):
                raise TypesChanged(col.name)
        elif col.type != "string":
            values = _strict_cast(values, col)
        arrays.append(values)
    return pa.record_batch(arrays, schema=target)


def _strict_cast(values: pa.Array, col: Column) -> pa.Array:
    """`values` (text) as `col`'s type, or TypesChanged unless `_candidate_ok` holds for them."""
    key = _pattern_key(col)
    try:  # the patterns let impossible dates (2021-02-30) through, which inference turns to text
        typed = pc.cast(values, col.arrow_type())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise TypesChanged(col.name) from None
    if key in ("integer", "date"):
        # one text form per value: a value fits the strict pattern when it reads back the same (cheaper
        # than the pattern); the few that do not (-0, or 007 and 0x10, which the cast accepts) are
        # matched against it
        same = pc.equal(pc.cast(typed, pa.string()), values)
        unlike = values.filter(pc.invert(same)) if not pc.all(same, min_count=0).as_py() else None
        if unlike is not None and not pc.all(pc.match_substring_regex(unlike, PATTERNS[key]), min_count=0).as_py():
            raise TypesChanged(col.name)
        if key == "integer" and typed.null_count < len(typed):  # at most 18 digits
            low, high = pc.min_max(typed).values()
            if low.as_py() <= -_INT_LIMIT or high.as_py() >= _INT_LIMIT:
                raise TypesChanged(col.name)
    elif not pc.all(pc.match_substring_regex(values, PATTERNS[key]), min_count=0).as_py():
        raise TypesChanged(col.name)
    return typed


_INT_LIMIT = 10**18


def _check_nulls(batch: pa.RecordBatch, schema: Schema) -> None:
    for col, values in zip(schema.columns, batch.columns, strict=True):
        if not col.nullable and values.null_count:
            raise _Mismatch


# -- explaining rows that do not fit (the slow path, taken only when a batch failed) ----------------
def _kind(value: str, col: Column) -> str:
    if re.match(PATTERNS[_pattern_key(col)], value):
        return f"an invalid {col.type}"
    for kind in ("integer", "number", "boolean", "date", "datetime", "datetime_tz"):
        if re.match(PATTERNS[kind], value):
            return "a " + kind.replace("_tz", " with a time zone")
    return "text"


def _cast_fails(values: pa.Array, target: pa.DataType) -> bool:
    try:
        pc.cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return True
    return False


def _bad_rows(values: pa.Array, col: Column, limit: int) -> list[tuple[int, str]]:
    """(index, kind of value) of the first rows of string `values` that `col` cannot hold."""
    bad = []
    if not col.nullable and values.null_count:
        bad = [(i, "an empty value") for i in pc.indices_nonzero(values.is_null()).to_pylist()[:limit]]
    target = col.arrow_type()
    if col.type == "string" or not _cast_fails(values, target):
        return bad
    fits = pc.fill_null(pc.match_substring_regex(values, PATTERNS[_pattern_key(col)]), True)
    for candidates in (pc.indices_nonzero(pc.invert(fits)).to_pylist(), range(len(values))):
        found = 0
        for i in candidates:
            value = values[i].as_py()
            if value is not None and _cast_fails(pa.array([value]), target):
                bad.append((i, _kind(value, col)))
                found += 1
                if found > limit:
                    break
        if found:
            break
    return sorted(bad)[: limit + 1]


def _scan_csv(path: str | Path, schema: Schema, limit: int) -> list[dict[str, Any]]:
    skipped: dict[int, tuple[int, int, int]] = {}  # data index -> (expected, found fields, newlines)

    def handler(row: Any) -> str:
        skipped[row.number - 2] = (row.expected_columns, row.actual_columns, row.text.count("\n"))
        return "skip"

    def misfit(line: int, expected: int, found: int) -> dict[str, Any]:
        return {"line": line, "column": None, "expected": f"{expected} fields", "got": f"{found} fields"}

    out: list[dict[str, Any]] = []
    next_index = extra = 0  # data index of the next record; newlines inside earlier records
    # every column of the file, not only the schema's: newlines inside any value move the lines after it
    names = file_columns(path, "csv")
    types = {n: pa.string() for n in names}
    with closing(_guarded(lambda: _open_csv(path, types, threads=False, handler=handler))) as batches:
        for batch in batches:
            # data index of every row: skipped records sit between them
            n, pending = batch.num_rows, sorted(k for k in skipped if k >= next_index)
            idx = np.arange(next_index, next_index + n)
            for s in pending:
                idx[idx >= s] += 1
            end = int(idx[-1]) + 1 if n else next_index
            here = [s for s in pending if s < end]
            # physical line = 2 + data index + newlines inside the records before it
            nl = np.zeros(n, dtype=np.int64)
            for values in batch.columns:
                nl += pc.fill_null(pc.count_substring(values, "\n"), 0).to_numpy()
            all_idx = np.concatenate([idx, np.array(here, dtype=np.int64)])
            all_nl = np.concatenate([nl, np.array([skipped[s][2] for s in here], dtype=np.int64)])
            order = np.argsort(all_idx, kind="stable")
            lines = np.empty_like(all_idx)
            lines[order] = 2 + all_idx[order] + extra + np.cumsum(all_nl[order]) - all_nl[order]
            for col in schema.columns:
                out += [
                    {"line": int(lines[i]), "column": col.name, "expected": col.type, "got": kind}
                    for i, kind in _bad_rows(batch.column(col.name), col, limit)
                ]
            out += [misfit(int(lines[n + j]), *skipped.pop(s)[:2]) for j, s in enumerate(here)]
            extra, next_index = extra + int(all_nl.sum()), end
            if len(out) > limit:
                break
        else:
            for s in sorted(skipped):  # bad records after the last good one
                out.append(misfit(2 + s + extra, *skipped[s][:2]))
                extra += skipped[s][2]
    return sorted(out, key=lambda v: v["line"])


def _guarded(open_reader: Callable[[], tuple[pa.OSFile, Any]]) -> Generator[pa.RecordBatch, None, None]:
    try:
        f, reader = open_reader()
        with f:
            yield from reader
    except pa.ArrowInvalid as exc:  # arrow's message may quote data: never pass it on
        what = "is not UTF-8 text" if "UTF8" in str(exc) else "could not be parsed as CSV"
        raise ValidationError(f"the file {what}", hint="save it as UTF-8 CSV with one header line") from None


def _scan_parquet(path: str | Path, schema: Schema, limit: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    offset = 0
    for raw in _parquet(path).iter_batches(batch_size=BATCH_ROWS, columns=schema.names):
        for col in schema.columns:
            values = _to_type(raw.column(col.name), pa.string())
            out += [
                {"row": offset + i + 1, "column": col.name, "expected": col.type, "got": kind}
                for i, kind in _bad_rows(values, col, limit)
            ]
        offset += raw.num_rows
        if len(out) > limit:
            break
    return sorted(out, key=lambda v: v["row"])


def _raise_violations(path: str | Path, fmt: str, schema: Schema) -> None:
    found = (_scan_csv if fmt == "csv" else _scan_parquet)(path, schema, MAX_VIOLATIONS)
    if not found:
        raise ValidationError(
            f"{Path(path).name} does not fit the schema", hint="check the schema override's types and nullability"
        )
    unit = "line" if fmt == "csv" else "row"
    more = len(found) > MAX_VIOLATIONS
    found = found[:MAX_VIOLATIONS]
    parts = [
        f"{unit} {v[unit]}: "
        + (
            f"column {v['column']!r} expected {v['expected']}, got {v['got']}"
            if v["column"]
            else f"expected {v['expected']}, got {v['got']}"
        )
        for v in found
    ]
    head = f"the first {len(found)} of more" if more else f"{len(found)}"
    raise ValidationError(
        f"{head} rows of {Path(path).name} do not fit the schema: " + "; ".join(parts),
        details={"violations": found, "more": more},
        hint="fix those rows, or give a schema override with other types",
    )


# -- type inference --------------------------------------------------------------------------------
_INFER_ORDER = ("integer", "number", "boolean", "date", "datetime", "datetime_tz")
_KIND_TYPES = {"date": pa.date32(), "datetime": pa.timestamp("us"), "datetime_tz": pa.timestamp("us", tz="UTC")}


def _candidate_ok(kind: str, values: pa.Array) -> bool:
    """Whether every (non-null, string) value in `values` reads as `kind`, strictly."""
    if not pc.all(pc.match_substring_regex(values, PATTERNS[kind])).as_py():
        return False
    if kind in ("date", "datetime", "datetime_tz"):  # the pattern lets 2021-02-30 through
        try:
            pc.cast(values, _KIND_TYPES[kind])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return False
    return True


# A column that reads as text only because of a few cells (MISTYPED_SHARE of its values at most, and at
# least MISTYPED_MIN_TYPED values of the other kind) is a mistake until its owner says otherwise.
MISTYPED_SHARE = 0.05
MISTYPED_MIN_TYPED = 10
MISTYPED_EXAMPLES = 10
_CODE_LIKE = r"^-?0[0-9]+$"  # 007, 02139: text on purpose (codes with leading zeros), never "bad cells"
_KIND_WORDS = {
    "integer": "whole numbers",
    "number": "numbers",
    "boolean": "true/false",
    "date": "dates (YYYY-MM-DD)",
    "datetime": "date-times",
    "datetime_tz": "date-times with a time zone",
}


class _Inference:
    """Column types of CSV text batches, narrowed batch by batch: a column keeps the first kind of
    _INFER_ORDER that every one of its values has read as so far.

    It also counts, per column and kind, the values that do not read as that kind (while they are few),
    so that a column that is text only because of a few cells can be reported (`mistyped`)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.alive = {n: list(_INFER_ORDER) for n in names}
        self.seen = dict.fromkeys(names, False)
        self.rows = 0
        self.values = dict.fromkeys(names, 0)
        self.misfits: dict[str, dict[str, int]] = {n: dict.fromkeys(_INFER_ORDER, 0) for n in names}
        self.examples: dict[str, dict[str, list[tuple[int, str]]]] = {n: {k: [] for k in _INFER_ORDER} for n in names}

    def update(self, batch: pa.RecordBatch) -> None:
        for name, column in zip(self.names, batch.columns, strict=True):
            tracked = self.misfits[name]
            if not self.alive[name] and not tracked:
                continue
            values = column.drop_null()
            self.values[name] += len(values)
            if not len(values):
                continue
            self.seen[name] = True
            before = self.alive[name]
            self.alive[name] = [k for k in before if _candidate_ok(k, values)]
            for kind in [k for k in list(tracked) if k not in self.alive[name]]:
                self._count(name, kind, column)
        self.rows += batch.num_rows

    def _count(self, name: str, kind: str, column: pa.Array) -> None:
        """Count the cells of `column` that do not read as `kind`; stop counting when they are many."""
        tracked = self.misfits[name]
        bad = pc.invert(pc.fill_null(pc.match_substring_regex(column, PATTERNS[kind]), True))
        where = pc.indices_nonzero(bad)
        found = len(where)
        if found == 0 or (found and pc.any(pc.match_substring_regex(column.take(where), _CODE_LIKE)).as_py()):
            del tracked[kind]  # dead by an impossible date, or codes with leading zeros: text on purpose
            return
        tracked[kind] += found
        if tracked[kind] > max(MISTYPED_EXAMPLES, MISTYPED_SHARE * self.values[name]):
            del tracked[kind]
            return
        room = MISTYPED_EXAMPLES - len(self.examples[name][kind])
        if room > 0:
            firsts = where.slice(0, room)
            self.examples[name][kind] += list(
                zip((self.rows + i for i in firsts.to_pylist()), column.take(firsts).to_pylist(), strict=True)
            )

    def mistyped(self, schema: Schema | None = None) -> list[dict[str, Any]]:
        """Columns typed text only because of a few cells: column, the kind its other values have, how many
        values it has, how many do not fit, and the first of those as (row index from 0, value)."""
        schema = schema or self.schema()
        out = []
        for name in self.names:
            if schema.column(name).type != "string" or not self.misfits[name]:
                continue
            n = self.values[name]
            kind, bad = min(self.misfits[name].items(), key=lambda kv: (kv[1], _INFER_ORDER.index(kv[0])))
            if 0 < bad <= max(1, MISTYPED_SHARE * n) and n - bad >= MISTYPED_MIN_TYPED:
                out.append(
                    {"column": name, "kind": kind, "values": n, "bad": bad, "examples": self.examples[name][kind]}
                )
        return out

    def schema(self) -> Schema:
        columns = []
        for name in self.names:
            kind = self.alive[name][0] if self.alive[name] and self.seen[name] else "string"
            if kind == "datetime_tz":
                columns.append(Column(name, "datetime", timezone="UTC"))
            else:
                columns.append(Column(name, kind))
        return Schema(columns)


def infer_types(
    path: str | Path,
    fmt: str | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    text_columns: Collection[str] | None = None,
) -> Schema:
    """Column names and types, without summaries. CSV needs one streaming pass; Parquet none.

    With `text_columns` (CSV; may be empty), those columns are text, and any other column that would be
    text only because of a few cells raises ValidationError naming their lines and values."""
    fmt = detect_format(path, fmt)
    if fmt == "parquet":
        return Schema(
            [
                Column(n, parquet_kind(n, t), timezone="UTC" if getattr(t, "tz", None) else None)
                for n, t in parquet_types(path)
            ]
        )
    names = file_columns(path, fmt)
    inference = _Inference(names)
    for batch in read_batches(path, fmt, Schema([Column(n, "string") for n in names]), progress=progress):
        inference.update(batch)
    if text_columns is None:
        return inference.schema()
    return _declared_text(path, inference, text_columns)


def _declared_text(path: str | Path, inference: _Inference, text_columns: Collection[str]) -> Schema:
    """`inference`'s types with `text_columns` as text; refuse other columns that are text by a few cells."""
    unknown = sorted(set(text_columns) - set(inference.names))
    if unknown:
        raise ValidationError(
            f"--text-column names columns that {Path(path).name} does not have: {unknown}",
            hint=f"its columns are {inference.names}",
        )
    schema = inference.schema()
    mistyped = [m for m in inference.mistyped(schema) if m["column"] not in text_columns]
    if mistyped:
        raise _mistyped_error(path, mistyped)
    return Schema([Column(c.name, "string") if c.name in text_columns else c for c in schema.columns])


def _mistyped_error(path: str | Path, mistyped: list[dict[str, Any]]) -> ValidationError:
    lines = _csv_lines(path, sorted({i for m in mistyped for i, _ in m["examples"]}))
    parts, details = [], []
    for m in mistyped:
        cells = [{"line": lines.get(i), "value": v} for i, v in m["examples"]]
        shown = "; ".join(f"line {c['line']}: {_short(c['value'])}" for c in cells)
        more = f" (the first {len(cells)} shown)" if m["bad"] > len(cells) else ""
        parts.append(
            f"column {m['column']!r} would be text only because {m['bad']} of its {m['values']} values "
            f"are not {_KIND_WORDS[m['kind']]}{more}: {shown}"
        )
        details.append(
            {"column": m["column"], "expected": m["kind"], "bad": m["bad"], "values": m["values"], "cells": cells}
        )
    columns = [m["column"] for m in mistyped]
    flags = " ".join(f"--text-column {c}" for c in columns)
    return ValidationError(
        f"{Path(path).name}: " + "; ".join(parts) + ". Nothing was uploaded",
        hint=f"clean those cells in the file (leave a cell empty when its value is unknown), or, if the column "
        f"is text, declare it so: {flags} (SDK: text_columns={columns!r}; or a --schema file that gives "
        f'it type "string")',
        details={"mistyped": details},
    )


def _short(value: Any) -> str:
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _csv_lines(path: str | Path, indices: list[int]) -> dict[int, int]:
    """Physical line numbers (from 1, the header is line 1) of data rows `indices` (from 0) of a CSV file
    whose rows all parse; values may hold newlines."""
    names = file_columns(path, "csv")
    wanted, out = set(indices), dict[int, int]()
    row, line = 0, 2
    if not wanted:
        return out
    with closing(read_batches(path, "csv", Schema([Column(n, "string") for n in names]))) as batches:
        for batch in batches:
            nl = np.zeros(batch.num_rows, dtype=np.int64)
            for values in batch.columns:
                nl += pc.fill_null(pc.count_substring(values, "\n"), 0).to_numpy()
            starts = line + np.arange(batch.num_rows) + np.cumsum(nl) - nl
            for i in [i for i in wanted if row <= i < row + batch.num_rows]:
                out[i] = int(starts[i - row])
                wanted.discard(i)
            row, line = row + batch.num_rows, line + batch.num_rows + int(nl.sum())
            if not wanted:
                break
    return out


@dataclass
class Sample:
    """Types inferred from the first rows of a CSV file (`sample_types`)."""

    schema: Schema
    empty: list[str]  # columns with no value in the sample (typed string until a value shows up)
    first: pa.RecordBatch | None  # the first batch, every column as text
    complete: bool  # the sample is the whole file


def sample_types(path: str | Path, *, limit: int | None = None, text_columns: Collection[str] | None = None) -> Sample:
    """Column types of a CSV file inferred from about its first `limit` bytes (SAMPLE_BYTES), in
    whole batches. Read the rest with `read_batches(..., sampled=sample.empty)`, which checks that
    every later value fits the type (and raises TypesChanged where one does not). `text_columns` as
    for `infer_types` (checked on the sample)."""
    limit = SAMPLE_BYTES if limit is None else limit
    names = file_columns(path, "csv")
    inference = _Inference(names)
    first: pa.RecordBatch | None = None
    read = 0

    def seen(done: int) -> None:  # called when the next batch is asked for
        nonlocal read
        read = done

    complete = True
    with closing(read_batches(path, "csv", Schema([Column(n, "string") for n in names]), progress=seen)) as batches:
        for batch in batches:
            if first is not None and read >= limit:  # this batch is checked with the rest
                complete = False
                break
            first = batch if first is None else first
            inference.update(batch)
    schema = inference.schema() if text_columns is None else _declared_text(path, inference, text_columns)
    empty = [n for n in names if not inference.seen[n] and n not in (text_columns or ())]
    return Sample(schema, empty, first, complete)


def infer_schema(path: str | Path, fmt: str | None = None, *, id_column: str | None = None) -> Schema:
    """Types, nullability and summaries of every column (no summary for `id_column`)."""
    from cleanroom.prepare.mock import StatsCollector

    fmt = detect_format(path, fmt)
    types = infer_types(path, fmt)
    summarised = [c for c in types.columns if c.name != id_column]
    stats = StatsCollector(summarised)
    for batch in read_batches(path, fmt, types):
        stats.update(batch)
    return Schema([stats.column(c) if c.name != id_column else c for c in types.columns])


def validate(path: str | Path, schema: Schema, fmt: str | None = None) -> int:
    """Check every row of the file against `schema`; return the row count or raise ValidationError."""
    fmt = detect_format(path, fmt)
    check_columns(file_columns(path, fmt), schema.names)
    return sum(batch.num_rows for batch in read_batches(path, fmt, schema))
