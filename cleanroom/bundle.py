"""Plugin bundles: pack a folder into its canonical archive, unpack and validate one, diff two.

A plugin's id is the sha256 of its canonical archive (see `cleanroom.sandbox.bundles` for the format),
so the same folder gives the same id on any machine, whatever the order its files were created in.
`pack` takes every file of the folder except `__pycache__/` folders and `*.pyc` files; it refuses
symbolic links, hard-linked files, devices, fifos, sockets, setuid/setgid files, native code and
folders over the limits. Hidden files are packed like any other file (reviewers see them).

Stdlib only (plus `cleanroom.errors`): the pieces the sandbox needs live in `cleanroom.sandbox.bundles`.
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from cleanroom.errors import BundleError, ValidationError
from cleanroom.sandbox import bundles as _fmt
from cleanroom.sandbox.bundles import (
    KINDS,
    MANIFEST,
    MAX_ARCHIVE_BYTES,
    MAX_FILES,
    MAX_TOTAL_BYTES,
    Bundle,
    bundle_id,
)
from cleanroom.sandbox.hashing import digest

__all__ = [
    "KINDS",
    "MANIFEST",
    "MAX_ARCHIVE_BYTES",
    "MAX_FILES",
    "MAX_TOTAL_BYTES",
    "Bundle",
    "bundle_id",
    "diff",
    "extract_to",
    "load_manifest",
    "pack",
    "read_folder",
    "unpack",
    "validate_params",
]

IGNORED_DIRS = frozenset({"__pycache__"})
IGNORED_SUFFIXES = (".pyc",)
T = TypeVar("T")


def _translated(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return func(*args, **kwargs)
    except _fmt.ParamsError as exc:
        raise ValidationError(str(exc)) from None
    except _fmt.BundleFormatError as exc:
        raise BundleError(str(exc)) from None


def load_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate the manifest of a plugin folder (and check that its entry file exists)."""
    root = Path(folder)
    path = root / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise BundleError(f"{root.name or root}: no {MANIFEST} file in the plugin folder")
    manifest = _translated(_fmt.parse_manifest, _read_regular(path, root, _fmt.MAX_MANIFEST_BYTES))
    entry = root / manifest["entry"]
    if entry.is_symlink() or not entry.is_file():
        raise BundleError(f"the manifest's entry {manifest['entry']!r} is not a file in the plugin folder")
    return manifest


def _read_regular(path: Path, root: Path, cap: int) -> bytes:
    rel = path.relative_to(root).as_posix()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise BundleError(f"cannot read {rel}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{rel} is not a regular file")
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise BundleError(f"{rel} is larger than {cap} bytes")
    return data


def read_folder(
    folder: str | os.PathLike[str], *, max_files: int = MAX_FILES, max_total_bytes: int = MAX_TOTAL_BYTES
) -> dict[str, bytes]:
    """The files `pack` takes from a folder, as {relative posix path: bytes}."""
    root = Path(folder)
    if not root.is_dir():
        raise BundleError(f"{folder} is not a folder")
    files: dict[str, bytes] = {}
    total = 0
    pending = [root]
    while pending:
        current = pending.pop()
        with os.scandir(current) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                path = Path(entry.path)
                rel = path.relative_to(root).as_posix()
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    raise BundleError(f"{rel} is a symbolic link; bundles hold regular files only")
                if stat.S_ISDIR(info.st_mode):
                    if entry.name not in IGNORED_DIRS:
                        pending.append(path)
                    continue
                if entry.name.endswith(IGNORED_SUFFIXES):
                    continue
                if not stat.S_ISREG(info.st_mode):
                    raise BundleError(f"{rel} is a device, fifo or socket; bundles hold regular files only")
                if info.st_nlink > 1:
                    raise BundleError(f"{rel} is hard-linked ({info.st_nlink} names); copy it instead")
                if info.st_mode & (stat.S_ISUID | stat.S_ISGID):
                    raise BundleError(f"{rel} has a setuid or setgid bit")
                _translated(_fmt.check_path, rel)
                if len(files) >= max_files:
                    raise BundleError(f"the folder holds more than {max_files} files")
                if info.st_size > max_total_bytes - total:
                    raise BundleError(f"the folder's files add up to more than {max_total_bytes} bytes")
                data = _read_regular(path, root, max_total_bytes - total)
                total += len(data)
                files[rel] = data
    return files


def pack(
    folder: str | os.PathLike[str],
    *,
    max_archive_bytes: int = MAX_ARCHIVE_BYTES,
    max_files: int = MAX_FILES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> bytes:
    """The canonical archive of a plugin folder; its sha256 is the plugin id."""
    load_manifest(folder)
    files = read_folder(folder, max_files=max_files, max_total_bytes=max_total_bytes)
    archive = _translated(
        _fmt.pack_files,
        files,
        max_archive_bytes=max_archive_bytes,
        max_files=max_files,
        max_total_bytes=max_total_bytes,
    )
    # The folder may have changed under us, or hold something only unpack checks: verify the result.
    unpack(archive, max_archive_bytes=max_archive_bytes, max_files=max_files, max_total_bytes=max_total_bytes)
    return archive


def unpack(
    archive: bytes,
    *,
    max_archive_bytes: int = MAX_ARCHIVE_BYTES,
    max_files: int = MAX_FILES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> Bundle:
    """Validate a canonical bundle archive and return it in memory (manifest + {path: bytes})."""
    return _translated(
        _fmt.unpack, archive, max_archive_bytes=max_archive_bytes, max_files=max_files, max_total_bytes=max_total_bytes
    )


def extract_to(bundle: Bundle, dest_dir: str | os.PathLike[str]) -> None:
    """Write the bundle's files under `dest_dir`, never following links or replacing files."""
    _translated(_fmt.extract_to, bundle, dest_dir)


def validate_params(manifest: Mapping[str, Any], params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check params against the manifest's params schema; return them with defaults filled in."""
    return _translated(_fmt.validate_params, manifest, params)


def _text(data: bytes) -> list[str] | None:
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def diff(old: Bundle, new: Bundle) -> str:
    """A unified diff of every file that differs between two bundles, for reviewers."""
    out: list[str] = []
    for path in sorted(set(old.files) | set(new.files)):
        before, after = old.files.get(path), new.files.get(path)
        if before == after:
            continue
        a = f"a/{path}" if before is not None else "/dev/null"
        b = f"b/{path}" if after is not None else "/dev/null"
        lines_a = _text(before) if before is not None else []
        lines_b = _text(after) if after is not None else []
        if lines_a is None or lines_b is None:
            digests = [digest(d)[:16] if d is not None else "none" for d in (before, after)]
            out.append(f"Binary files {a} and {b} differ (sha256 {digests[0]} -> {digests[1]})\n")
            continue
        for line in difflib.unified_diff(lines_a, lines_b, fromfile=a, tofile=b):
            out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)
