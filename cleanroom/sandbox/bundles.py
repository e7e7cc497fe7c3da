"""Plugin bundles as the sandbox sees them: the canonical archive, the manifest, the params schema.

Stdlib only, because the compute phase unpacks bundles too. `cleanroom.bundle` wraps these functions
for the server side and turns `BundleFormatError` / `ParamsError` into the project's error tree.

A bundle's archive is canonical: uncompressed POSIX ustar, regular files only, sorted by path, mode
0644, uid/gid 0, empty owner names, mtime 0, no directory entries, padded to whole 10 KiB records.
The headers are written here byte by byte so that the same files give the same bytes (and plugin id)
on any machine and any Python version. `unpack` re-packs what it read and
refuses the archive unless the bytes are identical, so gzip, directory entries, links, odd modes,
pax attributes or trailing data never get through: the sha256 of those bytes is the plugin id that
owners approve.
"""

from __future__ import annotations

import copy
import io
import math
import os
import re
import tarfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from cleanroom.sandbox.hashing import digest
from cleanroom.sandbox.vocabulary import PLUGIN_NAME, STEP_KINDS

MANIFEST = "cleanroom-plugin.toml"
KINDS = STEP_KINDS
MAX_ARCHIVE_BYTES = 5 * 2**20
MAX_TOTAL_BYTES = 20 * 2**20
MAX_FILES = 200
MAX_PATH = 200
MAX_MANIFEST_BYTES = 64 * 1024
MAX_DESCRIPTION = 2000
VERSION_RE = re.compile(r"^\d{1,9}\.\d{1,9}(\.\d{1,9})?(-[0-9A-Za-z.-]{1,32})?(\+[0-9A-Za-z.-]{1,32})?$")
ENTRY_RE = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*/)*[A-Za-z_][A-Za-z0-9_]*\.py$")
PART_RE = re.compile(r"^[A-Za-z0-9._+-]+$")
PARAM_RE = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
# Files Python could import without a reviewable source: refused in any bundle.
NATIVE_SUFFIXES = (".so", ".pyd", ".pyc", ".pyo", ".dll", ".dylib")
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")
MANIFEST_KEYS = ("name", "version", "kind", "entry", "description", "params")
TYPES = ("string", "integer", "number", "boolean", "array", "object")
SCHEMA_KEYS = ("type", "description", "required", "default", "items", "enum", "minimum", "maximum")
ITEM_KEYS = ("type", "description", "items", "enum", "minimum", "maximum")
PYTHON_TYPES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "array": "an array",
    "object": "a table/object",
}


class BundleFormatError(ValueError):
    """The archive, a file path or the manifest breaks a bundle rule."""


class ParamsError(ValueError):
    """Params do not match the manifest's params schema."""


@dataclass(frozen=True)
class Bundle:
    """An unpacked bundle, in memory: its id (sha256 of the archive), manifest and files."""

    id: str
    manifest: dict[str, Any]
    files: dict[str, bytes]

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def entry(self) -> str:
        return str(self.manifest["entry"])


def bundle_id(archive: bytes) -> str:
    """The plugin id: sha256 hex of the canonical archive bytes."""
    return digest(archive)


# ---------------------------------------------------------------------------------------------- paths


def check_path(path: str) -> str:
    """Refuse a member path that is not a plain relative path of safe characters."""
    if not isinstance(path, str) or not path:
        raise BundleFormatError("a file path is empty")
    shown = repr(path[:80])
    if "\x00" in path:
        raise BundleFormatError(f"file path {shown} contains a NUL byte")
    if "\\" in path:
        raise BundleFormatError(f"file path {shown} contains a backslash")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise BundleFormatError(f"file path {shown} contains a control character")
    if path.startswith("/"):
        raise BundleFormatError(f"file path {shown} is absolute")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH:
        raise BundleFormatError(f"file path {shown} is longer than {MAX_PATH} bytes")
    for part in path.split("/"):
        if part == "..":
            raise BundleFormatError(f"file path {shown} goes up a folder ('..')")
        if part in ("", "."):
            raise BundleFormatError(f"file path {shown} has an empty or '.' component")
        if not PART_RE.fullmatch(part):
            raise BundleFormatError(f"file path {shown} has a character outside letters, digits and . _ + -")
        if part == "__pycache__":
            raise BundleFormatError(f"file path {shown} is inside __pycache__")
    if path.lower().endswith(NATIVE_SUFFIXES):
        raise BundleFormatError(f"file {shown} is compiled or native code; bundles hold source only")
    return path


def check_layout(
    files: Mapping[str, bytes], *, max_files: int = MAX_FILES, max_total_bytes: int = MAX_TOTAL_BYTES
) -> None:
    """Paths, counts, sizes and file/folder clashes of a set of bundle files."""
    if len(files) > max_files:
        raise BundleFormatError(f"a bundle holds at most {max_files} files (this one has {len(files)})")
    total = 0
    folders: set[str] = set()
    for path, data in files.items():
        check_path(path)
        total += len(data)
        parts = path.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    if total > max_total_bytes:
        raise BundleFormatError(f"the bundle's files add up to more than {max_total_bytes} bytes")
    clash = sorted(folders & set(files))
    if clash:
        raise BundleFormatError(f"{clash[0]!r} is both a file and a folder")
    if MANIFEST not in files:
        nested = sorted(p for p in files if p.endswith("/" + MANIFEST))
        hint = f" (found {nested[0]!r}: put the manifest at the top of the bundle)" if nested else ""
        raise BundleFormatError(f"the bundle has no {MANIFEST}{hint}")


# ---------------------------------------------------------------------------------------------- archive


def _ustar_header(path: str, size: int) -> bytes:
    """One POSIX ustar header, written here rather than by `tarfile`, whose output varies by version."""
    name, prefix = path.encode("utf-8"), b""
    if len(name) > 100:  # split at the first "/" that leaves a prefix <= 155 and a name <= 100 bytes
        cuts = [i for i, byte in enumerate(name) if byte == 0x2F and i <= 155 and len(name) - i - 1 <= 100]
        if not cuts:
            raise BundleFormatError(f"file path {path!r} does not fit a ustar header (a part is too long)")
        name, prefix = name[cuts[0] + 1 :], name[: cuts[0]]
    header = b"".join(
        [
            name.ljust(100, b"\0"),
            b"0000644\0",
            b"0000000\0",
            b"0000000\0",
            b"%011o\0" % size,
            b"00000000000\0",
            b" " * 8,
            tarfile.REGTYPE,
            b"\0" * 100,
            b"ustar\x0000",
            b"\0" * 64,
            b"\0" * 16,
            prefix.ljust(155, b"\0"),
            b"\0" * 12,  # no device numbers: not a device
        ]
    )
    return header[:148] + b"%06o\0 " % sum(header) + header[156:]


def pack_files(
    files: Mapping[str, bytes],
    *,
    max_archive_bytes: int = MAX_ARCHIVE_BYTES,
    max_files: int = MAX_FILES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> bytes:
    """The canonical archive of `files` ({path: bytes})."""
    check_layout(files, max_files=max_files, max_total_bytes=max_total_bytes)
    parts = []
    for path in sorted(files):
        data = files[path]
        parts += [_ustar_header(path, len(data)), data, b"\0" * (-len(data) % 512)]
    parts.append(b"\0" * 1024)  # end of archive, then padding to a whole tar record like tar(1)
    archive = b"".join(parts)
    archive += b"\0" * (-len(archive) % tarfile.RECORDSIZE)
    if len(archive) > max_archive_bytes:
        raise BundleFormatError(f"the bundle archive is larger than {max_archive_bytes} bytes")
    return archive


def _member_kind(member: tarfile.TarInfo) -> str | None:
    """What is wrong with a member's type, or None for a plain regular file."""
    if member.issym():
        return "a symbolic link"
    if member.islnk():
        return "a hard link"
    if member.ischr() or member.isblk():
        return "a device file"
    if member.isfifo():
        return "a fifo"
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.sparse is not None:
        return f"an unsupported member type {member.type!r}"
    return None


def _read_capped(fh: IO[bytes], remaining: int, max_total_bytes: int) -> bytes:
    chunks, size = [], 0
    while chunk := fh.read(1 << 16):
        size += len(chunk)
        if size > remaining:
            raise BundleFormatError(f"the bundle unpacks to more than {max_total_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def unpack(
    archive: bytes,
    *,
    max_archive_bytes: int = MAX_ARCHIVE_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_files: int = MAX_FILES,
) -> Bundle:
    """Validate a canonical bundle archive and return it in memory."""
    if not isinstance(archive, bytes | bytearray):
        raise BundleFormatError("a bundle archive is bytes")
    archive = bytes(archive)
    if len(archive) > max_archive_bytes:
        raise BundleFormatError(f"the bundle archive is larger than {max_archive_bytes} bytes")
    if archive.startswith(COMPRESSED_MAGIC):
        raise BundleFormatError("the bundle archive is compressed; a bundle is an uncompressed tar")
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            for member in tar:
                if len(files) >= max_files:
                    raise BundleFormatError(f"a bundle holds at most {max_files} files")
                if member.isdir():
                    continue  # not canonical: refused by the re-pack comparison below
                problem = _member_kind(member)
                if problem:
                    raise BundleFormatError(
                        f"member {member.name[:80]!r} is {problem}; bundles hold regular files only"
                    )
                check_path(member.name)
                if member.mode & 0o7000:
                    raise BundleFormatError(f"member {member.name!r} has a setuid, setgid or sticky bit")
                if member.name in files:
                    raise BundleFormatError(f"member {member.name!r} appears twice")
                if member.size > max_total_bytes - total:
                    raise BundleFormatError(f"the bundle unpacks to more than {max_total_bytes} bytes")
                fh = tar.extractfile(member)
                assert fh is not None
                data = _read_capped(fh, max_total_bytes - total, max_total_bytes)
                total += len(data)
                files[member.name] = data
    except tarfile.TarError as exc:
        raise BundleFormatError(f"not a valid uncompressed tar archive: {exc}") from None
    if not files:
        raise BundleFormatError("the bundle archive holds no files")
    check_layout(files, max_files=max_files, max_total_bytes=max_total_bytes)
    canonical = pack_files(
        files,
        max_archive_bytes=max(max_archive_bytes, len(archive)),
        max_files=max_files,
        max_total_bytes=max_total_bytes,
    )
    if canonical != archive:
        raise BundleFormatError(
            "the archive is not canonical (order, modes, owners, times, extra headers or "
            "trailing data differ): make bundles with `cleanroom.bundle.pack`"
        )
    manifest = parse_manifest(files[MANIFEST])
    if manifest["entry"] not in files:
        raise BundleFormatError(f"the manifest's entry {manifest['entry']!r} is not in the bundle")
    return Bundle(id=bundle_id(archive), manifest=manifest, files=files)


def extract_to(bundle: Bundle, dest_dir: str | os.PathLike[str]) -> None:
    """Write the bundle's files under an existing `dest_dir`, never following or replacing anything."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    root = os.open(dest_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for path, data in sorted(bundle.files.items()):
            check_path(path)
            parts = path.split("/")
            opened: list[int] = []
            dirfd = root
            try:
                for part in parts[:-1]:
                    try:
                        os.mkdir(part, 0o755, dir_fd=dirfd)
                    except FileExistsError:
                        pass
                    dirfd = os.open(part, flags, dir_fd=dirfd)
                    opened.append(dirfd)
                fd = os.open(
                    parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dirfd
                )
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
            except OSError as exc:
                raise BundleFormatError(f"cannot extract {path!r}: {exc.strerror}") from None
            finally:
                for fd in opened:
                    os.close(fd)
    finally:
        os.close(root)


# ---------------------------------------------------------------------------------------------- manifest


def parse_manifest(data: bytes) -> dict[str, Any]:
    """Parse and validate `cleanroom-plugin.toml`."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleFormatError(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise BundleFormatError(f"{MANIFEST} is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise BundleFormatError(f"{MANIFEST}: {exc}") from None
    return check_manifest(raw)


def check_manifest(raw: Any) -> dict[str, Any]:
    """Validate a parsed manifest; return it unchanged."""
    if not isinstance(raw, dict):
        raise BundleFormatError(f"{MANIFEST} must be a table")
    unknown = sorted(set(raw) - set(MANIFEST_KEYS))
    if unknown:
        raise BundleFormatError(f"{MANIFEST}: unknown key {unknown[0]!r} (allowed: {', '.join(MANIFEST_KEYS)})")
    for key in ("name", "version", "kind", "entry"):
        if not isinstance(raw.get(key), str):
            raise BundleFormatError(f"{MANIFEST}: {key} is required and must be a string")
    if not PLUGIN_NAME.fullmatch(raw["name"]):
        raise BundleFormatError(
            f"{MANIFEST}: name {raw['name'][:80]!r} must be 2-64 of a-z, 0-9 and '-', starting with a letter or digit"
        )
    if not VERSION_RE.fullmatch(raw["version"]):
        raise BundleFormatError(f"{MANIFEST}: version {raw['version'][:80]!r} is not like 1.2.3")
    if raw["kind"] not in KINDS:
        raise BundleFormatError(f"{MANIFEST}: kind {raw['kind'][:80]!r} must be one of {', '.join(KINDS)}")
    if len(raw["entry"]) > MAX_PATH or not ENTRY_RE.fullmatch(raw["entry"]):
        raise BundleFormatError(
            f"{MANIFEST}: entry {raw['entry'][:80]!r} must be a relative path to a .py "
            "file whose parts are Python identifiers"
        )
    description = raw.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise BundleFormatError(f"{MANIFEST}: description must be a string of at most {MAX_DESCRIPTION} characters")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise BundleFormatError(f"{MANIFEST}: [params] must be a table of param name = {{ type = ... }}")
    for name, schema in params.items():
        if not PARAM_RE.fullmatch(name):
            raise BundleFormatError(f"{MANIFEST}: param name {name[:80]!r} must be a lowercase identifier")
        _check_schema(f"params.{name}", schema, top=True)
    return raw


def _item_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    items = schema.get("items")
    return {"type": items} if isinstance(items, str) else items


def _check_schema(where: str, schema: Any, *, top: bool) -> None:
    if not isinstance(schema, dict):
        raise BundleFormatError(f'{MANIFEST}: {where} must be a table like {{ type = "string" }}')
    allowed = SCHEMA_KEYS if top else ITEM_KEYS
    unknown = sorted(set(schema) - set(allowed))
    if unknown:
        raise BundleFormatError(f"{MANIFEST}: {where} has unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")
    kind = schema.get("type")
    if kind not in TYPES:
        raise BundleFormatError(f"{MANIFEST}: {where}.type must be one of {', '.join(TYPES)}")
    if not isinstance(schema.get("required", False), bool):
        raise BundleFormatError(f"{MANIFEST}: {where}.required must be true or false")
    if not isinstance(schema.get("description", ""), str):
        raise BundleFormatError(f"{MANIFEST}: {where}.description must be a string")
    if "items" in schema:
        if kind != "array":
            raise BundleFormatError(f"{MANIFEST}: {where}.items is only for arrays")
        _check_schema(f"{where}.items", _item_schema(schema), top=False)
    if "enum" in schema:
        enum = schema["enum"]
        if kind not in ("string", "integer", "number"):
            raise BundleFormatError(f"{MANIFEST}: {where}.enum is only for strings and numbers")
        if not isinstance(enum, list) or not enum:
            raise BundleFormatError(f"{MANIFEST}: {where}.enum must be a non-empty array")
        plain = {k: v for k, v in schema.items() if k in ("type", "items")}
        for value in enum:
            _as_schema_error(f"{where}.enum", value, plain)
    for bound in ("minimum", "maximum"):
        if bound in schema:
            value = schema[bound]
            if kind not in ("integer", "number"):
                raise BundleFormatError(f"{MANIFEST}: {where}.{bound} is only for integers and numbers")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise BundleFormatError(f"{MANIFEST}: {where}.{bound} must be a finite number")
    if "minimum" in schema and "maximum" in schema and schema["minimum"] > schema["maximum"]:
        raise BundleFormatError(f"{MANIFEST}: {where}.minimum is above its maximum")
    if "default" in schema:
        if schema.get("required"):
            raise BundleFormatError(f"{MANIFEST}: {where} is required, so it cannot have a default")
        _as_schema_error(f"{where}.default", schema["default"], schema)


def _as_schema_error(where: str, value: Any, schema: dict[str, Any]) -> None:
    try:
        check_value(where, value, schema)
    except ParamsError as exc:
        raise BundleFormatError(f"{MANIFEST}: {exc}") from None


# ---------------------------------------------------------------------------------------------- params


def _check_json(where: str, value: Any, depth: int = 0) -> Any:
    if depth > 32:
        raise ParamsError(f"{where} is nested too deeply")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ParamsError(f"{where} must be a finite number")
        return value
    if isinstance(value, list):
        return [_check_json(f"{where}[{i}]", v, depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ParamsError(f"{where} must have string keys")
        return {k: _check_json(f"{where}.{k}", v, depth + 1) for k, v in value.items()}
    raise ParamsError(f"{where} has a value of type {type(value).__name__}, which JSON cannot hold")


def check_value(where: str, value: Any, schema: dict[str, Any]) -> Any:
    """Check one value against one (well-formed) schema; return a copy of it."""
    kind = schema["type"]
    ok = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }[kind]
    if not ok:
        raise ParamsError(f"{where} must be {PYTHON_TYPES[kind]}, not {type(value).__name__}")
    if kind == "array":
        items = _item_schema(schema)
        if items is not None:
            return [check_value(f"{where}[{i}]", v, items) for i, v in enumerate(value)]
    value = _check_json(where, value)
    if "enum" in schema and value not in schema["enum"]:
        raise ParamsError(f"{where} must be one of {', '.join(map(repr, schema['enum']))}")
    if "minimum" in schema and value < schema["minimum"]:
        raise ParamsError(f"{where} must be at least {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        raise ParamsError(f"{where} must be at most {schema['maximum']}")
    return value


def validate_params(manifest: Mapping[str, Any], params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check `params` against the manifest's schema; return them with defaults filled in."""
    schema = manifest.get("params") or {}
    params = {} if params is None else params
    plugin = manifest.get("name", "the plugin")
    if not isinstance(params, Mapping):
        raise ParamsError(f"params of {plugin} must be a table/object")
    unknown = sorted(set(params) - set(schema))
    if unknown:
        known = ", ".join(sorted(schema)) or "none"
        raise ParamsError(f"{plugin} has no param {unknown[0]!r} (its params: {known})")
    out: dict[str, Any] = {}
    for name, spec in schema.items():
        if name in params:
            out[name] = check_value(f"param {name!r}", params[name], spec)
        elif spec.get("required"):
            raise ParamsError(f"{plugin} needs the param {name!r}")
        elif "default" in spec:
            out[name] = copy.deepcopy(spec["default"])
    return out
