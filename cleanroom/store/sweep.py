"""The only place that deletes blobs: one audited, crash-safe sweep, and the storage check.

Blobs are content-addressed and shared: one file can back a dataset, a release artifact, a log and a
plugin bundle at once, so no upload, retry or failure deletes "its" blob. Unreferenced blobs (from a
failed upload, an abandoned job) are removed here, and only when

- no record references them: neither the known reference columns (`REFERENCES`) nor any 64-hex value
  anywhere else in the database (every column of every table except the audit log), so a table added
  later that names a blob keeps it even before it is listed here, and
- they are not the ciphertext of a withdrawn dataset that a queued or running job still reads (a
  withdrawn dataset's own record and its digest in approvals, jobs and receipts are history, not
  references: `released`), and
- they were written longer ago than the grace period (a commit renames the file, so its modification
  time is the last time anyone stored those bytes; an upload between its commit and its record is young).

The sweep runs in two transactions, each holding the database's write lock and then the blob
directory's exclusive lease (no blob is committed meanwhile): the first writes the plan to the audit
log (`storage.sweep_planned`) and commits; the second re-checks every planned blob, deletes it, and
writes `storage.swept`. A crash in between leaves a plan without its result, which `check` reports;
the next sweep finishes the job. Nothing referenced is ever deleted, crash or not.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from cleanroom.errors import ValidationError
from cleanroom.store import audit
from cleanroom.store.db import Store, now
from cleanroom.store.dialect import table_names

MIN_GRACE_SECONDS = 3600
AUDIT_LIST = 1000  # digests listed in a sweep's audit events (the count and a hash cover the rest)
# (table, blob column, label of the referencing record): the records a blob must exist for
REFERENCES: tuple[tuple[str, str, str], ...] = (
    ("datasets", "sha256", "'dataset ' || name"),  # withdrawn ones only while a job reads them (`released`)
    ("plugins", "id", "'plugin ' || name || ' ' || version"),
    ("jobs", "log_blob", "'log of job ' || id"),
    ("release_artifacts", "blob", "'release ' || release_id || ' artifact ' || name"),
)
_HEX64 = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
NOT_SCANNED = {"audit"}  # history, not references: a swept blob's digest stays in the log
# a withdrawn dataset whose ciphertext no unfinished job reads any more
_RELEASED = """
    SELECT d.sha256 FROM datasets AS d WHERE d.withdrawn_at IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM jobs AS j, json_each(j.spec, '$.inputs') AS i
        WHERE j.status IN ('queued', 'running') AND json_extract(i.value, '$.dataset') = d.name)
"""


def released(conn: Any) -> set[str]:
    """Ciphertext digests of withdrawn datasets that no queued or running job reads: their blobs are
    the sweep's to remove, though their digests stay in records (approvals, jobs, receipts)."""
    return {r[0] for r in conn.execute(_RELEASED)}


def referenced(conn: Any) -> dict[str, list[str]]:
    """Blob digest -> the records that need it (they must exist with the right hash)."""
    refs: dict[str, list[str]] = {}
    gone = released(conn)
    for table, column, label in REFERENCES:
        for digest, what in conn.execute(f"SELECT {column}, {label} FROM {table} WHERE {column} IS NOT NULL"):
            if table == "datasets" and digest in gone:
                continue
            refs.setdefault(digest, []).append(what)
    return refs


def to_keep(conn: Any, *, except_uploads: frozenset[str] = frozenset()) -> set[str]:
    """The digests the sweep must keep: every reference, and every 64-hex value in the database except
    the ciphertexts of withdrawn datasets (`released`) that nothing else references."""
    refs = referenced(conn)
    return set(refs) | (mentioned(conn, except_uploads=except_uploads) - released(conn))


def mentioned(conn: Any, *, except_uploads: frozenset[str] = frozenset()) -> set[str]:
    """Every 64-hex value in any column of any table but the audit log (and but the upload
    declarations in `except_uploads`, which a sweep is removing): blobs the sweep must keep."""
    found: set[str] = set()
    for table in table_names(conn):
        if table in NOT_SCANNED:
            continue
        for row in conn.execute(f'SELECT * FROM "{table}"'):
            if table == "uploads" and row["id"] in except_uploads:
                continue
            for value in row:
                if isinstance(value, bytes):
                    value = value.decode("latin-1")
                if isinstance(value, str) and len(value) >= 64:
                    found.update(_HEX64.findall(value))
    return found


def check_grace(grace: int) -> int:
    if grace < MIN_GRACE_SECONDS:
        raise ValidationError(
            f"the grace period must be at least {MIN_GRACE_SECONDS} seconds (got {grace}): "
            "a younger blob may belong to an upload whose record is not written yet",
            hint="give --grace-seconds 3600 or more (CLEANROOM_BLOB_GRACE_SECONDS)",
        )
    return grace


def _plan(conn: Any, store: Store, cutoff: float, upload_cutoff: float) -> dict[str, Any]:
    expired = [
        r["id"]
        for r in conn.execute("SELECT id FROM uploads WHERE created_at < ? ORDER BY created_at", (upload_cutoff,))
    ]
    keep = to_keep(conn, except_uploads=frozenset(expired))
    blobs = [e for e in store.blobs.entries() if e.digest not in keep and e.mtime < cutoff]
    staged = [p for p, mtime in store.blobs.staged() if mtime < cutoff]
    return {"blobs": blobs, "staged": staged, "expired_uploads": expired}


def sweep(
    store: Store, *, actor: str, grace_seconds: int, upload_ttl_seconds: int, dry_run: bool = False
) -> dict[str, Any]:
    """Delete unreferenced blobs older than the grace period, stale staged files and expired upload
    declarations. Returns what was (or, with `dry_run`, would be) removed."""
    grace = check_grace(grace_seconds)
    cutoff = time.time() - grace
    upload_cutoff = now() - upload_ttl_seconds
    # 1. the plan, committed to the audit log before anything is removed
    with store.tx() as conn, store.blobs.sweep_lease():
        plan = _plan(conn, store, cutoff, upload_cutoff)
        summary = {
            "grace_seconds": grace,
            "blobs": [e.digest for e in plan["blobs"]],
            "bytes": sum(e.size for e in plan["blobs"]),
            "staged_files": len(plan["staged"]),
            "expired_uploads": plan["expired_uploads"],
        }
        if dry_run or not (plan["blobs"] or plan["staged"] or plan["expired_uploads"]):
            return _listed({**summary, "dry_run": dry_run, "deleted": [], "kept": []}, "blobs")
        planned = audit.append(
            conn,
            actor=actor,
            action="storage.sweep_planned",
            object_type="storage",
            object_id="blobs",
            details=_listed(summary, "blobs"),
            ts=now(),
        )
    # 2. re-check under the lease, delete, record the result (a crash here leaves the plan, which
    #    `check` reports and the next sweep completes)
    with store.tx() as conn, store.blobs.sweep_lease() as lease:
        expired = [
            u
            for u in plan["expired_uploads"]
            if conn.execute("SELECT 1 FROM uploads WHERE id = ? AND created_at < ?", (u, upload_cutoff)).fetchone()
        ]
        keep = to_keep(conn, except_uploads=frozenset(expired))
        if expired:
            conn.execute(f"DELETE FROM uploads WHERE id IN ({','.join('?' * len(expired))})", expired)
        deleted, kept, freed = [], [], 0
        for planned_entry in plan["blobs"]:
            entry = store.blobs.entry(planned_entry.digest)
            if entry is None:
                continue
            if entry.digest in keep or entry.mtime >= cutoff:
                kept.append(entry.digest)  # referenced or written again since the plan
                continue
            store.blobs.delete(entry.digest, lease)
            deleted.append(entry.digest)
            freed += entry.size
        staged = 0
        for path in plan["staged"]:
            try:
                if path.stat().st_mtime < cutoff:
                    store.blobs.remove_staged(path, lease)
                    staged += 1
            except FileNotFoundError:
                continue
        result = {
            "plan_seq": planned["seq"],
            "deleted": deleted,
            "kept": kept,
            "bytes": freed,
            "staged_files": staged,
            "expired_uploads": expired,
        }
        audit.append(
            conn,
            actor=actor,
            action="storage.swept",
            object_type="storage",
            object_id="blobs",
            details=_listed(_listed(result, "deleted"), "kept"),
            ts=now(),
        )
    return _listed(_listed(_listed({**summary, **result, "dry_run": False}, "blobs"), "deleted"), "kept")


def _listed(details: dict[str, Any], key: str) -> dict[str, Any]:
    """An audit event's list of digests: the count, the sha256 of the whole sorted list (one per line),
    and the first AUDIT_LIST digests, so a sweep of a million orphans stays a small event."""
    digests = sorted(details[key])
    return {
        **details,
        key: digests[:AUDIT_LIST],
        f"{key}_count": len(digests),
        f"{key}_sha256": hashlib.sha256("\n".join(digests).encode()).hexdigest(),
    }


def check(store: Store, *, verify_hashes: bool = True) -> dict[str, Any]:
    """Every referenced blob exists with the right hash; list orphans and an interrupted sweep.
    `ok` is False when a referenced blob is missing or corrupt."""
    with store.read() as conn:
        refs = referenced(conn)
        keep = to_keep(conn)
        planned = conn.execute(
            "SELECT seq, details FROM audit WHERE action = 'storage.sweep_planned' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        done = conn.execute("SELECT seq FROM audit WHERE action = 'storage.swept' ORDER BY seq DESC LIMIT 1").fetchone()
        pending_uploads = conn.execute("SELECT COUNT(*) FROM uploads WHERE done_at IS NULL").fetchone()[0]
    on_disk = {e.digest: e for e in store.blobs.entries()}
    missing, corrupt = [], []
    for digest, needed_by in sorted(refs.items()):
        if digest not in on_disk:
            missing.append({"blob": digest, "referenced_by": needed_by})
        elif verify_hashes:
            actual = store.blobs.hash_of(digest)
            if actual is None:
                missing.append({"blob": digest, "referenced_by": needed_by})
            elif actual != digest:
                corrupt.append({"blob": digest, "sha256": actual, "referenced_by": needed_by})
    t = time.time()
    orphans = [
        {"blob": d, "size": e.size, "age_seconds": round(t - e.mtime)}
        for d, e in sorted(on_disk.items())
        if d not in refs and d not in keep
    ]
    interrupted = None
    if planned and (not done or done["seq"] < planned["seq"]):
        interrupted = {"plan_seq": planned["seq"], "blobs": json.loads(planned["details"]).get("blobs_count")}
    return {
        "ok": not missing and not corrupt,
        "referenced": len(refs),
        "blobs": len(on_disk),
        "verified_hashes": verify_hashes,
        "missing": missing,
        "corrupt": corrupt,
        "orphans": orphans,
        "orphan_bytes": sum(o["size"] for o in orphans),
        "staged_files": sum(1 for _ in store.blobs.staged()),
        "pending_uploads": pending_uploads,
        "interrupted_sweep": interrupted,
    }
