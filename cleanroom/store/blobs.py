"""Content-addressed blob storage on a local directory.

Blobs are written to a temporary file in the same filesystem, fsynced, then renamed into place,
so a crash never leaves a half-written blob visible under its hash.

Blobs are shared by content: one file may back a dataset, a release artifact and a log at once.
So nothing here deletes a blob on behalf of one upload. The only way to delete a committed blob is
`delete`, which needs the exclusive `SweepLease` that `cleanroom.store.sweep` takes (it re-checks, under
the lease, that no record references the blob and that it is older than the grace period). A
commit renames under the shared lock, so a sweep never removes a blob that was just written again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cleanroom.errors import NotFound, TooLarge, ValidationError
from cleanroom.sandbox.vocabulary import SHA256_HEX

_HEX = SHA256_HEX  # fullmatch: a name with a trailing newline is not a blob


class BlobStore:
    """Put and get immutable blobs by sha256. A small interface an object store can implement."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        # stale partial uploads from a crash are never visible; clear them on start
        for stale in (self.root / "tmp").iterdir():
            stale.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        if not _HEX.fullmatch(digest):
            raise ValidationError("not a sha256 hex digest")
        return self.root / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def writer(self, *, max_bytes: int) -> BlobWriter:
        """A staged writer: `write` chunks, then `commit` (atomic rename) or `abort`."""
        return BlobWriter(self, max_bytes)

    def put_stream(
        self, chunks: Iterator[bytes], *, max_bytes: int, expect_sha256: str | None = None
    ) -> tuple[str, int]:
        """Store the stream; return (sha256, size). Nothing is kept when it fails."""
        w = self.writer(max_bytes=max_bytes)
        try:
            for chunk in chunks:
                w.write(chunk)
            return w.commit(expect_sha256)
        except BaseException:
            w.abort()
            raise

    def put_bytes(self, data: bytes) -> str:
        digest, _ = self.put_stream(iter([data]), max_bytes=len(data) + 1)
        return digest

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError as exc:
            raise NotFound("blob not found") from exc

    def read(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def iter_chunks(self, digest: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with self.open(digest) as f:
            while block := f.read(chunk):
                yield block

    @contextmanager
    def _lock(self, mode: int) -> Iterator[None]:
        """An advisory lock on the blob directory (flock: works across threads and processes)."""
        with open(self.root / ".lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), mode)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @contextmanager
    def sweep_lease(self) -> Iterator[SweepLease]:
        """The exclusive lock the sweep holds while it deletes: no blob is committed meanwhile."""
        with self._lock(fcntl.LOCK_EX):
            lease = SweepLease(self)
            try:
                yield lease
            finally:
                lease.active = False

    def entries(self) -> Iterator[BlobEntry]:
        """Every committed blob: digest, size and modification time (the last time it was written)."""
        for folder in sorted(self.root.glob("??")):
            if not folder.is_dir():
                continue
            for item in sorted(folder.iterdir()):
                if _HEX.fullmatch(item.name) and item.name[:2] == folder.name:
                    try:
                        st = item.stat()
                    except FileNotFoundError:
                        continue
                    yield BlobEntry(item.name, st.st_size, st.st_mtime)

    def entry(self, digest: str) -> BlobEntry | None:
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            return None
        return BlobEntry(digest, st.st_size, st.st_mtime)

    def staged(self) -> Iterator[tuple[Path, float]]:
        """Temporary files of uploads in progress (or left by a crash), with their modification times."""
        for item in sorted((self.root / "tmp").iterdir()):
            try:
                yield item, item.stat().st_mtime
            except FileNotFoundError:
                continue

    def hash_of(self, digest: str) -> str | None:
        """The sha256 of the bytes stored under `digest` (None when the blob is missing)."""
        h = hashlib.sha256()
        try:
            with open(self.path(digest), "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        except FileNotFoundError:
            return None
        return h.hexdigest()

    def _holds(self, lease: object) -> bool:
        return (
            isinstance(lease, SweepLease)
            and getattr(lease, "store", None) is self
            and getattr(lease, "active", False) is True
        )

    def delete(self, digest: str, lease: SweepLease) -> None:
        """Remove a blob. Only the sweep calls this, holding its lease (tests/test_blobs.py checks)."""
        if not self._holds(lease):
            raise PermissionError("blobs are deleted only by the sweep, under its lease")
        self.path(digest).unlink(missing_ok=True)

    def remove_staged(self, path: Path, lease: SweepLease) -> None:
        """Remove an abandoned temporary file (never a committed blob)."""
        if not self._holds(lease):
            raise PermissionError("staged files are removed only by the sweep, under its lease")
        if path.parent != self.root / "tmp":
            raise ValueError("not a staged upload file")
        path.unlink(missing_ok=True)


@dataclass
class BlobEntry:
    digest: str
    size: int
    mtime: float


class SweepLease:
    """Proof that the caller holds the blob directory's exclusive lock (see `BlobStore.sweep_lease`)."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.active = True


class BlobWriter:
    def __init__(self, store: BlobStore, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        fd, self._tmp = tempfile.mkstemp(dir=store.root / "tmp")
        self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise TooLarge(
                f"upload is larger than the limit of {self.max_bytes} bytes", hint="ask the operator to raise the limit"
            )
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self, expect_sha256: str | None = None) -> tuple[str, int]:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = self._hash.hexdigest()
        if expect_sha256 is not None and digest != expect_sha256:
            self.abort()
            raise ValidationError(
                "upload is incomplete or corrupt: its sha256 does not match the declared one", hint="retry the upload"
            )
        final = self.store.path(digest)
        final.parent.mkdir(exist_ok=True)
        # Under the shared lock: a sweep (exclusive) is never between its age check and its unlink.
        # The rename gives the blob a fresh modification time, so the next sweep's grace period
        # protects it until the record that references it is written.
        with self.store._lock(fcntl.LOCK_SH):
            try:
                os.replace(self._tmp, final)
            except FileNotFoundError as exc:  # the sweep removed a staged file idle for its grace period
                raise ValidationError(
                    "the upload was idle too long and its staged bytes were removed", hint="retry the upload"
                ) from exc
        return digest, self.size

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        Path(self._tmp).unlink(missing_ok=True)
