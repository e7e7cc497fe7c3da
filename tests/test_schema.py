"""Schema inference, summaries, override files and row validation, on real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleanroom.errors import ValidationError
from cleanroom.prepare.schema import (
    TypesChanged,
    detect_format,
    file_columns,
    infer_schema,
    infer_types,
    read_batches,
    sample_types,
    validate,
)
from cleanroom.published import Column, Schema, load_schema_file

CANARY = "Zebulon-Canary-7731"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def types_of(schema: Schema) -> dict[str, str]:
    return {c.name: c.type for c in schema.columns}


def test_infers_every_type_from_csv(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.csv",
        "n,x,flag,day,at,at_tz,zip,word,empty\n"
        "1,1.5,true,2021-01-02,2021-01-02T10:00:00,2021-01-02T10:00:00Z,02139,a,\n"
        "-2,3,FALSE,2021-12-31,2021-12-31 23:59:59.25,2021-12-31T23:59:59+02:00,10001,b,\n"
        ",1e3,,,,,,,\n",
    )
    schema = infer_types(path)
    assert types_of(schema) == {
        "n": "integer",
        "x": "number",
        "flag": "boolean",
        "day": "date",
        "at": "datetime",
        "at_tz": "datetime",
        "zip": "string",
        "word": "string",
        "empty": "string",
    }
    assert schema.column("at_tz").timezone == "UTC" and schema.column("at").timezone is None


def test_inference_sees_the_whole_file_not_the_first_block(tmp_path: Path) -> None:
    rows = [f"{i},{i},2021-01-01" for i in range(200_000)]
    rows[-1] = "7,7.25,2021-02-30"  # a fraction and an impossible date, far past the first batch
    path = write(tmp_path / "late.csv", "a,b,c\n" + "\n".join(rows) + "\n")
    assert types_of(infer_types(path)) == {"a": "integer", "b": "number", "c": "string"}


def test_leading_zeros_and_huge_integers_stay_text(tmp_path: Path) -> None:
    path = write(tmp_path / "z.csv", "zip,big\n00501,123456789012345678901\n12345,1\n")
    assert types_of(infer_types(path)) == {"zip": "string", "big": "number"}


def test_summaries_of_numbers_dates_and_booleans(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 90, 5000),
            "spend": rng.normal(100, 20, 5000).round(3),
            "ok": rng.random(5000) < 0.3,
            "day": pd.to_datetime("2020-01-01") + pd.to_timedelta(rng.integers(0, 366, 5000), "D"),
        }
    )
    frame.loc[::10, "spend"] = np.nan
    path = tmp_path / "s.csv"
    frame.assign(day=frame["day"].dt.strftime("%Y-%m-%d")).to_csv(path, index=False)
    schema = infer_schema(path)
    age, spend, ok, day = (schema.column(n) for n in ("age", "spend", "ok", "day"))
    assert (age.stats["min"], age.stats["max"]) == (frame["age"].min(), frame["age"].max())
    assert age.stats["mean"] == pytest.approx(frame["age"].mean(), rel=1e-5)
    assert age.stats["std"] == pytest.approx(frame["age"].std(ddof=0), rel=1e-5)
    assert spend.nullable and spend.stats["null_fraction"] == pytest.approx(0.1)
    assert spend.stats["mean"] == pytest.approx(frame["spend"].mean(), rel=1e-5)
    assert not age.nullable and age.stats["null_fraction"] == 0
    assert ok.stats["true_fraction"] == pytest.approx(frame["ok"].mean(), abs=1e-6)
    assert day.stats["min"] == frame["day"].min().date().isoformat()
    assert day.stats["max"] == frame["day"].max().date().isoformat()


def test_only_frequent_categories_are_kept(tmp_path: Path) -> None:
    values = ["north"] * 40 + ["south"] * 20 + ["east"] * 19 + [CANARY] + [f"user{i}" for i in range(500)]
    path = tmp_path / "c.csv"
    pd.DataFrame({"region": values}).to_csv(path, index=False)
    stats = infer_schema(path).column("region").stats
    assert stats["categories"] == {"north": 40, "south": 20}
    assert stats["other_fraction"] == pytest.approx(1 - 60 / len(values), abs=1e-6)
    assert CANARY not in json.dumps(infer_schema(path).to_dict())


def test_category_counts_stay_bounded_on_high_cardinality(tmp_path: Path) -> None:
    values = [f"v{i}" for i in range(150_000)] + ["common"] * 30
    path = tmp_path / "h.csv"
    pd.DataFrame({"v": values}).to_csv(path, index=False)
    categories = infer_schema(path).column("v").stats["categories"]
    assert list(categories) == ["common"] and 20 <= categories["common"] <= 30


def test_no_summary_for_the_id_column(tmp_path: Path) -> None:
    path = tmp_path / "i.csv"
    pd.DataFrame({"cid": [CANARY] * 30 + ["x"] * 30, "v": range(60)}).to_csv(path, index=False)
    schema = infer_schema(path, id_column="cid")
    assert schema.column("cid").stats is None
    assert CANARY not in json.dumps(schema.to_dict())


def test_parquet_types_and_summaries(tmp_path: Path) -> None:
    table = pa.table(
        {
            "i": pa.array([1, 2, None], pa.int32()),
            "f": [0.5, 1.5, 2.5],
            "s": pa.array(["a", "b", "a"]).dictionary_encode(),
            "b": [True, False, True],
            "d": pa.array([18000, 18001, 18002], pa.date32()),
            "t": pa.array([0, 10**9, 2 * 10**9], pa.timestamp("ns", tz="Europe/Berlin")),
        }
    )
    path = tmp_path / "p.parquet"
    pq.write_table(table, path)
    schema = infer_schema(path)
    assert types_of(schema) == {
        "i": "integer",
        "f": "number",
        "s": "string",
        "b": "boolean",
        "d": "date",
        "t": "datetime",
    }
    assert schema.column("i").nullable and schema.column("i").stats["max"] == 2
    assert schema.column("t").timezone == "UTC"


def test_unsupported_parquet_type(tmp_path: Path) -> None:
    path = tmp_path / "l.parquet"
    pq.write_table(pa.table({"l": [[1, 2], [3]]}), path)
    with pytest.raises(ValidationError, match="'l' has Arrow type"):
        infer_types(path)


def test_schema_round_trip_and_refusals() -> None:
    schema = Schema([Column("a", "integer", False, stats={"min": 1}), Column("t", "datetime", True, "UTC")])
    assert Schema.from_dict(json.loads(json.dumps(schema.to_dict()))) == schema
    for bad in (
        {},
        {"columns": []},
        {"columns": [{"name": "a", "type": "blob"}]},
        {"columns": [{"name": "", "type": "string"}]},
        {"columns": [{"name": "a", "type": "string"}, {"name": "a", "type": "integer"}]},
        {"columns": [{"name": "a", "type": "string", "nullable": "yes"}]},
        {"columns": [{"name": "a", "type": "date", "timezone": "UTC"}]},
    ):
        with pytest.raises(ValidationError):
            Schema.from_dict(bad)


def test_load_schema_file_json_and_toml(tmp_path: Path) -> None:
    js = write(tmp_path / "s.json", json.dumps({"columns": [{"name": "zip", "type": "string"}]}))
    toml = write(
        tmp_path / "s.toml",
        '[[columns]]\nname = "zip"\ntype = "string"\n[columns.stats]\ncategories = { "10001" = 25 }\n',
    )
    assert load_schema_file(js).column("zip").type == "string"
    assert load_schema_file(toml).column("zip").stats == {"categories": {"10001": 25}}
    with pytest.raises(ValidationError, match="line 2"):
        load_schema_file(write(tmp_path / "bad.toml", "[[columns]]\nname = \n"))
    with pytest.raises(ValidationError, match="cannot read"):
        load_schema_file(tmp_path / "missing.json")


def test_formats_and_headers(tmp_path: Path) -> None:
    assert detect_format("x.CSV") == "csv" and detect_format("x.pq") == "parquet"
    assert detect_format("x.dat", "csv") == "csv"
    with pytest.raises(ValidationError, match="extension"):
        detect_format("x.xlsx")
    with pytest.raises(ValidationError, match="appears twice"):
        file_columns(write(tmp_path / "d.csv", "a,b,a\n1,2,3\n"))
    with pytest.raises(ValidationError, match="no CSV header"):
        file_columns(write(tmp_path / "e.csv", ""))


def test_violations_name_lines_columns_and_kinds_never_values(tmp_path: Path) -> None:
    lines = [
        "id,age,day",
        '1,30,"2020-01-01"',
        f'2,"{CANARY}\nspans lines",2020-01-02',
        "3,41,2020-01-03",
        f"4,{CANARY},2020-02-30",
        "5,12.5,2020-01-05",
        "6,7",
        "7,8,2020-01-07",
    ]
    path = write(tmp_path / "v.csv", "\n".join(lines) + "\n")
    schema = Schema([Column("id", "integer"), Column("age", "integer"), Column("day", "date")])
    with pytest.raises(ValidationError) as info:
        validate(path, schema)
    err = info.value
    got = [(v["line"], v["column"], v["got"]) for v in err.details["violations"]]
    assert got == [
        (3, "age", "text"),
        (6, "age", "text"),
        (6, "day", "an invalid date"),
        (7, "age", "a number"),
        (8, None, "2 fields"),
    ]
    assert "line 3: column 'age' expected integer, got text" in err.message
    assert CANARY not in err.message and CANARY not in json.dumps(err.to_dict())


def test_non_nullable_columns_refuse_gaps(tmp_path: Path) -> None:
    path = write(tmp_path / "n.csv", "a,b\n1,x\n2,\n3,y\n")
    with pytest.raises(ValidationError, match="line 3: column 'b' expected string, got an empty value"):
        validate(path, Schema([Column("a", "integer"), Column("b", "string", nullable=False)]))
    assert validate(path, Schema([Column("a", "integer"), Column("b", "string")])) == 3


def test_only_the_first_ten_violations_are_listed(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "a\n" + "\n".join(["x"] * 5000 + ["1"] * 100_000) + "\n")
    with pytest.raises(ValidationError) as info:
        validate(path, Schema([Column("a", "integer")]))
    assert [v["line"] for v in info.value.details["violations"]] == list(range(2, 12))
    assert info.value.details["more"] is True and "the first 10 of more" in info.value.message


def test_columns_must_match_the_schema(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "a,b\n1,2\n")
    with pytest.raises(ValidationError, match=r"missing \['c'\], not in the schema \['b'\]"):
        validate(path, Schema([Column("a", "integer"), Column("c", "integer")]))


def test_parquet_violations_name_rows(tmp_path: Path) -> None:
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"x": [1.0, 2.0, 2.5, None]}), path)
    with pytest.raises(ValidationError) as info:
        validate(path, Schema([Column("x", "integer", nullable=False)]))
    assert [(v["row"], v["got"]) for v in info.value.details["violations"]] == [(3, "a number"), (4, "an empty value")]
    assert "row 3: column 'x' expected integer, got a number" in info.value.message


def test_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("a,b\n1,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValidationError, match="not UTF-8"):
        infer_types(path)


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    from cleanroom.prepare import schema

    monkeypatch.setattr(schema, "BATCH_ROWS", 40)
    monkeypatch.setattr(schema, "CSV_BLOCK", 1 << 12)


def test_types_from_a_sample_then_checked_on_every_row(tmp_path: Path, small_batches: None) -> None:
    rows = [f"{i},{i / 4},2021-01-{1 + i % 28:02d},,x{i}" for i in range(2000)]
    path = write(tmp_path / "s.csv", "n,x,d,later,s\n" + "\n".join(rows) + "\n")
    whole = sample_types(path, limit=10**9)
    assert whole.complete and whole.schema == infer_types(path)
    sample = sample_types(path, limit=0)  # the first batch only
    assert not sample.complete and sample.empty == ["later"] and sample.first is not None
    assert sample.first.num_rows < 2000 and sample.first.column("n").type == pa.string()
    assert types_of(sample.schema) == {"n": "integer", "x": "number", "d": "date", "later": "string", "s": "string"}
    got = pa.Table.from_batches(list(read_batches(path, "csv", sample.schema, sampled=sample.empty)))
    typed = pa.Table.from_batches(list(read_batches(path, "csv", infer_types(path))))
    assert got.equals(typed)


@pytest.mark.parametrize(
    ("line", "column"),
    [
        ("7.5,7,2021-01-01,,x", "n"),
        ("7,7,2021-02-30,,x", "d"),
        ("7,7,2021-01-01,3,x", "later"),
        ("007,7,2021-01-01,,x", "n"),
    ],
)
def test_a_later_value_of_another_type_raises_types_changed(
    tmp_path: Path, small_batches: None, line: str, column: str
) -> None:
    rows = [f"{i},{i},2021-01-01,,x" for i in range(2000)]
    rows[1900] = line
    path = write(tmp_path / "t.csv", "n,x,d,later,s\n" + "\n".join(rows) + "\n")
    sample = sample_types(path, limit=0)
    with pytest.raises(TypesChanged) as info:
        for _ in read_batches(path, "csv", sample.schema, sampled=sample.empty):
            pass
    assert info.value.column == column


def test_rows_that_do_not_fit_a_sampled_schema_name_lines_not_types(tmp_path: Path, small_batches: None) -> None:
    rows = [f"{i},{i}" for i in range(2000)]
    rows[1500] = ",3"
    path = write(tmp_path / "n.csv", "id,n\n" + "\n".join(rows) + "\n")
    sample = sample_types(path, limit=0)
    schema = Schema([Column("id", "integer", nullable=False), Column("n", "integer")])
    with pytest.raises(ValidationError) as info:
        list(read_batches(path, "csv", schema, sampled=sample.empty))
    assert info.value.details["violations"] == [
        {"line": 1502, "column": "id", "expected": "string", "got": "an empty value"}
    ]


@pytest.mark.slow  # value by value over many types
def test_checking_a_sampled_type_agrees_with_inference_value_by_value() -> None:
    """`read_batches(sampled=...)` decides with cheaper checks than inference's patterns; never otherwise."""
    import random

    from cleanroom.prepare.schema import _candidate_ok, _strict_cast

    rng = random.Random(7)
    tricky = [
        "0",
        "-0",
        "00",
        "007",
        "-007",
        "+5",
        "0x10",
        "1e3",
        "12",
        "-12",
        "999999999999999999",
        "-999999999999999999",
        "1000000000000000000",
        "-1000000000000000000",
        "9223372036854775807",
        "2021-01-01",
        "2021-02-30",
        "0001-01-01",
        "2021-1-01",
        "20210101",
        "1.5",
        " 1",
        "1 ",
        "",
        "-",
        "true",
        "TRUE",
        "yes",
        "2021-01-01T10:00",
        "2021-01-01 10:00:00.5",
        "2021-01-01T10:00Z",
        "٣",
    ]
    alphabet = "0123456789-+.:eExTZ "
    values = tricky + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20))) for _ in range(3000)]
    values += [f"{rng.randint(1, 9999):04d}-{rng.randint(0, 13):02d}-{rng.randint(0, 32):02d}" for _ in range(500)]
    values += [str(rng.randint(-(10**19), 10**19)) for _ in range(500)]
    for col in (
        Column("c", "integer"),
        Column("c", "number"),
        Column("c", "boolean"),
        Column("c", "date"),
        Column("c", "datetime"),
        Column("c", "datetime", timezone="UTC"),
    ):
        kind = "datetime_tz" if col.timezone else col.type
        for value in values:
            strict = _candidate_ok(kind, pa.array([value]))
            try:
                got = _strict_cast(pa.array([value, None]), col)
            except TypesChanged:
                assert not strict, (col, value)
            else:
                assert strict, (col, value)
                assert got.type == col.arrow_type() and got.null_count == 1
