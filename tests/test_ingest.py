"""Preparing data on the owner's machine: round trips, pseudonyms, canaries, tampering, refusals, memory."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from cleanroom.crypto import KeyPair, encrypt_bytes, generate_keypair
from cleanroom.errors import Conflict, IntegrityError, NotFound, ValidationError
from cleanroom.prepare.ingest import (
    PreparedDataset,
    decrypt_dataset,
    decrypt_table,
    load_join_secret,
    new_join_secret,
    pid_array,
    prepare,
    pseudonym,
    save_join_secret,
)
from cleanroom.published import Column, Schema

SECRET = bytes(range(32))
CANARY_ID = "CANARY-ID-90210"
CANARY_EMAIL = "canary.person@example.org"
CANARY_TEXT = "Canary-Rare-Remark-555"


def stand_in_identifier(name: str) -> str | None:
    """A small stand-in for cleanroom.policy.looks_like_identifier."""
    words = (("email", "an e-mail address"), ("name", "a person's name"), ("phone", "a phone number"))
    for word, reason in words:
        if word in name.lower():
            return reason
    return None


class StandInPolicy:
    def __init__(self, allow: list[str]) -> None:
        self.allow = allow

    def to_dict(self) -> dict[str, Any]:
        return {"identifiers": {"allow": self.allow}}


@pytest.fixture(scope="module")
def keys() -> KeyPair:
    return generate_keypair()


def people(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "customer": [f"C{i:05d}" for i in range(n)],
            "email": [f"person{i}@example.com" for i in range(n)],
            "full_name": [f"Person {i}" for i in range(n)],
            "age": rng.integers(18, 90, n).astype("int64"),
            "spend": rng.normal(100, 30, n).round(2),
            "member": rng.random(n) < 0.5,
            "region": rng.choice(["north", "south"], n),
            "day": [dt.date(2021, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 365, n)],
            "at": (pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 10**7, n), "s")).astype(
                "datetime64[us]"
            ),
        }
    )
    frame.loc[3, "spend"] = np.nan
    return frame


def run(path: Path, keys: KeyPair, tmp_path: Path, **kw: Any) -> PreparedDataset:
    kw.setdefault("identifier_check", stand_in_identifier)
    kw.setdefault("id_column", "customer")
    kw.setdefault("join_secret", SECRET)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return prepare(path, recipient=keys.enc_public, workdir=work, **kw)


def expected_frame(frame: pd.DataFrame, id_column: str = "customer") -> pd.DataFrame:
    out = frame.drop(columns=[id_column, "email", "full_name"])
    out.insert(0, "_pid", [pseudonym(str(v), SECRET) for v in frame[id_column]])
    return out


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    for name in want.columns:  # column by column: pandas' string dtypes differ between versions
        if want[name].dtype == object or pd.api.types.is_string_dtype(want[name]):
            assert list(got[name]) == list(want[name]), name
        else:
            pd.testing.assert_series_equal(got[name], want[name], check_names=False)


def test_csv_round_trip_is_exact(tmp_path: Path, keys: KeyPair) -> None:
    frame = people()
    path = tmp_path / "people.csv"
    frame.to_csv(path, index=False)
    with run(path, keys, tmp_path) as prepared:
        assert prepared.row_count == len(frame) and prepared.dropped == ["email", "full_name"]
        assert prepared.ciphertext_path.read_bytes().startswith(b"age-encryption.org/v1\n")
        got = decrypt_dataset(prepared.ciphertext_path.read_bytes(), keys)
        assert_same(got, expected_frame(frame))
        assert got.dtypes["age"] == np.int64 and got.dtypes["member"] == np.bool_
        assert got.dtypes["at"] == "datetime64[us]"
        assert prepared.schema.names == list(got.columns)
        assert prepared.schema.column("spend").nullable and not prepared.schema.column("age").nullable
        assert list(prepared.mock.columns) == list(got.columns)
    assert not prepared.ciphertext_path.exists()


def test_the_sandbox_reads_what_the_runner_decrypts(tmp_path: Path, keys: KeyPair) -> None:
    from cleanroom.crypto import decrypt_bytes
    from cleanroom.sandbox.wire import frame_from_bytes

    frame = people(100)
    path = tmp_path / "w.csv"
    frame.to_csv(path, index=False)
    ciphertext = run(path, keys, tmp_path).ciphertext_path.read_bytes()
    assert_same(frame_from_bytes(decrypt_bytes(ciphertext, keys)), expected_frame(frame))


def test_parquet_round_trip_is_exact(tmp_path: Path, keys: KeyPair) -> None:
    frame = people(seed=1)
    path = tmp_path / "people.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=100)
    prepared = run(path, keys, tmp_path, compression=None)
    with open(prepared.ciphertext_path, "rb") as f:
        assert_same(decrypt_dataset(f, keys), expected_frame(frame))
    prepared.cleanup()


def test_same_raw_id_and_secret_give_the_same_pid_across_files(tmp_path: Path, keys: KeyPair) -> None:
    a = pd.DataFrame({"cid": [17, 23, 99], "x": [1, 2, 3]})
    b = pd.DataFrame({"cid": ["99", "17", "5"], "y": ["p", "q", "r"]})
    a.to_csv(tmp_path / "a.csv", index=False)
    pq.write_table(pa.Table.from_pandas(b, preserve_index=False), tmp_path / "b.parquet")
    pids = {}
    for name in ("a.csv", "b.parquet"):
        prepared = run(tmp_path / name, keys, tmp_path, id_column="cid")
        table = decrypt_table(prepared.ciphertext_path.read_bytes(), keys)
        pids[name] = table["_pid"].to_pylist()
    assert pids["a.csv"][0] == pids["b.parquet"][1] and pids["a.csv"][2] == pids["b.parquet"][0]
    assert pids["a.csv"][0] == pseudonym("17", SECRET)
    other = run(tmp_path / "a.csv", keys, tmp_path, id_column="cid", join_secret=b"another secret 16b")
    assert decrypt_table(other.ciphertext_path.read_bytes(), keys)["_pid"][0].as_py() != pids["a.csv"][0]


def test_canaries_appear_nowhere_outside_the_ciphertext(tmp_path: Path, keys: KeyPair) -> None:
    frame = people(400)
    frame.loc[:29, "customer"] = CANARY_ID  # frequent enough to be a category, were it summarised
    frame.loc[7, "email"] = CANARY_EMAIL
    frame["remark"] = ["common"] * 399 + [CANARY_TEXT]
    path = tmp_path / "c.csv"
    frame.to_csv(path, index=False)
    prepared = run(path, keys, tmp_path)
    ciphertext = prepared.ciphertext_path.read_bytes()
    mock = prepared.mock.to_json(date_format="iso")
    public = json.dumps(prepared.metadata()) + json.dumps(prepared.dropped_reasons) + mock
    for canary in (CANARY_ID, CANARY_EMAIL, CANARY_TEXT):
        assert canary.encode() not in ciphertext and canary not in public
    assert "customer" not in prepared.schema.names and "_pid" in prepared.schema.names
    assert os.listdir(tmp_path / "work") == [prepared.ciphertext_path.name]  # ciphertext only
    plain = decrypt_table(ciphertext, keys)
    assert "customer" not in plain.column_names and "email" not in plain.column_names
    assert CANARY_ID not in plain.to_pandas().to_csv() and CANARY_TEXT in plain["remark"].to_pylist()


def test_tampering_truncation_and_wrong_keys(tmp_path: Path, keys: KeyPair) -> None:
    path = tmp_path / "t.csv"
    people(2000).to_csv(path, index=False)
    good = run(path, keys, tmp_path).ciphertext_path.read_bytes()
    assert len(decrypt_dataset(good, keys)) == 2000
    for at in (30, len(good) // 2, len(good) - 5):
        flipped = bytearray(good)
        flipped[at] ^= 0x01
        with pytest.raises(IntegrityError):
            decrypt_dataset(bytes(flipped), keys)
    for cut in (0, 20, len(good) // 3, len(good) - 1):
        with pytest.raises(IntegrityError):
            decrypt_dataset(good[:cut], keys)
    with pytest.raises(IntegrityError, match="not encrypted to this key"):
        decrypt_dataset(good, generate_keypair())
    with pytest.raises(IntegrityError, match="not a valid Arrow stream"):
        decrypt_dataset(encrypt_bytes(b"not an arrow stream", [keys.enc_public]), keys)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, pa.schema([("x", pa.int64())])) as writer:
        writer.write_batch(pa.record_batch({"x": [1]}))
    with pytest.raises(IntegrityError, match="no _pid"):
        decrypt_dataset(encrypt_bytes(sink.getvalue(), [keys.enc_public]), keys)


def test_rows_that_do_not_fit_name_their_lines_and_leave_nothing(tmp_path: Path, keys: KeyPair) -> None:
    frame = people(200_000)
    frame["age"] = frame["age"].astype(str)
    frame.loc[150_000, "age"] = CANARY_TEXT
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    schema = Schema([Column(n, "string") for n in frame.columns])
    schema.column("age").type = "integer"
    with pytest.raises(ValidationError) as info:
        run(path, keys, tmp_path, schema_override=schema)
    assert "line 150002: column 'age' expected integer, got text" in info.value.message
    assert CANARY_TEXT not in json.dumps(info.value.to_dict())
    assert os.listdir(tmp_path / "work") == []


def test_missing_ids_are_refused(tmp_path: Path, keys: KeyPair) -> None:
    path = tmp_path / "n.csv"
    path.write_text("customer,x\nA,1\n,2\nC,3\n")
    with pytest.raises(ValidationError, match="line 3: column 'customer' expected string, got an empty"):
        run(path, keys, tmp_path)


def test_identifier_columns_refused_or_allowed_by_policy(tmp_path: Path, keys: KeyPair) -> None:
    path = tmp_path / "p.csv"
    people(50).to_csv(path, index=False)
    with pytest.raises(ValidationError) as info:
        run(path, keys, tmp_path, drop_identifiers=False)
    assert "'email' (an e-mail address)" in info.value.message and "'full_name'" in info.value.message
    assert info.value.details == {"identifiers": {"email": "an e-mail address", "full_name": "a person's name"}}
    assert os.listdir(tmp_path / "work") == []
    kept = run(path, keys, tmp_path, policy=StandInPolicy(["full_name"]))
    assert kept.dropped == ["email"] and "full_name" in kept.schema.names
    with pytest.raises(ValidationError, match="'email'"):
        run(path, keys, tmp_path, policy={"identifiers": {"allow": ["full_name"]}}, drop_identifiers=False)


def test_with_the_real_identifier_rules_and_policy(tmp_path: Path, keys: KeyPair) -> None:
    policy_module = pytest.importorskip("cleanroom.policy")
    path = tmp_path / "r.csv"
    people(50).assign(zip=["02139"] * 50).to_csv(path, index=False)
    policy = policy_module.parse_policy('[identifiers]\nallow = ["zip"]\n')
    prepared = run(path, keys, tmp_path, identifier_check=None, policy=policy)
    assert {"email", "full_name"} <= set(prepared.dropped) and "zip" in prepared.schema.names
    assert decrypt_dataset(prepared.ciphertext_path.read_bytes(), keys)["zip"][0] == "02139"


def test_email_values_under_an_innocent_name_are_dropped(tmp_path: Path, keys: KeyPair) -> None:
    path = tmp_path / "e.csv"
    pd.DataFrame({"customer": ["a", "b", "c"], "contact": ["x@y.com", "p@q.org", None], "v": [1, 2, 3]}).to_csv(
        path, index=False
    )
    prepared = run(path, keys, tmp_path)
    assert prepared.dropped_reasons == {"contact": "its values look like e-mail addresses"}


def test_reserved_and_missing_columns(tmp_path: Path, keys: KeyPair) -> None:
    path = tmp_path / "r.csv"
    path.write_text("customer,_secret\n1,2\n")
    with pytest.raises(ValidationError, match="reserved"):
        run(path, keys, tmp_path)
    with pytest.raises(ValidationError, match="no id column 'cid'"):
        run(path, keys, tmp_path, id_column="cid")


def test_schema_override_types_and_published_summaries(tmp_path: Path, keys: KeyPair) -> None:
    path = tmp_path / "o.csv"
    path.write_text("customer,zip,score\nA,02139,1\nB,10001,2\n")
    override = {
        "columns": [
            {"name": "customer", "type": "string"},
            {"name": "zip", "type": "string", "stats": {}},
            {"name": "score", "type": "number"},
        ]
    }
    prepared = run(path, keys, tmp_path, schema_override=override)
    assert prepared.schema.column("zip").stats == {}  # written by hand: published as written
    # computed from the rows: a suggestion for the owner only; the room gets what the policy declares
    assert prepared.suggested is not None and prepared.suggested.column("score").stats["max"] == 2.0
    assert prepared.schema.column("score").stats == {"declared": True}
    bounded = run(path, keys, tmp_path, schema_override=override, policy={"columns": {"score": {"bounds": [0, 5]}}})
    assert bounded.schema.column("score").stats == {"declared": True, "min": 0.0, "max": 5.0}
    got = decrypt_dataset(prepared.ciphertext_path.read_bytes(), keys)
    assert list(got["zip"]) == ["02139", "10001"] and got["score"].dtype == np.float64
    (tmp_path / "o.json").write_text(json.dumps(override))
    assert run(path, keys, tmp_path, schema_override=tmp_path / "o.json").row_count == 2
    override["columns"][2]["nullable"] = False
    path.write_text("customer,zip,score\nA,02139,1\nB,10001,\n")
    with pytest.raises(ValidationError, match="line 3: column 'score'"):
        run(path, keys, tmp_path, schema_override=override)


def test_progress_is_monotone_and_complete(tmp_path: Path, keys: KeyPair) -> None:
    path = tmp_path / "g.csv"
    people(20_000).to_csv(path, index=False)
    seen: list[tuple[int, int]] = []
    run(path, keys, tmp_path, progress=lambda done, total: seen.append((done, total)))
    dones = [d for d, _ in seen]
    # one pass over the file: types come from a sample and are checked as the rows go by
    assert dones == sorted(dones) and seen[-1][0] == seen[-1][1] == path.stat().st_size


def test_progress_when_types_must_be_inferred_again(tmp_path: Path, keys: KeyPair, small_batches: None) -> None:
    path = tmp_path / "g.csv"
    frame = people(3000)
    frame["age"] = frame["age"].astype(str)
    frame.loc[2900, "age"] = "41.5"  # far past the sample: the column is a number after all
    frame.to_csv(path, index=False)
    seen: list[tuple[int, int]] = []
    prepared = run(path, keys, tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert prepared.schema.column("age").type == "number"
    dones = [d for d, _ in seen]
    assert dones == sorted(dones) and seen[-1][0] == seen[-1][1] > path.stat().st_size


def test_metadata_matches_the_upload_declaration(tmp_path: Path, keys: KeyPair) -> None:
    path = tmp_path / "m.csv"
    people(100).to_csv(path, index=False)
    prepared = run(path, keys, tmp_path, mock_rows=25)
    meta = json.loads(json.dumps(prepared.metadata()))
    assert set(meta) == {"schema", "row_count", "mock", "dropped", "sha256", "size"}
    assert meta["row_count"] == 100 and len(meta["mock"]) == 25 and meta["size"] == prepared.size
    from cleanroom.crypto import digest

    assert meta["sha256"] == digest(Path(prepared.ciphertext_path).read_bytes())
    assert meta["schema"]["columns"][0] == {"name": "_pid", "type": "string", "nullable": False, "stats": {}}


def test_pid_array_matches_the_reference_hmac() -> None:
    values = pa.array(["", "a", "ünïcödé", "x" * 1000, "17"])
    for secret in (SECRET, b"k" * 100):
        assert pid_array(values, secret).to_pylist() == [pseudonym(v, secret) for v in values.to_pylist()]
    assert pid_array(pa.array(["17"]), SECRET) == pid_array(pa.array([17]).cast(pa.string()), SECRET)


# HMAC-SHA256(key, raw id as UTF-8), hex; from `openssl dgst -sha256 -mac HMAC -macopt hexkey:...`
GOLDEN = {
    (SECRET, ""): "d38b42096d80f45f826b44a9d5607de72496a415d3f4a1a8c88e3bb9da8dc1cb",
    (SECRET, "17"): "47cdebcdb73f89f2b9deff1a4852aab11ac006bfcc7307cfe76e4b7c47b5571a",
    (SECRET, "ünïcödé"): "583061c5dd972f280d125a9396cc98552da62a644d442b7c4e9e6e6d6c6e0732",
    (b"k" * 100, "C00042"): "17a0b008accd6ccd918676ef58d7df62d597476701ce35ca7d2319f7179d5957",
}


def test_pseudonyms_are_byte_identical_to_the_published_construction() -> None:
    for (secret, raw), want in GOLDEN.items():
        assert pseudonym(raw, secret) == want
        assert pid_array(pa.array([raw]), secret).to_pylist() == [want]
    # repeated ids are hashed once per batch (and the same), long batches go in chunks
    ids = pa.array(["17", "", "ünïcödé"] * 5000 + [f"id{i}" for i in range(9000)])
    got = pid_array(ids, SECRET).to_pylist()
    assert got[:3] == [GOLDEN[SECRET, "17"], GOLDEN[SECRET, ""], GOLDEN[SECRET, "ünïcödé"]] and got[3:6] == got[:3]
    assert got[-1] == pseudonym("id8999", SECRET) and len(got) == 24_000
    assert pid_array(pa.chunked_array([ids[:10], ids[10:20]]), SECRET).to_pylist() == got[:20]
    with pytest.raises(ValueError, match="missing"):
        pid_array(pa.array(["a", None]), SECRET)


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Types from the first batch only, and batches of a few dozen rows: files of a few thousand
    rows then take every path that a file of gigabytes takes."""
    from cleanroom.prepare import ingest, schema

    monkeypatch.setattr(schema, "SAMPLE_BYTES", 0)
    monkeypatch.setattr(schema, "BATCH_ROWS", 40)
    monkeypatch.setattr(schema, "CSV_BLOCK", 1 << 12)
    monkeypatch.setattr(ingest, "_PIPELINE_ROWS", 64)
    monkeypatch.setattr(ingest, "_WRITE_ROWS", 48)


def whole_file_types(path: Path) -> dict[str, str]:
    from cleanroom.prepare.schema import infer_types

    return {c.name: c.type for c in infer_types(path).columns}


def test_types_from_a_sample_are_those_of_the_whole_file(tmp_path: Path, keys: KeyPair, small_batches: None) -> None:
    frame = people(3000)
    path = tmp_path / "s.csv"
    frame.to_csv(path, index=False)
    prepared = run(path, keys, tmp_path)
    assert_same(decrypt_dataset(prepared.ciphertext_path.read_bytes(), keys), expected_frame(frame))
    assert prepared.row_count == 3000 and prepared.dropped == ["email", "full_name"]
    wanted = whole_file_types(path)
    assert {c.name: c.type for c in prepared.schema.columns[1:]} == {n: wanted[n] for n in prepared.schema.names[1:]}
    reference = infer_schema_of(path)
    for col in prepared.suggested.columns[1:]:  # the owner's suggestions (the room gets declared facts)
        assert col.stats == reference.column(col.name).stats, col.name
        assert col.nullable == reference.column(col.name).nullable, col.name


def infer_schema_of(path: Path) -> Schema:
    from cleanroom.prepare.schema import infer_schema

    return infer_schema(path)


@pytest.mark.parametrize(
    ("column", "late", "kind"),
    [
        ("age", "41.5", "number"),  # a fraction in a column of integers
        ("age", "041", "string"),  # a leading zero: text, as whole-file inference says
        ("age", "+41", "string"),
        ("age", "1234567890123456789", "number"),  # too long for the strict integer pattern
        ("day", "2021-02-30", "string"),  # an impossible date
        ("member", "yes", "string"),
        ("note", "17", "integer"),  # empty in the sample, a value later
    ],
)
def test_a_later_row_that_needs_another_type_is_read_again(
    tmp_path: Path, keys: KeyPair, small_batches: None, column: str, late: str, kind: str
) -> None:
    frame = people(3000).assign(note=None)
    frame[column] = frame[column].astype(object)
    frame.loc[2900, column] = late
    path = tmp_path / "late.csv"
    frame.to_csv(path, index=False)
    assert whole_file_types(path)[column] == kind
    work = tmp_path / "work"
    prepared = run(path, keys, tmp_path)
    assert prepared.schema.column(column).type == kind
    got = decrypt_table(prepared.ciphertext_path.read_bytes(), keys)
    assert got.num_rows == 3000 and got.column_names == prepared.schema.names
    assert got[column][2900].as_py() == (late if kind == "string" else got[column][2900].as_py())
    assert os.listdir(work) == [prepared.ciphertext_path.name]  # the first attempt left nothing behind


def test_bad_rows_far_past_the_sample_name_their_lines_and_leave_nothing(
    tmp_path: Path, keys: KeyPair, small_batches: None
) -> None:
    frame = people(3000)
    frame["email"] = [f"p{i}@x.org" if i % 9 else f'"first\nsecond{i}"@x.org' for i in range(3000)]
    frame.loc[2500, "customer"] = None  # past the sample and many batches in
    path = tmp_path / "far.csv"
    frame.to_csv(path, index=False)
    newlines = sum(v.count("\n") for v in frame["email"][:2500])
    with pytest.raises(ValidationError) as info:
        run(path, keys, tmp_path)
    # the dropped e-mail column's line breaks count too
    assert f"line {2502 + newlines}: column 'customer' expected string, got an empty value" in info.value.message
    assert os.listdir(tmp_path / "work") == []
    text = path.read_text().splitlines()
    text[2000] = text[2000].rsplit(",", 2)[0]  # a row with two fields too few
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(ValidationError, match=r"line 2001: expected \d+ fields, got \d+ fields") as info:
        run(path, keys, tmp_path)
    assert os.listdir(tmp_path / "work") == []


def test_a_failure_in_any_stage_stops_every_thread(tmp_path: Path, keys: KeyPair, small_batches: None) -> None:
    import threading

    path = tmp_path / "t.csv"
    people(3000).to_csv(path, index=False)

    def fail(done: int, total: int) -> None:
        if done > path.stat().st_size // 2:
            raise KeyboardInterrupt

    interval = sys.getswitchinterval()
    with pytest.raises(KeyboardInterrupt):
        run(path, keys, tmp_path, progress=fail)
    assert os.listdir(tmp_path / "work") == []
    assert not [t for t in threading.enumerate() if t.name.startswith("cleanroom-")]
    assert sys.getswitchinterval() == interval  # the shorter one is only for the time of a prepare
    with pytest.raises(ValidationError, match="recipient"):
        prepare(path, recipient="not a key", id_column="customer", join_secret=SECRET, workdir=tmp_path / "work")
    assert os.listdir(tmp_path / "work") == []
    assert not [t for t in threading.enumerate() if t.name.startswith("cleanroom-")]


def test_join_secret_files(tmp_path: Path) -> None:
    secret = new_join_secret()
    assert len(secret) == 32 and secret != new_join_secret()
    path = tmp_path / "join.secret"
    save_join_secret(path, secret)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == secret.hex() and load_join_secret(path) == secret
    with pytest.raises(Conflict):
        save_join_secret(path, new_join_secret())
    with pytest.raises(NotFound, match="no join secret"):
        load_join_secret(tmp_path / "missing")
    path.chmod(0o644)
    with pytest.raises(ValidationError, match="readable by other users") as info:
        load_join_secret(path)
    assert info.value.hint == f"chmod 600 {path}"
    bad = tmp_path / "bad.secret"
    for text in ("not hex at all", "abcd"):
        bad.unlink(missing_ok=True)
        bad.write_text(text)
        bad.chmod(0o600)
        with pytest.raises(ValidationError):
            load_join_secret(bad)
    with pytest.raises(ValidationError):
        save_join_secret(tmp_path / "short", b"short")


MEMORY_SCRIPT = textwrap.dedent("""
    import sys
    from cleanroom.crypto import generate_keypair
    from cleanroom.prepare.ingest import prepare
    keys = generate_keypair()
    check = lambda name: "an e-mail address" if name == "email" else None
    prepared = prepare(sys.argv[1], recipient=keys.enc_public, id_column="customer", join_secret=bytes(32),
                       identifier_check=check, workdir=sys.argv[2])
    print(prepared.row_count, prepared.size)
    prepared.cleanup()
""")

PEAK_SCRIPT = textwrap.dedent("""
    import resource, subprocess, sys
    subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], check=True)
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
""")


def write_big_csv(path: Path, target_bytes: int) -> int:
    rng = np.random.default_rng(0)
    rows = 0
    with open(path, "wb") as f:
        while f.tell() < target_bytes:
            n = 100_000
            ids = np.arange(rows, rows + n).astype(str)
            table = pa.table(
                {
                    "customer": np.char.add("C", ids),
                    "email": np.char.add(ids, "@example.com"),
                    "age": rng.integers(18, 90, n),
                    "income": rng.normal(5e4, 1.5e4, n).round(2),
                    "region": np.array(["north", "south", "east", "west"])[rng.integers(0, 4, n)],
                    "score": rng.random(n),
                }
            )
            pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=rows == 0))
            rows += n
    return rows


@pytest.mark.slow
def test_memory_stays_flat_on_a_200_mb_file(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    rows = write_big_csv(path, 200 * 2**20)
    # a fresh parent, so RUSAGE_CHILDREN sees only the one child that prepares
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, MEMORY_SCRIPT, str(path), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    counted, peak_kib = out.stdout.split("\n")[0], int(out.stdout.split()[-1])
    assert int(counted.split()[0]) == rows
    assert peak_kib < 200 * 1024, f"peak RSS {peak_kib // 1024} MiB"


# -- refusals that say how to fix them (issue: a new user's first hour) ------------------------------
def charges_csv(path: Path, bad: dict[int, str] | None = None, n: int = 200) -> Path:
    """person,charges,region: charges numeric, except the cells in `bad` (data row index -> text)."""
    rows = ["person,charges,region"]
    for i in range(n):
        value = (bad or {}).get(i, f"{1000 + i * 3.5:.2f}")
        rows.append(f"P{i:04d},{value},{['north', 'south'][i % 2]}")
    path.write_text("\n".join(rows) + "\n")
    return path


def work_files(tmp_path: Path) -> list[Path]:
    work = tmp_path / "work"
    return sorted(work.iterdir()) if work.exists() else []


def test_a_few_bad_cells_in_a_numeric_column_are_refused_naming_lines_and_values(keys, tmp_path):
    path = charges_csv(tmp_path / "ins.csv", {56: "abc", 120: '"12,5"'})
    with pytest.raises(ValidationError) as refused:
        run(path, keys, tmp_path, id_column="person")
    err = refused.value
    assert "'charges'" in err.message and "2 of its 200 values are not numbers" in err.message
    assert "line 58: 'abc'" in err.message and "line 122: '12,5'" in err.message  # header is line 1
    assert "--text-column charges" in err.hint and "clean those cells" in err.hint
    assert err.details["mistyped"][0]["cells"] == [{"line": 58, "value": "abc"}, {"line": 122, "value": "12,5"}]
    assert work_files(tmp_path) == []  # nothing half-written
    # the controls: declared as text it is text; cleaned, it is a number
    with run(path, keys, tmp_path, id_column="person", text_columns=["charges"]) as prepared:
        assert prepared.schema.column("charges").type == "string"
    clean = charges_csv(tmp_path / "clean.csv")
    with run(clean, keys, tmp_path, id_column="person") as prepared:
        assert prepared.schema.column("charges").type == "number"
    # a column that is text through and through (region), or codes with leading zeros, is no mistake
    with pytest.raises(ValidationError, match="does not have"):
        run(path, keys, tmp_path, id_column="person", text_columns=["chargse"])


def test_bad_cells_past_the_sample_name_their_physical_lines(tmp_path):
    from cleanroom.prepare.schema import infer_types

    rows = ["id,amount,note"] + [f'{i},{i * 2},"two\nlines"' if i == 5 else f"{i},{i * 2},plain" for i in range(100)]
    rows[80] = "79,oops,plain"
    path = tmp_path / "multi.csv"
    path.write_text("\n".join(rows) + "\n")
    assert infer_types(path).column("amount").type == "string"  # without the check: text, silently
    with pytest.raises(ValidationError, match=r"line 82: 'oops'"):  # one newline inside row 5 moves it down
        infer_types(path, text_columns=())
    zips = tmp_path / "zips.csv"
    zips.write_text("id,zip\n" + "".join(f"{i},{'02139' if i == 3 else 10000 + i}\n" for i in range(50)))
    assert infer_types(zips, text_columns=()).column("zip").type == "string"  # codes: text on purpose


def test_an_id_column_with_few_values_is_refused(keys, tmp_path):
    path = charges_csv(tmp_path / "ins.csv")
    with pytest.raises(ValidationError) as refused:
        run(path, keys, tmp_path, id_column="region")
    err = refused.value
    assert "only 2 distinct values in 200 rows" in err.message and "--allow-few-ids" in err.hint
    assert "--id-column" in err.hint and work_files(tmp_path) == []
    with run(path, keys, tmp_path, id_column="region", allow_few_ids=True) as prepared:  # told: accepted
        assert prepared.row_count == 200
    with run(path, keys, tmp_path, id_column="person") as prepared:  # the real id column
        assert prepared.row_count == 200
    frame = people(200)  # the real id column looks like an identifier: the hint names it
    frame["patient_id"] = frame.pop("customer")
    frame.to_csv(tmp_path / "patients.csv", index=False)
    with pytest.raises(ValidationError) as refused:
        run(tmp_path / "patients.csv", keys, tmp_path, id_column="region", identifier_check=None)
    assert "'patient_id' looks like one" in refused.value.hint, refused.value.hint
    repeated = tmp_path / "visits.csv"  # a person may have many rows: 20 people, 10 rows each is fine
    repeated.write_text("person,x\n" + "".join(f"P{i % 20},{i}\n" for i in range(200)))
    with run(repeated, keys, tmp_path, id_column="person") as prepared:
        assert prepared.row_count == 200


def test_policy_rules_for_columns_the_dataset_lacks_are_refused(keys, tmp_path):
    from cleanroom.policy import parse_policy

    path = charges_csv(tmp_path / "ins.csv")
    typo = parse_policy("[columns.chrages]\nbounds = [0, 100000]\n")
    with pytest.raises(ValidationError) as refused:
        run(path, keys, tmp_path, id_column="person", policy=typo)
    assert "'chrages' is not a column" in refused.value.message and "did you mean 'charges'" in refused.value.message
    assert "fix or remove" in refused.value.hint and work_files(tmp_path) == []
    on_id = parse_policy("[columns.person]\nrule = 'join_only'\n")
    with pytest.raises(ValidationError, match="is the id column"):
        run(path, keys, tmp_path, id_column="person", policy=on_id)
    frame = people(50)
    frame.to_csv(tmp_path / "people.csv", index=False)
    dropped = parse_policy("[columns.email]\nrule = 'never_output'\n")
    with pytest.raises(ValidationError, match="dropped as a direct identifier"):
        run(tmp_path / "people.csv", keys, tmp_path, policy=dropped)
    right = parse_policy("[columns.charges]\nbounds = [0, 100000]\n")  # the control
    with run(path, keys, tmp_path, id_column="person", policy=right) as prepared:
        assert prepared.schema.column("charges").type == "number"


def test_dropped_identifier_columns_are_reported(keys, tmp_path):
    people(50).to_csv(tmp_path / "people.csv", index=False)
    with run(tmp_path / "people.csv", keys, tmp_path) as prepared:
        assert set(prepared.dropped_reasons) == {"email", "full_name"}
        assert all(prepared.dropped_reasons.values())
