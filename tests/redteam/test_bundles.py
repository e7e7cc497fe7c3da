"""Malicious plugin bundles (checklist B.22, B.23): slips, links, devices, bombs, non-canonical archives.

Each archive is refused by `cleanroom.bundle.unpack` (what the API and the compute phase use) and by
`POST /plugins`, which then stores nothing. The control is a canonical bundle of the same plugin.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from cleanroom import bundle
from cleanroom.errors import BundleError

MANIFEST = b'name = "evil-bundle"\nversion = "1.0.0"\nkind = "preprocess"\nentry = "plugin.py"\n'
PLUGIN = b"from cleanroom.hookspecs import hookimpl\n\n\n@hookimpl\ndef preprocess(df, params):\n    return df\n"


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = mode, 0, 0, 0, "", ""
    return info, data


def _special(name: str, kind: bytes, **attrs: Any) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, 0o644, 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, None


def _base() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [_file("cleanroom-plugin.toml", MANIFEST), _file("plugin.py", PLUGIN)]


def _with(*extra: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    return _tar(_base() + list(extra), fmt)


def _pax_path_override() -> bytes:
    info, data = _file("innocent.py", b"x = 1\n")
    info.pax_headers = {"path": "../../escaped.py"}
    return _tar(_base() + [(info, data)], tarfile.PAX_FORMAT)


def _declared_huge() -> bytes:
    """A header claiming a terabyte-sized member (a 'tar bomb' by its header) with no data behind it."""
    archive = bytearray(_with(_file("big.py", b"y" * 512)))
    header = archive.index(b"big.py")
    size_field = header + 124
    archive[size_field : size_field + 12] = b"17777777777\0"
    checksum = sum(archive[header : header + 148]) + 8 * 32 + sum(archive[header + 156 : header + 512])
    archive[header + 148 : header + 156] = f"{checksum:06o}\0 ".encode()
    return bytes(archive)


def _gzip_bomb() -> bytes:
    inner = _with(_file("zeros.py", b"#" * (40 * 2**20)))
    return gzip.compress(inner, compresslevel=9)


def _zip_slip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("cleanroom-plugin.toml", MANIFEST)
        z.writestr("plugin.py", PLUGIN)
        z.writestr("../../escaped.py", b"x")
    return buf.getvalue()


def _many_files() -> bytes:
    return _with(*[_file(f"m{i}.py", b"") for i in range(bundle.MAX_FILES + 5)])


ATTACKS: dict[str, Callable[[], bytes]] = {
    "dot-dot slip": lambda: _with(_file("../../escaped.py", b"import os\n")),
    "nested slip": lambda: _with(_file("pkg/../../escaped.py", b"x")),
    "absolute path": lambda: _with(_file("/etc/cron.d/cleanroom", b"* * * * * root sh\n")),
    "pax path override": _pax_path_override,
    "symlink member": lambda: _with(_special("data.py", tarfile.SYMTYPE, linkname="/etc/shadow")),
    "hardlink member": lambda: _with(_special("again.py", tarfile.LNKTYPE, linkname="plugin.py")),
    "char device": lambda: _with(_special("mem.py", tarfile.CHRTYPE, devmajor=1, devminor=1)),
    "fifo": lambda: _with(_special("pipe.py", tarfile.FIFOTYPE)),
    "directory entry": lambda: _with(_special("pkg", tarfile.DIRTYPE)),
    "setuid file": lambda: _with(_file("tool.py", b"x", mode=0o4755)),
    "native code": lambda: _with(_file("evil.so", b"\x7fELF")),
    "pycache bytecode": lambda: _with(_file("__pycache__/plugin.cpython-311.pyc", b"\x00")),
    "duplicate member": lambda: _with(_file("plugin.py", b"import os; os.system('id')\n")),
    "control char name": lambda: _with(_file("evil\n.py", b"x")),
    "too many files": _many_files,
    "declared terabyte member": _declared_huge,
    "gzip bomb": _gzip_bomb,
    "zip archive with slip": _zip_slip,
    "trailing data": lambda: _with() + b"\0" * 512 + b"smuggled",
}


def _canonical(tmp_path: Path) -> bytes:
    folder = tmp_path / "good"
    folder.mkdir()
    (folder / "cleanroom-plugin.toml").write_bytes(MANIFEST.replace(b"evil-bundle", b"good-bundle"))
    (folder / "plugin.py").write_bytes(PLUGIN)
    return bundle.pack(folder)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_malicious_archive_is_refused_by_unpack(attack: str, tmp_path: Path) -> None:
    archive = ATTACKS[attack]()
    with pytest.raises(BundleError):
        bundle.unpack(archive)
    assert bundle.unpack(_canonical(tmp_path)).name == "good-bundle"  # control


def test_malicious_archives_are_refused_by_the_api_and_store_nothing(room: Any, tmp_path: Path) -> None:
    analyst = room.org("bundler", "analyst")
    before = sorted(
        p.relative_to(room.settings.data_dir)
        for p in room.settings.data_dir.rglob("*")
        if p.is_file() and "audit" not in p.name
    )
    audit_before = len(list(room.admin.audit_events()))
    for attack, make in sorted(ATTACKS.items()):
        resp = analyst.http.post("/plugins", content=make(), headers={"content-type": "application/x-tar"})
        assert resp.status_code in (400, 413), (attack, resp.status_code, resp.text[:200])
        assert resp.json()["error"] in ("invalid_bundle", "too_large", "invalid_input"), attack
    assert analyst.list_plugins() == []
    after = sorted(
        p.relative_to(room.settings.data_dir)
        for p in room.settings.data_dir.rglob("*")
        if p.is_file() and "audit" not in p.name
    )
    assert [p for p in after if p not in before and "blob" in str(p)] == []
    assert len(list(room.admin.audit_events())) == audit_before  # no plugin.submitted event
    assert not list(tmp_path.parent.rglob("escaped.py"))
    # control: the canonical bundle is accepted
    created = analyst.http.post("/plugins", content=_canonical(tmp_path), headers={"content-type": "application/x-tar"})
    assert created.status_code == 201, created.text


def test_an_oversized_upload_is_cut_off(room: Any) -> None:
    analyst = room.org("bulker", "analyst")

    def body() -> Any:
        chunk = b"\0" * 2**20
        for _ in range(64):  # 64 MiB, far over the 5 MiB bundle cap
            yield chunk

    try:
        resp = analyst.http.post("/plugins", content=body(), headers={"content-type": "application/x-tar"})
    except httpx.TransportError:
        return  # the server hung up on the stream: also a refusal
    assert resp.status_code == 413
    assert analyst.list_plugins() == []


def test_pack_refuses_links_and_special_files_in_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "linky"
    folder.mkdir()
    (folder / "cleanroom-plugin.toml").write_bytes(MANIFEST.replace(b"evil-bundle", b"linky"))
    (folder / "plugin.py").write_bytes(PLUGIN)
    assert bundle.unpack(bundle.pack(folder)).name == "linky"  # control
    (folder / "secret.py").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="symbolic link"):
        bundle.pack(folder)
    (folder / "secret.py").unlink()
    os.link(folder / "plugin.py", tmp_path / "outside.py")
    with pytest.raises(BundleError, match="hard-linked"):
        bundle.pack(folder)
    (tmp_path / "outside.py").unlink()
    os.mkfifo(folder / "pipe.py")
    with pytest.raises(BundleError, match="fifo"):
        bundle.pack(folder)  # and it did not hang opening the FIFO


def test_extract_never_writes_outside_or_through_links(tmp_path: Path) -> None:
    good = bundle.unpack(_canonical(tmp_path))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "plugin.py").symlink_to(tmp_path / "target.py")  # planted before extraction
    with pytest.raises(BundleError):
        bundle.extract_to(good, dest)
    assert not (tmp_path / "target.py").exists()
    forged = bundle.Bundle(id=good.id, manifest=good.manifest, files={**good.files, "../escaped.py": b"x"})
    clean = tmp_path / "clean"
    clean.mkdir()
    with pytest.raises(BundleError):
        bundle.extract_to(forged, clean)
    assert not (tmp_path / "escaped.py").exists()
    control = tmp_path / "control"
    control.mkdir()
    bundle.extract_to(good, control)
    assert (control / "plugin.py").read_bytes() == PLUGIN
