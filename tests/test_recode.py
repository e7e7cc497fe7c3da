"""The runner's per-job codes for `_pid` (cleanroom.runner.recode) and what the sandbox does with them."""

from __future__ import annotations

import hashlib
import io
import secrets
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cleanroom.runner import recode
from cleanroom.sandbox import wire
from cleanroom.sandbox.compute import phase as compute
from cleanroom.sandbox.release import phase as release


def hexes(n: int, seed: int = 0) -> list[str]:
    return [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in range(n)]


def arrow(df: pd.DataFrame, pid_type: pa.DataType = pa.string(), batch: int | None = None) -> bytes:
    """An input as the API holds it: an Arrow IPC stream (zstd), in batches of `batch` rows."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.set_column(
        table.schema.get_field_index("_pid"),
        pa.field("_pid", pid_type, nullable=False),
        table.column("_pid").cast(pid_type),
    )
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        for part in table.to_batches(max_chunksize=batch):
            writer.write_batch(part)
    return sink.getvalue()


def read(data: bytes) -> pa.Table:
    with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
        return reader.read_all()


def inputs(n: int = 500, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two inputs that share most units; the first has some units on several rows."""
    rng = np.random.default_rng(seed)
    pool = hexes(int(n * 1.3), seed)
    left_ids = list(rng.choice(pool[:n], size=n, replace=True))  # repeats: a unit's many purchases
    right_ids = pool[int(n * 0.3) :]
    left = pd.DataFrame(
        {"_pid": left_ids, "spend": rng.gamma(3, 100, n).round(2), "region": rng.choice(["north", "south"], n)}
    )
    right = pd.DataFrame({"_pid": right_ids, "age": rng.integers(18, 90, len(right_ids))})
    return left, right


def assert_consistent(before: list[pd.Series], after: list[np.ndarray]) -> None:
    """Equal pseudonyms have equal codes and different ones different codes, across all inputs."""
    pairs = pd.DataFrame(
        {"pid": pd.concat(before, ignore_index=True).astype(str), "code": np.concatenate(after)}
    ).drop_duplicates()
    assert not pairs["pid"].duplicated().any() and not pairs["code"].duplicated().any()
    assert sorted(pairs["code"]) == list(range(len(pairs)))  # 0..m-1, m distinct pseudonyms


@pytest.mark.parametrize("batch", [None, 37])
def test_codes_are_int64_consistent_across_inputs_and_the_rest_is_unchanged(batch: int | None) -> None:
    left, right = inputs()
    out = recode.recode_inputs({"inputs/0.arrow": arrow(left, batch=batch), "inputs/1.arrow": arrow(right)})
    assert list(out) == ["inputs/0.arrow", "inputs/1.arrow"]
    tables = [read(out["inputs/0.arrow"]), read(out["inputs/1.arrow"])]
    for table, df in zip(tables, (left, right), strict=True):
        assert table.schema.field("_pid").type == pa.int64() and not table.schema.field("_pid").nullable
        assert table.column_names == list(df.columns)
        assert table.drop(["_pid"]).to_pandas().equals(df.drop(columns="_pid"))
    assert_consistent([left["_pid"], right["_pid"]], [t.column("_pid").to_numpy() for t in tables])
    # the sandbox joins on the codes exactly as it joined on the pseudonyms
    by_hex = compute.join({"a": left, "b": right})
    by_code = compute.join(
        {"a": wire.frame_from_bytes(out["inputs/0.arrow"]), "b": wire.frame_from_bytes(out["inputs/1.arrow"])}
    )
    assert by_code["_pid"].dtype == np.int64 and len(by_code) == len(by_hex)
    assert by_code.drop(columns="_pid").equals(by_hex.drop(columns="_pid"))


def test_codes_are_fresh_per_job_and_do_not_follow_the_pseudonyms_order() -> None:
    left, right = inputs(2000)
    data = {"a": arrow(left), "b": arrow(right)}
    taken = dict(data)
    first = read(recode.recode_inputs(taken)["a"]).column("_pid").to_numpy()
    assert taken == {}  # the plaintext streams are handed over, so that they can be freed early
    second = read(recode.recode_inputs(dict(data))["a"]).column("_pid").to_numpy()
    assert (first != second).mean() > 0.9  # another job, other codes for the same units
    # neither the pseudonyms' sort order nor their order of appearance shows in the codes
    units = pd.DataFrame({"pid": left["_pid"], "code": first}).drop_duplicates()
    rank = units["pid"].rank().to_numpy()
    assert abs(np.corrcoef(rank, units["code"].to_numpy())[0, 1]) < 0.2
    assert abs(np.corrcoef(np.arange(len(units)), units["code"].to_numpy())[0, 1]) < 0.2
    # with a given generator the codes are reproducible (tests only; jobs draw a fresh seed)
    fixed = [
        read(recode.recode_inputs(dict(data), rng=np.random.default_rng(7))["a"]).column("_pid").to_numpy()
        for _ in range(2)
    ]
    assert (fixed[0] == fixed[1]).all()


@pytest.mark.parametrize(
    "case", ["short ids", "upper case", "shared prefix", "large_string", "mixed types", "one long id"]
)
def test_other_pseudonyms_take_the_exact_path(case: str) -> None:
    left, right = inputs(300)
    types = [pa.string(), pa.string()]
    if case == "short ids":
        left["_pid"] = left["_pid"].str[:10]
        right["_pid"] = right["_pid"].str[:10]
    elif case == "upper case":
        right["_pid"] = right["_pid"].str.upper()  # other units than the lower-case ones
    elif case == "shared prefix":  # the same first 16 characters, different pseudonyms: never merged
        right.loc[0, "_pid"] = left.loc[0, "_pid"][:16] + "0" * 48
        right.loc[1, "_pid"] = left.loc[0, "_pid"][:16] + "f" * 48
    elif case == "large_string":
        types = [pa.large_string(), pa.large_string()]
    elif case == "mixed types":
        types = [pa.string(), pa.large_string()]
    elif case == "one long id":
        right.loc[0, "_pid"] += "0"
    tables = [recode.read_table(arrow(df, t), name) for df, t, name in zip((left, right), types, "ab", strict=True)]
    out = recode.recode_tables(tables)
    assert_consistent([left["_pid"], right["_pid"]], [t.column("_pid").to_numpy() for t in out])
    chunks = [c for t in tables for c in t.column("_pid").chunks]
    fast = recode._factorize_hex(chunks)
    if case in ("large_string",):
        assert fast is not None  # still hex of the right width: the fast path
    elif case != "mixed types":
        assert fast is None


def test_the_fast_path_matches_arrows_hashing() -> None:
    left, right = inputs(3000, seed=5)
    tables = [recode.read_table(arrow(df, batch=1000), "x") for df in (left, right)]
    fast = recode._factorize_hex([c for t in tables for c in t.column("_pid").chunks])
    exact = recode._factorize_any([t.column("_pid") for t in tables])
    assert fast is not None
    assert fast[1] == exact[1] and (fast[0] == exact[0]).all()


def test_an_input_of_pseudonyms_only() -> None:
    left, right = inputs(100)
    out = recode.recode_inputs({"a": arrow(left[["_pid"]]), "b": arrow(right[["age", "_pid"]])})
    tables = [read(out["a"]), read(out["b"])]
    assert tables[0].column_names == ["_pid"] and tables[1].column_names == ["age", "_pid"]
    assert tables[1].column("age").to_pylist() == right["age"].tolist()
    assert_consistent([left["_pid"], right["_pid"]], [t.column("_pid").to_numpy() for t in tables])


def test_sliced_and_empty_inputs() -> None:
    left, right = inputs(200)
    table = pa.Table.from_pandas(left, preserve_index=False).slice(50, 100)  # offsets not starting at 0
    empty = pa.Table.from_pandas(right.iloc[:0], preserve_index=False)
    out = recode.recode_tables([table, empty])
    assert out[0].num_rows == 100 and out[1].num_rows == 0
    assert out[1].schema.field("_pid").type == pa.int64()
    assert_consistent([left["_pid"].iloc[50:150]], [out[0].column("_pid").to_numpy()])
    assert recode.recode_tables([]) == []
    assert recode.recode_tables([empty])[0].num_rows == 0


def bad_streams() -> dict[str, Any]:
    frame = pd.DataFrame({"_pid": hexes(3), "v": [1, 2, 3]})
    nulls = pa.table({"_pid": pa.array(["a", None, "c"]), "v": [1, 2, 3]})
    twice = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["_pid", "_pid"])
    sink = io.BytesIO()
    for table in (nulls,):
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    twice_sink = io.BytesIO()
    with pa.ipc.new_stream(twice_sink, twice.schema) as writer:
        writer.write_table(twice)
    return {
        "not arrow": (b"garbage" * 10, "is not a valid Arrow stream"),
        "truncated": (arrow(frame)[:-40], "is not a valid Arrow stream"),
        "no pid": (arrow(frame).replace(b"_pid", b"_pix"), "has no _pid column"),
        "missing pids": (sink.getvalue(), "has missing _pid values"),
        "two pid columns": (twice_sink.getvalue(), "more than one _pid column"),
    }


@pytest.mark.parametrize("case", list(bad_streams()))
def test_malformed_inputs_are_refused(case: str) -> None:
    data, message = bad_streams()[case]
    with pytest.raises(recode.RecodeError, match=message) as caught:
        recode.recode_inputs({"inputs/0.arrow": data}, {"inputs/0.arrow": "bank.customers"})
    assert "bank.customers" in str(caught.value)


def test_release_counts_units_by_code() -> None:
    """k distinct units, not rows, with integer codes; nothing released holds a code."""
    rng = np.random.default_rng(3)
    units = 400
    codes = rng.permutation(10 * units)[:units]  # arbitrary, sparse codes as a job sends them
    pid = np.repeat(codes, 3)  # three rows per unit
    region = np.repeat(rng.choice(["north", "south"], units), 3)
    region[:27] = "small"  # 9 units on 27 rows: under k=10 units though over k rows
    age = rng.integers(18, 90, len(pid))
    frame = pd.DataFrame(
        {"_pid": pid.astype(np.int64), "age": age, "region": region, "spend": 2 * age + rng.normal(0, 5, len(pid))}
    )
    policy = {
        "k": 10,
        "outputs": ["aggregate", "model"],
        "estimators": ["ridge"],
        "allow_row_storing": False,
        "max_model_bytes": 5_000_000,
        "never_output": [],
        "join_only": [],
        "bounds": {},
        "require_dp": False,
    }
    request = {
        "job_id": "job-1",
        "policy": policy,
        "outputs": {"model": True, "metrics": True, "aggregates": True, "seed": 0},
        "model_spec": {
            "estimator": "ridge",
            "params": {},
            "target": "spend",
            "features": ["age"],
            "task": "regression",
        },
        "analysis_specs": [{"name": "t", "group_by": ["region"], "metrics": [{"agg": "count"}]}],
        "dp": {},
        "names": {"schemas": {"x": {c: ["north", "south", "small"] for c in frame.columns}}, "job_strings": []},
        "table_names": ["by_region"],
    }
    meta, artifacts = release.run(request, {release.FRAME: wire.frame_to_bytes(frame)})
    assert meta["ok"], meta["error"]
    table = pd.read_csv(io.BytesIO(artifacts["artifacts/aggregates/by_region.csv"]))
    assert sorted(table["region"]) == ["north", "south"]  # "small" has 27 rows but 9 units
    assert "_pid" not in table.columns
    for name, data in artifacts.items():
        assert b"_pid" not in data, name
        for code in codes[:50]:
            assert f'"{code}"'.encode() not in data and f",{code}\n".encode() not in data
    read_back = release._read_frame({release.FRAME: wire.frame_to_bytes(frame)})
    assert read_back["_pid"].dtype == np.int64  # counted as they are, not as text


def test_text_pseudonyms_still_work_in_the_release() -> None:
    frame = pd.DataFrame({"_pid": [secrets.token_hex(32) for _ in range(3)], "v": [1.0, 2.0, 3.0]})
    read_back = release._read_frame({release.FRAME: wire.frame_to_bytes(frame)})
    assert read_back["_pid"].tolist() == frame["_pid"].tolist()


def test_decoded_size_is_read_from_the_metadata_before_decoding() -> None:
    left, _ = inputs(3000)
    for compression in ("zstd", "lz4", None):
        table = pa.Table.from_pandas(left, preserve_index=False)
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
            for part in table.to_batches(max_chunksize=700):
                writer.write_batch(part)
        declared = recode.decoded_size(sink.getvalue(), "x")
        assert abs(declared - read(sink.getvalue()).nbytes) <= 64 * 5 * 5  # padding only


def bomb(claim: int | None = None) -> bytes:
    """Kilobytes of zstd that decode to 64 MB of zeros, or whose buffers claim `claim` bytes each."""
    rows = 4_000_000
    table = pa.table({"_pid": pa.array(np.zeros(rows, dtype=np.int64)), "v": pa.array(np.zeros(rows))})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    data = sink.getvalue()
    if claim is not None:  # each compressed buffer starts with its decompressed length: lie about it
        data = data.replace((8 * rows).to_bytes(8, "little"), claim.to_bytes(8, "little"))
    return data


@pytest.mark.parametrize("claim", [None, 2**40])
def test_a_decompression_bomb_is_refused_before_it_is_decoded(claim: int | None) -> None:
    data = bomb(claim)
    assert len(data) < 100_000 and recode.decoded_size(data, "x") >= 64_000_000
    with pytest.raises(recode.TooLarge, match="decode to more than 50000000 bytes") as caught:
        recode.recode_inputs({"in": data}, {"in": "bank.customers"}, max_bytes=50_000_000)
    assert "bank.customers" in str(caught.value)
    if claim is None:
        out = recode.recode_inputs({"in": data}, max_bytes=2**30)["in"]
        assert read(out).num_rows == 4_000_000
    else:
        assert recode.decoded_size(data, "x") >= 2**40
        with pytest.raises(recode.RecodeError):  # and Arrow would refuse it too
            recode.recode_inputs({"in": data})


def test_malformed_metadata_is_refused() -> None:
    data = bytearray(arrow(pd.DataFrame({"_pid": hexes(3), "v": [1, 2, 3]})))
    schema_end = data.index(b"\xff\xff\xff\xff", 8)  # the record batch message after the schema
    data[schema_end + 8 : schema_end + 12] = b"\x7f\x7f\x7f\x7f"  # its flatbuffer's root offset
    with pytest.raises(recode.RecodeError, match="not a valid Arrow stream"):
        recode.decoded_size(bytes(data), "x")
