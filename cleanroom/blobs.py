"""Content-addressed blob storage on a local directory.

Blobs are written to a temporary file in the same filesystem, fsynced, then renamed into place,
so a crash never leaves a half-written blob visible under its hash.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cleanroom.errors import NotFound, TooLarge, ValidationError

_HEX = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    """Put and get immutable blobs by sha256. A small interface an object store can implement."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        # stale partial uploads from a crash are never visible; clear them on start
        for stale in (self.root / "tmp").iterdir():
            stale.unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        if not _HEX.match(digest):
            raise ValidationError("not a sha256 hex digest")
        return self.root / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def writer(self, *, max_bytes: int) -> BlobWriter:
        """A staged writer: `write` chunks, then `commit` (atomic rename) or `abort`."""
        return BlobWriter(self, max_bytes)

    def put_stream(self, chunks: Iterator[bytes], *, max_bytes: int,
                   expect_sha256: str | None = None) -> tuple[str, int]:
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

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)


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
            raise TooLarge(f"upload is larger than the limit of {self.max_bytes} bytes",
                           hint="ask the operator to raise the limit")
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self, expect_sha256: str | None = None) -> tuple[str, int]:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = self._hash.hexdigest()
        if expect_sha256 is not None and digest != expect_sha256:
            self.abort()
            raise ValidationError("upload is incomplete or corrupt: its sha256 does not match the "
                                  "declared one", hint="retry the upload")
        final = self.store.path(digest)
        final.parent.mkdir(exist_ok=True)
        os.replace(self._tmp, final)
        return digest, self.size

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        Path(self._tmp).unlink(missing_ok=True)
