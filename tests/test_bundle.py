"""Plugin bundles: canonical packing, stable ids, and every trick unpack and pack refuse."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from cleanroom import bundle
from cleanroom.errors import BundleError, ValidationError
from cleanroom.sandbox import bundles as fmt

MANIFEST = b"""name = "demo"
version = "1.0.0"
kind = "preprocess"
entry = "plugin.py"
description = "a demo"

[params]
columns = { type = "array", items = "string", required = true }
"""
PLUGIN = b"from cleanroom.hookspecs import hookimpl\n\n\n@hookimpl\ndef preprocess(df, params):\n    return df\n"


def write_plugin(folder: Path, extra: dict[str, bytes] | None = None, order: int = 1) -> Path:
    files = {
        "cleanroom-plugin.toml": MANIFEST,
        "plugin.py": PLUGIN,
        "lib/helpers.py": b"X = 1\n",
        "README.md": b"# demo\n",
        **(extra or {}),
    }
    for rel in list(files)[::order]:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[rel])
    return folder


def files_of(**extra: bytes) -> dict[str, bytes]:
    return {"cleanroom-plugin.toml": MANIFEST, "plugin.py": PLUGIN, **extra}


def craft(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt_: int = tarfile.USTAR_FORMAT) -> bytes:
    """A tar archive holding exactly these members, whatever the rules say."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt_) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(
    name: str, data: bytes | None = b"x", type_: bytes = tarfile.REGTYPE, mode: int = 0o644, linkname: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = type_, mode, linkname, 0
    info.uname = info.gname = ""
    return info, data


def base_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [member("cleanroom-plugin.toml", MANIFEST), member("plugin.py", PLUGIN)]


# ---------------------------------------------------------------------------------------------- packing


def test_pack_is_stable_across_creation_order_times_modes_and_copies(tmp_path: Path) -> None:
    a = write_plugin(tmp_path / "a", order=1)
    b = write_plugin(tmp_path / "b", order=-1)
    os.utime(b / "plugin.py", (1_000_000, 1_000_000))
    (b / "README.md").chmod(0o600)
    (b / "lib").chmod(0o700)
    copy1 = shutil.copytree(a, tmp_path / "copy1")
    copy2 = shutil.copytree(b, tmp_path / "elsewhere" / "copy2", copy_function=shutil.copy)
    archives = {bundle.pack(folder) for folder in (a, b, copy1, copy2)}
    assert len(archives) == 1
    archive = archives.pop()
    parsed = bundle.unpack(archive)
    assert parsed.id == bundle.bundle_id(archive) == hashlib.sha256(archive).hexdigest()
    assert parsed.files["lib/helpers.py"] == b"X = 1\n" and parsed.manifest["name"] == "demo"


def test_archive_is_canonical_ustar(tmp_path: Path) -> None:
    archive = bundle.pack(write_plugin(tmp_path / "p"))
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert all(
        m.isreg() and m.mode == 0o644 and m.uid == m.gid == 0 and m.uname == m.gname == "" and m.mtime == 0
        for m in members
    )
    assert archive[257:263] == b"ustar\x00"


def test_the_archive_bytes_are_pinned() -> None:
    """Written byte by byte (not by tarfile, whose output changes between Python versions)."""
    archive = fmt.pack_files(files_of(**{"lib/" + "d" * 120 + "/x.py": b"1"}))
    pinned = "bcc2bab4341674d7c5b4b3ac88057887a9aeb10f46476a3f0173e1bcb8c8c9b7"
    assert hashlib.sha256(archive).hexdigest() == pinned
    assert len(archive) % tarfile.RECORDSIZE == 0


def test_pack_ignores_pycache_and_pyc_but_keeps_hidden_files(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "p", {".hidden": b"seen by reviewers\n"})
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "plugin.cpython-311.pyc").write_bytes(b"\x00")
    (folder / "stale.pyc").write_bytes(b"\x00")
    files = bundle.unpack(bundle.pack(folder)).files
    assert ".hidden" in files and not any("pyc" in p or "__pycache__" in p for p in files)


def test_pack_refuses_symlinks(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "p")
    (folder / "link.py").symlink_to(folder / "plugin.py")
    with pytest.raises(BundleError, match="symbolic link"):
        bundle.pack(folder)
    (folder / "link.py").unlink()
    (folder / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(BundleError, match="symbolic link"):
        bundle.pack(folder)


def test_pack_refuses_fifos_hardlinks_and_setuid(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "p")
    os.mkfifo(folder / "pipe")
    with pytest.raises(BundleError, match="fifo"):
        bundle.pack(folder)
    (folder / "pipe").unlink()
    os.link(folder / "README.md", folder / "again.md")
    with pytest.raises(BundleError, match="hard-linked"):
        bundle.pack(folder)
    (folder / "again.md").unlink()
    (folder / "README.md").chmod(0o644 | stat.S_ISUID)
    if os.stat(folder / "README.md").st_mode & stat.S_ISUID:  # some filesystems drop the bit
        with pytest.raises(BundleError, match="setuid"):
            bundle.pack(folder)


def test_pack_refuses_limits_native_code_and_bad_names(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "p")
    with pytest.raises(BundleError, match="more than 3 files"):
        bundle.pack(folder, max_files=3)
    with pytest.raises(BundleError, match="add up to more than"):
        bundle.pack(folder, max_total_bytes=200)
    with pytest.raises(BundleError, match="larger than"):
        bundle.pack(folder, max_archive_bytes=4096)
    bad = (("evil.so", "native"), ("has space.py", "character"), ("back\\slash.py", "backslash"))
    for name, message in bad:
        (folder / name).write_bytes(b"")
        with pytest.raises(BundleError, match=message):
            bundle.pack(folder)
        (folder / name).unlink()


def test_pack_needs_a_manifest_and_its_entry(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "p")
    (folder / "plugin.py").unlink()
    with pytest.raises(BundleError, match="entry 'plugin.py'"):
        bundle.pack(folder)
    (folder / "cleanroom-plugin.toml").unlink()
    with pytest.raises(BundleError, match="no cleanroom-plugin.toml"):
        bundle.load_manifest(folder)


# ---------------------------------------------------------------------------------------------- unpacking


@pytest.mark.parametrize(
    "extra, message",
    [
        (member("link.py", None, tarfile.SYMTYPE, linkname="/etc/passwd"), "symbolic link"),
        (member("hard.py", None, tarfile.LNKTYPE, linkname="plugin.py"), "hard link"),
        (member("tty", None, tarfile.CHRTYPE), "device"),
        (member("disk", None, tarfile.BLKTYPE), "device"),
        (member("pipe", None, tarfile.FIFOTYPE), "fifo"),
        (member("/etc/cron.d/x", b"x"), "absolute"),
        (member("../escape.py", b"x"), r"goes up a folder"),
        (member("lib/../../escape.py", b"x"), r"goes up a folder"),
        (member("back\\slash.py", b"x"), "backslash"),
        (member("bell\x07.py", b"x"), "control character"),
        (member("a/" * 99 + "long.py", b"x"), "longer than 200"),
        (member("suid.py", b"x", mode=0o4755), "setuid"),
        (member("sgid.py", b"x", mode=0o2644), "setuid, setgid"),
        (member("evil.cpython-311-x86_64-linux-gnu.so", b"\x7fELF"), "native"),
        (member("__pycache__/plugin.cpython-311.pyc", b"x"), "__pycache__"),
        (member("plugin.py", b"again"), "appears twice"),
    ],
)
def test_unpack_refuses_unsafe_members(extra: tuple[tarfile.TarInfo, bytes | None], message: str) -> None:
    archive = craft([*base_members(), extra], fmt_=tarfile.GNU_FORMAT)
    with pytest.raises(BundleError, match=message):
        bundle.unpack(archive)


def test_check_path_refuses_nul_and_empty_parts() -> None:
    bad = (("a\x00b.py", "NUL"), ("a//b.py", "empty"), ("./a.py", "empty or '.'"), ("", "empty"))
    for path, message in bad:
        with pytest.raises(fmt.BundleFormatError, match=message):
            fmt.check_path(path)


def test_unpack_refuses_too_many_files_and_too_large_archives() -> None:
    many = fmt.pack_files(files_of(**{f"f{i}.txt": b"" for i in range(10)}))
    with pytest.raises(BundleError, match="at most 5 files"):
        bundle.unpack(many, max_files=5)
    with pytest.raises(BundleError, match="larger than 1000 bytes"):
        bundle.unpack(many, max_archive_bytes=1000)


def test_unpack_counts_uncompressed_bytes() -> None:
    archive = fmt.pack_files(files_of(**{f"data{i}.txt": b"0" * 3000 for i in range(3)}))
    assert len(bundle.unpack(archive).files) == 5
    with pytest.raises(BundleError, match="unpacks to more than 5000 bytes"):
        bundle.unpack(archive, max_total_bytes=5000)


def test_unpack_refuses_a_sparse_bomb() -> None:
    """A GNU sparse member stores 512 bytes but expands to 10 GB: refused before any expansion."""
    info, _ = member("bomb.bin", None, tarfile.GNUTYPE_SPARSE)
    info.size = 512
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[386:410] = b"%011o\x00%011o\x00" % (0, 512)
    header[483:495] = b"%011o\x00" % (10 * 2**30)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    tail = craft(base_members(), fmt_=tarfile.GNU_FORMAT)
    archive = bytes(header) + b"\x00" * 512 + tail
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        assert tar.getmembers()[0].size == 10 * 2**30  # what a naive extractor would write
    with pytest.raises(BundleError, match="unsupported member type"):
        bundle.unpack(archive)


def test_unpack_refuses_a_member_that_declares_more_than_it_holds() -> None:
    archive = bytearray(fmt.pack_files(files_of(**{"big.txt": b"y" * 2000})))
    with pytest.raises(BundleError):
        bundle.unpack(bytes(archive[:2048]))


def test_unpack_refuses_compressed_archives_without_inflating_them() -> None:
    canonical = fmt.pack_files(files_of(**{"zeros.bin": b"\x00" * (4 * 2**20)}))
    squeezed = gzip.compress(canonical)
    assert len(squeezed) < 100_000
    with pytest.raises(BundleError, match="compressed"):
        bundle.unpack(squeezed)


Member = tuple[tarfile.TarInfo, bytes | None]


def with_attrs(item: Member, **attrs: object) -> Member:
    for key, value in attrs.items():
        setattr(item[0], key, value)
    return item


def pax_with_comment() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "hi"}) as tar:
        for info, data in base_members():
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


def test_unpack_refuses_non_canonical_archives() -> None:
    canonical = fmt.pack_files(files_of())
    assert bundle.unpack(canonical).id == hashlib.sha256(canonical).hexdigest()
    manifest = base_members()[0]
    variants = {
        "reordered": craft(base_members()[::-1]),
        "mtime": craft([manifest, with_attrs(member("plugin.py", PLUGIN), mtime=5)]),
        "mode": craft([manifest, member("plugin.py", PLUGIN, mode=0o600)]),
        "owner": craft([manifest, with_attrs(member("plugin.py", PLUGIN), uname="alice", uid=1000)]),
        "directory entry": craft(
            [
                manifest,
                member("lib", None, tarfile.DIRTYPE, mode=0o755),
                member("lib/x.py", b""),
                member("plugin.py", PLUGIN),
            ]
        ),
        "pax header": pax_with_comment(),
        "gnu format": craft(base_members(), fmt_=tarfile.GNU_FORMAT),
        "trailing data": canonical + b"\x00" * 512 + b"junk" * 128,
    }
    for label, archive in variants.items():
        assert archive != canonical, label
        with pytest.raises(BundleError, match="not canonical"):
            bundle.unpack(archive)


def test_unpack_checks_the_layout() -> None:
    with pytest.raises(BundleError, match="put the manifest at the top"):
        bundle.unpack(craft([member("demo/cleanroom-plugin.toml", MANIFEST), member("demo/plugin.py", PLUGIN)]))
    with pytest.raises(BundleError, match="entry 'plugin.py' is not in the bundle"):
        bundle.unpack(fmt.pack_files({"cleanroom-plugin.toml": MANIFEST, "other.py": PLUGIN}))
    with pytest.raises(fmt.BundleFormatError, match="both a file and a folder"):
        fmt.pack_files(files_of(lib=b"", **{"lib/x.py": b""}))
    with pytest.raises(BundleError, match="not a valid uncompressed tar"):
        bundle.unpack(b"this is not a tar archive" * 40)


# ---------------------------------------------------------------------------------------------- manifest


def manifest_with(**fields: str) -> bytes:
    base = {"name": '"demo"', "version": '"1.0.0"', "kind": '"preprocess"', "entry": '"plugin.py"'}
    base.update(fields)
    return "\n".join(f"{k} = {v}" for k, v in base.items() if v is not None).encode() + b"\n"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"name": '"Demo"'}, "name"),
        ({"name": '"d"'}, "name"),
        ({"name": '"-demo"'}, "name"),
        ({"version": '"one"'}, "version"),
        ({"version": '"1"'}, "version"),
        ({"kind": '"exporter"'}, "kind"),
        ({"entry": '"../plugin.py"'}, "entry"),
        ({"entry": '"plugin.txt"'}, "entry"),
        ({"entry": '"my-plugin.py"'}, "entry"),
        ({"author": '"me"'}, "unknown key 'author'"),
        ({"description": "3"}, "description"),
        ({"params": '"columns"'}, r"\[params\] must be a table"),
        ({"params": '{ Columns = { type = "string" } }'}, "param name"),
        ({"params": '{ x = { type = "text" } }'}, "type must be one of"),
        ({"params": '{ x = "string" }'}, "must be a table"),
        ({"params": '{ x = { type = "string", items = "string" } }'}, "items is only for arrays"),
        ({"params": '{ x = { type = "array", items = "thing" } }'}, "items.type"),
        ({"params": '{ x = { type = "boolean", enum = [true] } }'}, "enum is only"),
        ({"params": '{ x = { type = "string", enum = [] } }'}, "non-empty"),
        ({"params": '{ x = { type = "string", enum = ["a", 1] } }'}, "must be a string"),
        ({"params": '{ x = { type = "string", minimum = 1 } }'}, "minimum is only"),
        ({"params": '{ x = { type = "integer", minimum = 5, maximum = 1 } }'}, "above its maximum"),
        ({"params": '{ x = { type = "integer", default = "3" } }'}, "default must be an integer"),
        ({"params": '{ x = { type = "integer", default = 0, minimum = 1 } }'}, "at least 1"),
        ({"params": '{ x = { type = "string", required = true, default = "a" } }'}, "cannot have a default"),
        ({"params": '{ x = { type = "string", required = "yes" } }'}, "required must be"),
        ({"params": '{ x = { type = "string", help = "no" } }'}, "unknown key 'help'"),
        ({"name": None}, "name is required"),
        ({"entry": '"plugin.py'}, "cleanroom-plugin.toml"),
    ],
)
def test_bad_manifests_are_refused(fields: dict[str, str], message: str) -> None:
    archive = fmt.pack_files({"cleanroom-plugin.toml": manifest_with(**fields), "plugin.py": PLUGIN})
    with pytest.raises(BundleError, match=message):
        bundle.unpack(archive)


def test_manifest_errors_are_validation_errors(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "p", {"cleanroom-plugin.toml": manifest_with(kind='"exporter"')})
    with pytest.raises(ValidationError) as info:
        bundle.pack(folder)
    assert isinstance(info.value, BundleError) and info.value.status_code == 400


# ---------------------------------------------------------------------------------------------- params

SCHEMA = {
    "name": "demo",
    "params": {
        "columns": {"type": "array", "items": "string", "required": True},
        "strategy": {"type": "string", "enum": ["mean", "median"], "default": "median"},
        "k": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
        "alpha": {"type": "number", "minimum": 0},
        "flag": {"type": "boolean", "default": False},
        "extra": {"type": "object", "default": {}},
        "levels": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    },
}


def test_validate_params_fills_defaults_and_keeps_values() -> None:
    assert bundle.validate_params(SCHEMA, {"columns": ["a"]}) == {
        "columns": ["a"],
        "strategy": "median",
        "k": 3,
        "flag": False,
        "extra": {},
    }
    out = bundle.validate_params(SCHEMA, {"columns": [], "alpha": 2, "levels": [0, 4], "extra": {"a": [1, None]}})
    assert out["alpha"] == 2 and out["levels"] == [0, 4] and out["extra"] == {"a": [1, None]}
    assert bundle.validate_params({"name": "x"}, None) == {}


@pytest.mark.parametrize(
    "params, message",
    [
        ({}, "needs the param 'columns'"),
        ({"columns": ["a"], "colour": 1}, "no param 'colour'"),
        ({"columns": "a"}, "must be an array"),
        ({"columns": [1]}, r"columns'\[0\] must be a string"),
        ({"columns": [], "strategy": "mode"}, "must be one of 'mean', 'median'"),
        ({"columns": [], "k": 0}, "at least 1"),
        ({"columns": [], "k": 11}, "at most 10"),
        ({"columns": [], "k": 2.5}, "must be an integer"),
        ({"columns": [], "k": True}, "must be an integer"),
        ({"columns": [], "alpha": "1"}, "must be a number"),
        ({"columns": [], "alpha": float("nan")}, "at least 0|finite"),
        ({"columns": [], "flag": 1}, "must be a boolean"),
        ({"columns": [], "extra": []}, "table/object"),
        ({"columns": [], "extra": {"a": float("inf")}}, "finite"),
        ({"columns": [], "levels": [1, -1]}, "at least 0"),
    ],
)
def test_validate_params_refuses(params: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError, match=message) as info:
        bundle.validate_params(SCHEMA, params)
    assert not isinstance(info.value, BundleError)


# ---------------------------------------------------------------------------------------------- extract, diff


def test_extract_to_writes_files_and_never_replaces(tmp_path: Path) -> None:
    parsed = bundle.unpack(bundle.pack(write_plugin(tmp_path / "p")))
    dest = tmp_path / "out"
    dest.mkdir()
    bundle.extract_to(parsed, dest)
    assert (dest / "lib" / "helpers.py").read_bytes() == b"X = 1\n"
    with pytest.raises(BundleError, match="cannot extract"):
        bundle.extract_to(parsed, dest)
    other = tmp_path / "other"
    other.mkdir()
    (other / "lib").symlink_to(tmp_path / "elsewhere-target", target_is_directory=True)
    (tmp_path / "elsewhere-target").mkdir()
    with pytest.raises(BundleError, match="cannot extract 'lib/helpers.py'"):
        bundle.extract_to(parsed, other)
    assert not (tmp_path / "elsewhere-target" / "helpers.py").exists()


def test_diff_shows_every_changed_file(tmp_path: Path) -> None:
    old = bundle.unpack(bundle.pack(write_plugin(tmp_path / "a")))
    folder = write_plugin(
        tmp_path / "b",
        {"plugin.py": PLUGIN.replace(b"return df", b"return df.dropna()"), "new.py": b"Y = 2", "data.bin": b"\x00\x01"},
    )
    (folder / "README.md").unlink()
    new = bundle.unpack(bundle.pack(folder))
    text = bundle.diff(old, new)
    assert "--- a/plugin.py\n+++ b/plugin.py\n" in text
    assert "-    return df\n+    return df.dropna()\n" in text
    assert "--- /dev/null\n+++ b/new.py\n" in text and "\\ No newline at end of file" in text
    assert "--- a/README.md\n+++ /dev/null\n" in text
    assert "Binary files /dev/null and b/data.bin differ" in text
    assert bundle.diff(old, old) == ""
