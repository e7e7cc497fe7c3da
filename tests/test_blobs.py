"""Blob storage and its one deletion path, on a real Store (SQLite file and blob directory).

- A source scan: no module but `cleanroom/store/sweep.py` calls a blob store's `delete` (or
  `remove_staged`), and in `cleanroom/store/blobs.py` only `delete`, `remove_staged`, the writer's
  `abort` and the start-up clearing of staged files unlink anything. A control shows the scan
  flags a planted call.
- `BlobStore.delete` refuses to run without the sweep's live lease.
- The sweep keeps every referenced blob (datasets, plugin bundles, job logs, release artifacts,
  pending uploads, and a digest named in a table it does not know), keeps young blobs, deletes
  old orphans, is audited in two steps, and a dry run changes nothing.
- A commit waits while the sweep holds its lease, and a commit refreshes a blob's age (so an old
  orphan uploaded again is kept).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from cleanroom import audit
from cleanroom.errors import ValidationError
from cleanroom.store import sweep
from cleanroom.store.blobs import BlobStore, SweepLease
from cleanroom.store.db import Store, dumps, now

REPO = Path(__file__).resolve().parent.parent
DAY = 86400


# Source scan ------------------------------------------------------------------------------------


def _dotted(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except Exception:  # pragma: no cover - unparse handles every expression node
        return ""


def blob_deletions(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls that delete blobs: `<anything naming blobs or a store>.delete(...)` / `.remove_staged(...)`,
    and unlink/remove/rmtree calls whose target mentions blobs."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            receiver = _dotted(func.value).lower()
            if func.attr in ("delete", "remove_staged") and ("blob" in receiver or "store" in receiver):
                found.append((node.lineno, _dotted(node)))
            elif func.attr in ("unlink", "remove", "rmtree", "rmdir") and "blob" in _dotted(node).lower():
                found.append((node.lineno, _dotted(node)))
    return found


def _functions_with_unlink(tree: ast.AST) -> set[str]:
    names = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("unlink", "remove", "rmtree", "rmdir")
                ):
                    names.add(fn.name)
    return names


def test_only_the_sweep_module_deletes_blobs() -> None:
    offenders = []
    for path in sorted((REPO / "cleanroom").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in ("cleanroom/store/sweep.py", "cleanroom/store/blobs.py"):
            continue
        for line, call in blob_deletions(ast.parse(path.read_text(), rel)):
            offenders.append(f"{rel}:{line}: {call}")
    assert not offenders, "blobs are deleted only by cleanroom/store/sweep.py:\n" + "\n".join(offenders)
    sweep_calls = [call for _, call in blob_deletions(ast.parse((REPO / "cleanroom/store/sweep.py").read_text()))]
    assert any(".delete(" in c for c in sweep_calls)  # the scan does see the sweep's own call
    # inside blobs.py, only these functions unlink files (delete needs the lease; the rest touch tmp/)
    unlinkers = _functions_with_unlink(ast.parse((REPO / "cleanroom/store/blobs.py").read_text()))
    assert unlinkers == {"__init__", "delete", "remove_staged", "abort"}, unlinkers


def test_the_scan_flags_planted_deletions() -> None:
    """Control: the scan is not blind. Each of these would be an offence outside the sweep."""
    planted = [
        "ctx.store.blobs.delete(digest)",
        "self.blobs.delete(d, lease)",
        "store.blobs.remove_staged(p, lease)",
        "ctx.store.blobs.path(digest).unlink(missing_ok=True)",
        "os.remove(blob_path)",
        "shutil.rmtree(data_dir / 'blobs')",
    ]
    for code in planted:
        assert blob_deletions(ast.parse(code)), code
    harmless = ["router.delete('/x')", "conn.execute('DELETE FROM budget')", "tmp.unlink()", "cache.delete(k)"]
    for code in harmless:
        assert not blob_deletions(ast.parse(code)), code


# The lease ----------------------------------------------------------------------------------------


def test_delete_needs_the_sweeps_live_lease(tmp_path: Path) -> None:
    blobs, other = BlobStore(tmp_path / "a"), BlobStore(tmp_path / "b")
    digest = blobs.put_bytes(b"age-encryption.org/v1\nshared bytes")
    forged = SweepLease.__new__(SweepLease)
    with other.sweep_lease() as foreign:
        for lease in (None, "lease", forged, foreign):
            with pytest.raises(PermissionError):
                blobs.delete(digest, lease)  # type: ignore[arg-type]
    with blobs.sweep_lease() as lease:
        pass
    with pytest.raises(PermissionError):
        blobs.delete(digest, lease)  # the lease ended with its block
    with pytest.raises(PermissionError):
        blobs.remove_staged(blobs.root / "tmp" / "x", lease)
    assert blobs.exists(digest) and blobs.hash_of(digest) == digest
    with blobs.sweep_lease() as lease:  # control: the live lease deletes
        blobs.delete(digest, lease)
    assert not blobs.exists(digest)


def test_a_commit_waits_for_the_sweep_and_refreshes_the_blobs_age(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    data = b"age-encryption.org/v1\nsame bytes twice"
    digest = blobs.put_bytes(data)
    old = time.time() - 3 * DAY
    os.utime(blobs.path(digest), (old, old))
    committed = threading.Event()

    def commit_again() -> None:
        blobs.put_bytes(data)
        committed.set()

    with blobs.sweep_lease():
        worker = threading.Thread(target=commit_again)
        worker.start()
        assert not committed.wait(0.5), "a commit went through while the sweep held its lease"
    worker.join(10)
    assert committed.is_set()
    entry = blobs.entry(digest)
    assert entry is not None and entry.mtime > time.time() - 60  # written again: young again


# The sweep on a real store ------------------------------------------------------------------------


def _age(store: Store, digest: str, seconds: float = 3 * DAY) -> None:
    t = time.time() - seconds
    os.utime(store.blobs.path(digest), (t, t))


def _blob(store: Store, text: str, *, aged: bool = True) -> str:
    digest = store.blobs.put_bytes(b"age-encryption.org/v1\n" + text.encode())
    if aged:
        _age(store, digest)
    return digest


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


def _refs(store: Store) -> dict[str, str]:
    """One old blob behind every kind of record, written through plain SQL on the real schema."""
    d = {k: _blob(store, k) for k in ("dataset", "plugin", "log", "artifact", "pending", "unknown_table")}
    t = now()
    with store.tx() as conn:
        conn.execute(
            "INSERT INTO orgs (id, name, roles, created_at) VALUES ('org_1', 'retailer', '[\"owner\"]', ?)", (t,)
        )
        conn.execute(
            "INSERT INTO datasets (name, owner_id, sha256, size, row_count, schema, mock, dropped,"
            " description, policy_version, created_at) VALUES ('ds', 'org_1', ?, 1, 1, '{}', '[]', '[]',"
            " '', 1, ?)",
            (d["dataset"], t),
        )
        conn.execute(
            "INSERT INTO plugins (id, name, version, kind, manifest, review, size, submitted_by,"
            " created_at) VALUES (?, 'p', '1', 'preprocess', '{}', '{}', 1, 'org_1', ?)",
            (d["plugin"], t),
        )
        conn.execute(
            "INSERT INTO jobs (id, org_id, name, spec, effective_policy, status, created_at, log_blob)"
            " VALUES ('job_1', 'org_1', 'j', '{}', '{}', 'failed', ?, ?)",
            (t, d["log"]),
        )
        conn.execute(
            "INSERT INTO release_artifacts (release_id, name, blob, size) VALUES ('rel_1', 'm.json', ?, 1)",
            (d["artifact"],),
        )
        conn.execute(
            "INSERT INTO uploads (id, org_id, meta, created_at, name, sha256) VALUES ('upl_1', 'org_1',"
            " ?, ?, 'pending.ds', ?)",
            (dumps({"sha256": d["pending"]}), t, d["pending"]),
        )
        # a table this code does not know (added by a later feature) that names a blob in a JSON value
        conn.execute("CREATE TABLE later_feature (id TEXT PRIMARY KEY, doc TEXT)")
        conn.execute(
            "INSERT INTO later_feature VALUES ('x', ?)", (json.dumps({"bundle": {"blob": d["unknown_table"]}}),)
        )
    return d


def test_sweep_keeps_every_referenced_blob_and_deletes_only_old_orphans(store: Store) -> None:
    refs = _refs(store)
    orphan_old = _blob(store, "orphan, old")
    orphan_young = _blob(store, "orphan, just written", aged=False)
    staged_old = store.blobs.root / "tmp" / "tmpabandoned"
    staged_old.write_bytes(b"half an upload")
    os.utime(staged_old, (time.time() - 3 * DAY,) * 2)
    staged_young = store.blobs.root / "tmp" / "tmpinflight"
    staged_young.write_bytes(b"an upload in flight")

    preview = sweep.sweep(store, actor="admin", grace_seconds=DAY, upload_ttl_seconds=DAY, dry_run=True)
    assert preview["blobs"] == [orphan_old] and preview["dry_run"]
    assert store.blobs.exists(orphan_old) and staged_old.exists()  # a dry run changes nothing

    result = sweep.sweep(store, actor="admin", grace_seconds=DAY, upload_ttl_seconds=DAY)
    assert result["deleted"] == [orphan_old] and result["staged_files"] == 1
    for kind, digest in refs.items():
        assert store.blobs.hash_of(digest) == digest, f"the {kind} blob was swept"
    assert store.blobs.exists(orphan_young) and staged_young.exists() and not staged_old.exists()
    with store.read() as conn:
        events = [audit.row_to_event(r) for r in conn.execute("SELECT * FROM audit ORDER BY seq")]
    assert [e["action"] for e in events] == ["storage.sweep_planned", "storage.swept"]
    assert events[0]["details"]["blobs"] == [orphan_old] and events[1]["details"]["deleted"] == [orphan_old]
    assert audit.verify_events(events)["ok"]

    report = sweep.check(store)
    assert report["ok"] and report["referenced"] == 4 and not report["missing"] and not report["corrupt"]
    assert [o["blob"] for o in report["orphans"]] == [orphan_young]  # the pending one is protected, not orphaned
    # nothing more to do: a second sweep removes nothing and writes no event
    again = sweep.sweep(store, actor="admin", grace_seconds=DAY, upload_ttl_seconds=DAY)
    assert again["deleted"] == [] and again["blobs"] == []


def test_expired_upload_declarations_stop_protecting_their_blob(store: Store) -> None:
    refs = _refs(store)
    with store.tx() as conn:
        conn.execute("UPDATE uploads SET created_at = ?", (now() - 2 * DAY,))
    result = sweep.sweep(store, actor="admin", grace_seconds=DAY, upload_ttl_seconds=DAY)
    assert result["expired_uploads"] == ["upl_1"] and result["deleted"] == [refs["pending"]]
    with store.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM uploads").fetchone()[0] == 0
    assert all(store.blobs.exists(d) for k, d in refs.items() if k != "pending")


def test_check_finds_missing_and_corrupt_referenced_blobs(store: Store) -> None:
    refs = _refs(store)
    assert sweep.check(store)["ok"]  # control
    store.blobs.path(refs["artifact"]).write_bytes(b"age-encryption.org/v1\nflipped")
    store.blobs.path(refs["log"]).unlink()  # damage done from outside, e.g. a bad restore
    report = sweep.check(store)
    assert not report["ok"]
    assert [m["blob"] for m in report["missing"]] == [refs["log"]]
    assert report["missing"][0]["referenced_by"] == ["log of job job_1"]
    assert [c["blob"] for c in report["corrupt"]] == [refs["artifact"]]
    quick = sweep.check(store, verify_hashes=False)
    assert not quick["ok"] and quick["corrupt"] == []  # without hashing only the missing one shows


def test_grace_below_the_minimum_is_refused_and_changes_nothing(store: Store) -> None:
    orphan = _blob(store, "orphan")
    with pytest.raises(ValidationError, match="at least 3600"):
        sweep.sweep(store, actor="admin", grace_seconds=60, upload_ttl_seconds=DAY)
    assert store.blobs.exists(orphan)
    with store.read() as conn:
        assert conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 0


def test_an_old_orphan_stored_again_is_young_and_kept(store: Store) -> None:
    """An old unreferenced blob is planned for deletion (control); an upload of the same bytes makes
    it young again, so the sweep keeps it for the upload's record to reference."""
    data = b"age-encryption.org/v1\nstored again"
    digest = store.blobs.put_bytes(data)
    _age(store, digest)
    with store.tx() as conn, store.blobs.sweep_lease():
        plan = sweep._plan(conn, store, time.time() - DAY, now() - DAY)
    assert [e.digest for e in plan["blobs"]] == [digest]
    store.blobs.put_bytes(data)  # an upload of the same bytes lands now
    result = sweep.sweep(store, actor="admin", grace_seconds=DAY, upload_ttl_seconds=DAY)
    assert result["deleted"] == [] and store.blobs.hash_of(digest) == hashlib.sha256(data).hexdigest()


def test_a_big_sweeps_audit_events_list_a_bounded_sample_with_a_count_and_a_hash(store: Store) -> None:
    orphans = sorted(_blob(store, f"orphan {i}") for i in range(sweep.AUDIT_LIST + 200))
    kept = _refs(store)
    result = sweep.sweep(store, actor="admin", grace_seconds=DAY, upload_ttl_seconds=DAY)
    assert result["deleted_count"] == len(orphans) and result["deleted"] == orphans[: sweep.AUDIT_LIST]
    with store.read() as conn:
        planned, swept = (
            json.loads(r[0])
            for r in conn.execute("SELECT details FROM audit WHERE action LIKE 'storage.%' ORDER BY seq")
        )
    whole = hashlib.sha256("\n".join(orphans).encode()).hexdigest()
    assert planned["blobs"] == orphans[: sweep.AUDIT_LIST] and planned["blobs_count"] == len(orphans)
    assert planned["blobs_sha256"] == whole and swept["deleted_sha256"] == whole
    assert swept["deleted_count"] == len(orphans) and swept["kept_count"] == 0
    assert all(store.blobs.exists(d) for d in kept.values())


def test_an_upload_idle_past_the_grace_period_fails_clearly_and_stores_nothing(store: Store) -> None:
    writer = store.blobs.writer(max_bytes=1000)
    writer.write(b"age-encryption.org/v1\nhalf")
    staged = list((store.blobs.root / "tmp").iterdir())
    assert len(staged) == 1
    os.utime(staged[0], (time.time() - 3 * DAY,) * 2)  # nothing written for days
    assert sweep.sweep(store, actor="admin", grace_seconds=DAY, upload_ttl_seconds=DAY)["staged_files"] == 1
    with pytest.raises(ValidationError, match="idle too long"):
        writer.commit()
    assert list(store.blobs.entries()) == []
    control = store.blobs.writer(max_bytes=1000)  # control: an active upload is left alone and commits
    control.write(b"age-encryption.org/v1\nwhole")
    sweep.sweep(store, actor="admin", grace_seconds=DAY, upload_ttl_seconds=DAY)
    digest, _ = control.commit()
    assert store.blobs.hash_of(digest) == digest
