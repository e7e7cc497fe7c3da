#!/usr/bin/env python3
"""Build the cleanroom images: base -> wheelhouse -> sandbox and app images -> env files.

    python3 containers/build.py [--only sandbox|app] [--base-image IMAGE] [--prune]

Stdlib only, any python3. Every step is skipped when its output already exists for the same inputs,
so a second run only hashes files and asks the engine whether the tags exist:

1. Base image. `CLEANROOM_BASE_IMAGE` (or `--base-image`) when it is present or can be pulled;
   otherwise Debian built here with debootstrap and `docker import`, tagged by a hash of its recipe.
2. Wheelhouse. `containers/wheelhouse/` filled by `pip download` on the host, because containers
   may not reach the package index during `docker build` (TLS interception, no registry).
3. `cleanroom-sandbox:<hash>` and `cleanroom-app:<hash>`, where <hash> covers everything that goes
   into the image: Dockerfile, requirement files, base image id and the source files it copies.
4. `containers/.build/images.env` and the compose `.env` at the repo root name the three images.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPT_VERSION = "1"
ROOT = Path(__file__).resolve().parent.parent

# The debootstrap recipe; any change here gives the base image a new tag.
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_REPO = "cleanroom-base"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Dropped from the debootstrap tree: caches, docs and host files that debootstrap copies in.
TRIM = (
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/*.bin",
    "var/lib/apt/lists/*_*",
    "var/log/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
)
EMPTY = ("etc/resolv.conf", "etc/hostname", "etc/machine-id")
IMPORT_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
    "LABEL cleanroom=1",
)

# Wheels for the interpreter inside the images (CPython 3.11, glibc x86_64), whatever runs this script.
PLATFORMS = tuple(f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)) + (
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
PYTHON_VERSION = "3.11"
BUILD_REQUIRES_FALLBACK = ["setuptools>=68", "wheel"]

IGNORED_PARTS = {"__pycache__"}
IGNORED_SUFFIXES = (".pyc", ".pyo")


class BuildError(Exception):
    """A step failed; the message says what to do next."""


@dataclass(frozen=True)
class ImageSpec:
    name: str
    repo: str
    dockerfile: str
    requirements: str
    sources: tuple[str, ...]  # glob patterns relative to the repo root; "dir/**" means the whole tree


IMAGES = {
    "sandbox": ImageSpec(
        name="sandbox",
        repo="cleanroom-sandbox",
        dockerfile="containers/sandbox.Dockerfile",
        requirements="containers/requirements-sandbox.txt",
        sources=("cleanroom/__init__.py", "cleanroom/hookspecs.py", "cleanroom/plugin_helpers.py",
                 "cleanroom/sandbox/**"),
    ),
    "app": ImageSpec(
        name="app",
        repo="cleanroom-app",
        dockerfile="containers/app.Dockerfile",
        requirements="containers/requirements-app.txt",
        sources=("cleanroom/**", "pyproject.toml", "README.md"),
    ),
}
COMMON_INPUTS = (".dockerignore",)


# ---------------------------------------------------------------------------------------------- output

_START = time.monotonic()


def step(message: str) -> None:
    print(f"==> [{time.monotonic() - _START:6.1f}s] {message}", flush=True)


def detail(message: str) -> None:
    print(f"    {message}", flush=True)


def run_streaming(cmd: list[str], *, cwd: Path | None = None, stdin: int | None = None) -> int:
    """Run `cmd`, echoing its output indented as it comes; return the exit code."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=1,
        text=True,
        errors="replace",
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        detail("| " + line.rstrip())
    return proc.wait()


# ---------------------------------------------------------------------------------------------- hashing


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _ignored(rel: Path) -> bool:
    return any(part in IGNORED_PARTS for part in rel.parts) or rel.name.endswith(IGNORED_SUFFIXES)


def source_files(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    """The files matched by `patterns` (relative to `root`), sorted; missing ones are just absent."""
    found: set[Path] = set()
    for pattern in patterns:
        if pattern.endswith("/**"):
            base = root / pattern[:-3]
            if base.is_dir():
                found.update(p for p in base.rglob("*") if p.is_file() and not _ignored(p.relative_to(root)))
        elif (root / pattern).is_file():
            found.add(root / pattern)
    return sorted(found)


def image_hash(root: Path, spec: ImageSpec, base_image_id: str) -> str:
    """12 hex digits over everything that goes into the image."""
    digest = hashlib.sha256()
    digest.update(f"cleanroom-build {SCRIPT_VERSION}\nimage {spec.name}\nbase {base_image_id}\n".encode())
    inputs = [root / spec.dockerfile, root / spec.requirements]
    inputs += [root / name for name in COMMON_INPUTS]
    inputs += source_files(root, spec.sources)
    for path in sorted(set(inputs)):
        rel = path.relative_to(root).as_posix()
        file_hash = sha256_file(path) if path.is_file() else "missing"
        digest.update(f"{rel}\0{file_hash}\n".encode())
    return digest.hexdigest()[:12]


def base_recipe_tag() -> str:
    recipe = json.dumps(
        {
            "version": SCRIPT_VERSION,
            "suite": SUITE,
            "packages": BASE_PACKAGES,
            "trim": TRIM,
            "empty": EMPTY,
            "changes": IMPORT_CHANGES,
        },
        sort_keys=True,
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- docker


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise BuildError(f"docker {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def image_id(ref: str) -> str | None:
    proc = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def check_docker() -> None:
    if shutil.which("docker") is None:
        raise BuildError(
            "docker CLI not found: install Docker (apt-get install docker.io) and start the engine"
        )
    proc = docker("version", "--format", "{{.Server.Version}}", check=False)
    if proc.returncode != 0:
        said = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no answer"
        raise BuildError(
            "cannot reach the Docker engine: start it (`dockerd &` or `systemctl start docker`) "
            f"or set DOCKER_HOST ({said})"
        )


# ---------------------------------------------------------------------------------------------- base image


def resolve_base_image(requested: str | None) -> tuple[str, str, bool]:
    """Return (reference, image id, built) for the base image, building it with debootstrap if needed."""
    if requested:
        found = image_id(requested)
        if found:
            step(f"base image: {requested} (present)")
            return requested, found, False
        step(f"base image: {requested} not present, pulling it")
        if run_streaming(["docker", "pull", requested]) == 0 and (found := image_id(requested)):
            return requested, found, False
        step(f"base image: cannot pull {requested}; using a Debian base made with debootstrap instead")
    ref = f"{BASE_REPO}:{SUITE}-{base_recipe_tag()}"
    found = image_id(ref)
    if found:
        step(f"base image: {ref} (present)")
        return ref, found, False
    debootstrap_base(ref)
    found = image_id(ref)
    if not found:
        raise BuildError(f"docker import reported success but {ref} is not there")
    return ref, found, True


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    mounts = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            target = line.split()[1].replace("\\040", " ")
            if target == prefix or target.startswith(prefix + "/"):
                mounts.append(target)
    return mounts


def remove_tree(path: Path) -> None:
    """Delete a debootstrap tree, but never through a mount (a bind-mounted /dev would take the host's)."""
    for target in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)
    left = _mounts_under(path)
    if left:
        detail(f"warning: not removing {path}: still mounted: {', '.join(left)}")
        return
    shutil.rmtree(path, ignore_errors=True)


def trim_rootfs(rootfs: Path) -> None:
    for pattern in TRIM:
        parent, _, glob = pattern.rpartition("/")
        base = rootfs / parent
        if not base.is_dir():
            continue
        for entry in base.iterdir():
            if fnmatch.fnmatch(entry.name, glob):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
    for name in EMPTY:
        target = rootfs / name
        if target.is_file() and not target.is_symlink():
            target.write_text("")


def debootstrap_base(ref: str) -> None:
    tool = shutil.which("debootstrap")
    if tool is None:
        raise BuildError(
            "debootstrap not found: apt-get install debootstrap "
            "(or set CLEANROOM_BASE_IMAGE to an image with python3.11 that this engine can pull, "
            "e.g. python:3.11-slim)"
        )
    if os.geteuid() != 0:
        raise BuildError(
            "debootstrap needs root: run `sudo python3 containers/build.py` "
            "(or set CLEANROOM_BASE_IMAGE=python:3.11-slim where a registry is reachable)"
        )
    mirror = os.environ.get("CLEANROOM_DEBIAN_MIRROR", DEFAULT_MIRROR)
    packages = ", ".join(BASE_PACKAGES)
    step(f"base image: building {ref} with debootstrap ({SUITE} minbase + {packages}, {mirror})")
    tmp = Path(tempfile.mkdtemp(prefix="cleanroom-base-"))
    rootfs = tmp / "rootfs"
    try:
        started = time.monotonic()
        cmd = [tool, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs), mirror]
        if run_streaming(cmd) != 0:
            log = rootfs / "debootstrap" / "debootstrap.log"
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.is_file() else []
            for line in tail:
                detail("log | " + line)
            raise BuildError(
                f"debootstrap failed (see above): check that {mirror} is reachable from this host "
                "(set CLEANROOM_DEBIAN_MIRROR to use another mirror)"
            )
        detail(f"debootstrap took {time.monotonic() - started:.0f}s")
        for leftover in _mounts_under(rootfs):
            subprocess.run(["umount", "-l", leftover], capture_output=True)
        trim_rootfs(rootfs)
        step(f"base image: importing the tree as {ref}")
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        )
        changes = [arg for change in IMPORT_CHANGES for arg in ("--change", change)]
        message = f"cleanroom base: debootstrap {SUITE} minbase + {','.join(BASE_PACKAGES)}"
        imported = subprocess.run(
            ["docker", "import", *changes, "--message", message, "-", ref],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise BuildError(f"importing the base image failed: {imported.stderr.strip()}")
        detail(f"imported {imported.stdout.strip()[:19]}")
    finally:
        remove_tree(tmp)


# ---------------------------------------------------------------------------------------------- wheelhouse


def build_requires(root: Path) -> list[str]:
    try:
        import tomllib
    except ImportError:  # python < 3.11: the project's build requirements, as written in pyproject.toml
        return list(BUILD_REQUIRES_FALLBACK)
    with (root / "pyproject.toml").open("rb") as fh:
        return list(tomllib.load(fh).get("build-system", {}).get("requires", BUILD_REQUIRES_FALLBACK))


def pip_command() -> list[str]:
    candidates = [sys.executable, str(ROOT / ".venv" / "bin" / "python")]
    for python in candidates:
        if (
            Path(python).exists()
            and subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0
        ):
            return [python, "-m", "pip"]
    raise BuildError(
        "pip not found for this python: apt-get install python3-pip, or run `make install` and then "
        ".venv/bin/python containers/build.py"
    )


def wheelhouse_stamp(root: Path, extra: list[str]) -> str:
    digest = hashlib.sha256(f"wheelhouse {SCRIPT_VERSION} {PYTHON_VERSION} {PLATFORMS}\n".encode())
    for spec in IMAGES.values():
        digest.update(spec.requirements.encode() + b"\0" + (root / spec.requirements).read_bytes())
    digest.update("\n".join(extra).encode())
    return digest.hexdigest()


def wheelhouse_complete(wheelhouse: Path, stamp: str) -> bool:
    stamp_file = wheelhouse / ".stamp.json"
    try:
        recorded = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("stamp") == stamp and all((wheelhouse / name).is_file() for name in recorded["files"])


def ensure_wheelhouse(root: Path) -> bool:
    """Fill containers/wheelhouse for the images' interpreter; return True when it downloaded."""
    wheelhouse = root / "containers" / "wheelhouse"
    extra = build_requires(root)
    stamp = wheelhouse_stamp(root, extra)
    if wheelhouse_complete(wheelhouse, stamp):
        step(f"wheelhouse: up to date ({len(list(wheelhouse.glob('*.whl')))} wheels)")
        return False
    step("wheelhouse: downloading wheels for cp311 manylinux x86_64 (pip download)")
    started = time.monotonic()
    # Download into a fresh folder and swap, so versions left over from older requirements drop out.
    staging = root / "containers" / ".build" / "wheelhouse.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cmd = pip_command() + [
        "download",
        "--dest",
        str(staging),
        "--only-binary=:all:",
        "--progress-bar",
        "off",
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        "--abi",
        "cp311",
    ]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    for spec in IMAGES.values():
        cmd += ["-r", str(root / spec.requirements)]
    cmd += extra
    if run_streaming(cmd, cwd=root) != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise BuildError(
            "pip download failed (see above): check that this host reaches the package index "
            "(pip config, proxy, PIP_CERT); a requirement without a cp311 manylinux wheel needs a wheel "
            "built by hand into containers/wheelhouse"
        )
    files = sorted(p.name for p in staging.iterdir() if p.is_file())
    (staging / ".stamp.json").write_text(json.dumps({"stamp": stamp, "files": files}, indent=1) + "\n")
    old = root / "containers" / ".build" / "wheelhouse.old"
    shutil.rmtree(old, ignore_errors=True)
    if wheelhouse.exists():
        wheelhouse.rename(old)
    staging.rename(wheelhouse)
    shutil.rmtree(old, ignore_errors=True)
    size = sum((wheelhouse / name).stat().st_size for name in files)
    detail(f"{len(files)} files, {size / 1e6:.0f} MB in {time.monotonic() - started:.0f}s")
    return True


# ---------------------------------------------------------------------------------------------- images


def ensure_image(root: Path, spec: ImageSpec, base_ref: str, base_id: str) -> tuple[str, bool]:
    """Build `spec` unless its content-hash tag exists; return (tag, built)."""
    tag = f"{spec.repo}:{image_hash(root, spec, base_id)}"
    if image_id(tag):
        step(f"{spec.name} image: {tag} (up to date)")
        docker("tag", tag, f"{spec.repo}:latest")
        return tag, False
    step(f"{spec.name} image: building {tag} from {spec.dockerfile} (base {base_ref})")
    started = time.monotonic()
    cmd = [
        "docker",
        "build",
        "--build-arg",
        f"BASE_IMAGE={base_ref}",
        "-f",
        spec.dockerfile,
        "-t",
        tag,
        "-t",
        f"{spec.repo}:latest",
        "--label",
        "cleanroom=1",
        "--label",
        f"cleanroom.image={spec.name}",
        "--label",
        f"cleanroom.hash={tag.split(':')[1]}",
        ".",
    ]
    if run_streaming(cmd, cwd=root) != 0:
        raise BuildError(
            f"building {tag} failed: the docker output above says why. A pip 'No matching distribution' "
            "means the wheelhouse lacks a package (delete containers/wheelhouse/.stamp.json and run this "
            "again); a compileall error means a source file does not compile"
        )
    if f"{spec.repo}:{image_hash(root, spec, base_id)}" != tag:
        detail(f"warning: {spec.name} sources changed during the build; run build.py again to pick them up")
    size = docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    detail(f"built {tag} in {time.monotonic() - started:.0f}s ({int(size) / 1e6:.0f} MB)")
    return tag, True


def prune_old_tags(current: dict[str, str]) -> None:
    """Untag this script's older sandbox/app images (a tag still used by a container stays)."""
    for name, tag in current.items():
        listed = docker(
            "images", "--filter", f"label=cleanroom.image={name}", "--format", "{{.Repository}}:{{.Tag}}"
        ).stdout.split()
        old = [ref for ref in listed if ref != tag and not ref.endswith((":latest", ":<none>"))]
        for ref in old:
            if docker("rmi", ref, check=False).returncode == 0:
                detail(f"removed {ref}")
    docker("image", "prune", "--force", "--filter", "label=cleanroom=1", check=False)


# ---------------------------------------------------------------------------------------------- env files

ENV_KEYS = ("CLEANROOM_APP_IMAGE", "CLEANROOM_SANDBOX_IMAGE", "CLEANROOM_BASE_IMAGE")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_env_files(root: Path, values: dict[str, str]) -> None:
    lines = [f"{key}={values[key]}" for key in ENV_KEYS]
    _write_atomic(
        root / "containers" / ".build" / "images.env",
        "# written by containers/build.py\n" + "\n".join(lines) + "\n",
    )
    # The compose .env may hold the user's own settings (CLEANROOM_PORT, ...): replace only our keys.
    dotenv = root / ".env"
    kept = []
    if dotenv.is_file():
        kept = [
            line for line in dotenv.read_text().splitlines() if line.split("=", 1)[0].strip() not in ENV_KEYS
        ]
    _write_atomic(dotenv, "\n".join(kept + lines) + "\n")


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(IMAGES), help="build just this image (and what it needs)")
    parser.add_argument(
        "--base-image",
        default=os.environ.get("CLEANROOM_BASE_IMAGE") or None,
        help="base image to use instead of a debootstrapped Debian (default: $CLEANROOM_BASE_IMAGE)",
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="afterwards, remove older cleanroom-sandbox/cleanroom-app tags and dangling layers",
    )
    args = parser.parse_args(argv)
    root = ROOT
    try:
        check_docker()
        base_ref, base_id, base_built = resolve_base_image(args.base_image)
        wheels_built = ensure_wheelhouse(root)
        built = ["base"] if base_built else []
        if wheels_built:
            built.append("wheelhouse")
        tags = {}
        for spec in IMAGES.values():
            if args.only and spec.name != args.only:
                tags[spec.name] = f"{spec.repo}:{image_hash(root, spec, base_id)}"
                if not image_id(tags[spec.name]):
                    step(f"{spec.name} image: {tags[spec.name]} not built (--only {args.only})")
                continue
            tags[spec.name], image_built = ensure_image(root, spec, base_ref, base_id)
            if image_built:
                built.append(spec.name)
        if args.prune:
            step("pruning older image tags")
            prune_old_tags({name: tag for name, tag in tags.items() if args.only in (None, name)})
        write_env_files(
            root,
            {
                "CLEANROOM_APP_IMAGE": tags["app"],
                "CLEANROOM_SANDBOX_IMAGE": tags["sandbox"],
                "CLEANROOM_BASE_IMAGE": base_ref,
            },
        )
    except BuildError as exc:
        print(f"build.py: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("build.py: interrupted", file=sys.stderr)
        return 130
    step("wrote containers/.build/images.env and .env")
    for key, value in (("app", tags["app"]), ("sandbox", tags["sandbox"]), ("base", base_ref)):
        detail(f"{key:8} {value}")
    if built:
        step(f"done: built {', '.join(built)}")
    else:
        step("done: built nothing, everything was up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
