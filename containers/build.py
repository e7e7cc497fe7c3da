#!/usr/bin/env python3
"""Build the cleanroom images: base + wheelhouse -> deps -> sandbox + app images -> env files.

    python3 containers/build.py [--only sandbox|app] [--base-image IMAGE] [--prune]

Stdlib only, any python3. Every step is skipped when its output already exists for the same inputs,
so a second run only hashes files and asks the engine whether the tags exist:

1. Base image. `CLEANROOM_BASE_IMAGE` (or `--base-image`) when it is present or can be pulled;
   otherwise Debian built here with debootstrap and `docker import`, tagged by a hash of its recipe.
2. Wheelhouse, at the same time as 1. `containers/wheelhouse/` filled by `pip download` on the host,
   because containers may not reach the package index during `docker build` (TLS interception, no
   registry). The builds get the wheels from a small HTTP server that this script runs on the host
   for as long as it builds (see the deps stage in containers/sandbox.Dockerfile), so no wheel is
   ever copied into an image layer.
3. `cleanroom-deps:<hash>`: the `deps` stage that both Dockerfiles share (base + the scientific
   stack, compiled): built once, its one big layer stored once.
4. `cleanroom-sandbox:<hash>` and `cleanroom-app:<hash>`, at the same time, both from deps (their
   deps stages come from the build cache). <hash> covers everything that goes into the image:
   Dockerfile, requirement files, base image id and the source files it copies.
5. `containers/.build/images.env` and the compose `.env` at the repo root name the images.
Each stage's time is printed in a table at the end.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import html
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SCRIPT_VERSION = "2"
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
    # Other files it is built from (the app is built over the sandbox's requirements).
    inputs: tuple[str, ...] = ()
    # Build only this stage of the Dockerfile; its hash then covers only that stage's text.
    target: str | None = None


# The stage both Dockerfiles share, between these two lines, the same bytes in each.
DEPS_BEGIN = "# ---- deps stage:"
DEPS_END = "# ---- end of the deps stage ----"
DEPS = ImageSpec(
    name="deps",
    repo="cleanroom-deps",
    dockerfile="containers/sandbox.Dockerfile",
    requirements="containers/requirements-sandbox.txt",
    sources=(),
    target="deps",
)
IMAGES = {
    "sandbox": ImageSpec(
        name="sandbox",
        repo="cleanroom-sandbox",
        dockerfile="containers/sandbox.Dockerfile",
        requirements="containers/requirements-sandbox.txt",
        sources=(
            "cleanroom/__init__.py",
            "cleanroom/hookspecs.py",
            "cleanroom/plugin_helpers.py",
            "cleanroom/sandbox/**",
        ),
    ),
    "app": ImageSpec(
        name="app",
        repo="cleanroom-app",
        dockerfile="containers/app.Dockerfile",
        requirements="containers/requirements-app.txt",
        sources=("cleanroom/**", "pyproject.toml", "README.md"),
        inputs=("containers/requirements-sandbox.txt",),
    ),
}
COMMON_INPUTS = (".dockerignore",)
# The made-up host the Dockerfiles install wheels from (through HTTP_PROXY, see WheelhouseServer).
WHEELHOUSE_HOST = "wheelhouse.cleanroom.invalid"


# ---------------------------------------------------------------------------------------------- output

_START = time.monotonic()


def step(message: str) -> None:
    print(f"==> [{time.monotonic() - _START:6.1f}s] {message}", flush=True)


def detail(message: str) -> None:
    print(f"    {message}", flush=True)


@dataclass
class Stage:
    name: str
    start: float
    end: float = 0.0
    result: str = "failed"


@dataclass
class Timings:
    """Each stage's start, end and result, printed as a table at the end (stages may overlap)."""

    stages: list[Stage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        record = Stage(name, time.monotonic() - _START)
        with self.lock:
            self.stages.append(record)
        try:
            yield record
        finally:
            record.end = time.monotonic() - _START

    def table(self) -> list[str]:
        lines = [f"{'stage':<12} {'result':<12} {'start':>7} {'end':>7} {'took':>7}"]
        for s in self.stages:
            lines.append(f"{s.name:<12} {s.result:<12} {s.start:6.1f}s {s.end:6.1f}s {s.end - s.start:6.1f}s")
        lines.append(f"{'total':<12} {'':<12} {'':>7} {time.monotonic() - _START:6.1f}s")
        return lines


TIMINGS = Timings()


def in_parallel(*jobs: Callable[[], object]) -> None:
    """Run `jobs` in threads; once all have ended, raise the first failure."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def run_streaming(cmd: list[str], *, cwd: Path | None = None, stdin: int | None = None, tag: str = "") -> int:
    """Run `cmd`, echoing its output indented (and tagged, when stages run at once); return the exit code."""
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
        detail(f"| {time.monotonic() - _START:6.1f}s {tag}: {line.rstrip()}" if tag else "| " + line.rstrip())
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
    inputs = [root / spec.requirements]
    inputs += [root / name for name in spec.inputs + COMMON_INPUTS]
    inputs += source_files(root, spec.sources)
    if spec.target:
        digest.update(f"stage {spec.target}\0{shared_stage(root / spec.dockerfile)}\n".encode())
    else:
        inputs.append(root / spec.dockerfile)
    for path in sorted(set(inputs)):
        rel = path.relative_to(root).as_posix()
        file_hash = sha256_file(path) if path.is_file() else "missing"
        digest.update(f"{rel}\0{file_hash}\n".encode())
    return digest.hexdigest()[:12]


def shared_stage(dockerfile: Path) -> str:
    """The deps stage of `dockerfile`: the lines from DEPS_BEGIN to DEPS_END."""
    lines = dockerfile.read_text().splitlines(keepends=True)
    begin = [i for i, line in enumerate(lines) if line.startswith(DEPS_BEGIN)]
    end = [i for i, line in enumerate(lines) if line.rstrip() == DEPS_END]
    if len(begin) != 1 or len(end) != 1 or end[0] < begin[0]:
        raise BuildError(
            f"{dockerfile.name}: the deps stage must sit between one '{DEPS_BEGIN} ...' line and one '{DEPS_END}' line"
        )
    return "".join(lines[begin[0] : end[0] + 1])


def check_shared_stage(root: Path) -> None:
    """Both images start from the same deps stage, so both Dockerfiles must hold it byte for byte."""
    texts = {spec.dockerfile: shared_stage(root / spec.dockerfile) for spec in IMAGES.values()}
    if len(set(texts.values())) != 1:
        raise BuildError(
            "the deps stage differs between " + " and ".join(sorted(texts)) + ": both images are built "
            "over one shared stage, so edit it in both files alike (copy it from one to the other)"
        )


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
        raise BuildError("docker CLI not found: install Docker (apt-get install docker.io) and start the engine")
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
        if run_streaming(["docker", "pull", requested], tag="base") == 0 and (found := image_id(requested)):
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
        if run_streaming(cmd, tag="base") != 0:
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
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
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


def _has_pip(python: Path | str) -> bool:
    return Path(python).exists() and (
        subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True).returncode == 0
    )


def pip_command(root: Path) -> list[str]:
    """This python's pip; otherwise pip in a venv of its own under containers/.build (not .venv, which
    `make up` may be installing at the same time)."""
    if _has_pip(sys.executable):
        return [sys.executable, "-m", "pip"]
    tools = root / "containers" / ".build" / "pip-venv"
    python = tools / "bin" / "python"
    if not _has_pip(python):
        detail(f"no pip for {sys.executable}: making a venv for `pip download` in {tools.relative_to(root)}")
        made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(tools)], capture_output=True, text=True)
        if made.returncode != 0 or not _has_pip(python):
            raise BuildError(
                "pip not found for this python and `python3 -m venv` cannot make one: "
                f"apt-get install python3-venv (or python3-pip) ({made.stderr.strip()[-300:]})"
            )
    return [str(python), "-m", "pip"]


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
    cmd = pip_command(root) + [
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
    if run_streaming(cmd, cwd=root, tag="wheelhouse") != 0:
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


class WheelhouseServer:
    """Serves the wheelhouse to `docker build` as http://WHEELHOUSE_HOST/, for as long as it runs.

    The builds get `--build-arg HTTP_PROXY=http://127.0.0.1:<port>` and `--network host`: the proxy
    settings are predefined build arguments, so they neither change the build cache key nor show in
    the image history, and the Dockerfiles name only the made-up host. Only GET and HEAD of the
    wheelhouse's own files (and of the index page listing them) are answered; anything else is refused.
    """

    def __init__(self, wheelhouse: Path) -> None:
        files = {p.name: p for p in wheelhouse.iterdir() if p.is_file() and not p.name.startswith(".")}
        links = "".join(f'<a href="{html.escape(name)}">{html.escape(name)}</a><br>\n' for name in sorted(files))
        index = f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n".encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                url = urllib.parse.urlsplit(self.path)
                name = urllib.parse.unquote(url.path).lstrip("/")
                if url.hostname not in (None, WHEELHOUSE_HOST):
                    self.send_error(403, f"this is the cleanroom wheelhouse: it serves only {WHEELHOUSE_HOST}")
                    return
                if name == "":
                    data, ctype = index, "text/html; charset=utf-8"
                elif name in files:
                    data, ctype = files[name].read_bytes(), "application/octet-stream"
                else:
                    self.send_error(404, f"{name} is not in the wheelhouse")
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                self._answer(True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(False)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="wheelhouse", daemon=True)

    @property
    def build_args(self) -> list[str]:
        proxy = f"http://127.0.0.1:{self.server.server_address[1]}"
        return ["--network", "host", "--build-arg", f"HTTP_PROXY={proxy}", "--build-arg", f"http_proxy={proxy}"]

    def __enter__(self) -> WheelhouseServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def image_tag(root: Path, spec: ImageSpec, base_id: str) -> str:
    return f"{spec.repo}:{image_hash(root, spec, base_id)}"


def build_image(root: Path, spec: ImageSpec, tag: str, base_ref: str, wheels: WheelhouseServer) -> None:
    """`docker build` `spec` as `tag` (and :latest, except for the deps stage)."""
    started = time.monotonic()
    cmd = ["docker", "build", "--build-arg", f"BASE_IMAGE={base_ref}", *wheels.build_args, "-f", spec.dockerfile]
    cmd += ["-t", tag] + (["--target", spec.target] if spec.target else ["-t", f"{spec.repo}:latest"])
    if run_streaming([*cmd, "."], cwd=root, tag=spec.name) != 0:
        raise BuildError(
            f"building {tag} failed: the docker output above says why. A pip 'No matching distribution' "
            "means the wheelhouse lacks a package (delete containers/wheelhouse/.stamp.json and run this "
            "again); a compileall error means a source file does not compile"
        )
    size = docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    detail(f"built {tag} in {time.monotonic() - started:.0f}s ({int(size) / 1e6:.0f} MB)")


def ensure_images(
    root: Path, names: list[str], base_ref: str, base_id: str, wheels: WheelhouseServer
) -> tuple[dict[str, str], list[str]]:
    """Build the images in `names` whose content-hash tags are missing: first the deps stage they share,
    once, then them at the same time (their deps stages then come from the build cache).
    Return ({name: tag}, names built)."""
    tags = {name: image_tag(root, IMAGES[name], base_id) for name in names}
    missing = []
    for name, tag in tags.items():
        if image_id(tag):
            step(f"{name} image: {tag} (up to date)")
            docker("tag", tag, f"{IMAGES[name].repo}:latest")
            with TIMINGS.stage(name) as record:
                record.result = "up to date"
        else:
            missing.append(name)
    if not missing:
        return tags, []
    check_shared_stage(root)
    built = []
    deps_tag = image_tag(root, DEPS, base_id)
    with TIMINGS.stage("deps") as record:
        if image_id(deps_tag):
            step(f"deps image: {deps_tag} (up to date)")
            record.result = "up to date"
        else:
            step(f"deps image: building {deps_tag} (the shared stage of {DEPS.dockerfile}, base {base_ref})")
            build_image(root, DEPS, deps_tag, base_ref, wheels)
            record.result = "built"
            built.append("deps")

    def build(name: str) -> None:
        spec = IMAGES[name]
        with TIMINGS.stage(name) as record:
            step(f"{name} image: building {tags[name]} from {spec.dockerfile} over {deps_tag}")
            build_image(root, spec, tags[name], base_ref, wheels)
            if image_tag(root, spec, base_id) != tags[name]:
                detail(f"warning: {name} sources changed during the build; run build.py again to pick them up")
            record.result = "built"

    in_parallel(*(lambda name=name: build(name) for name in missing))
    return tags, built + missing


def prune_old_tags(current: dict[str, str]) -> None:
    """Untag this script's older deps/sandbox/app images (a tag still used by a container stays)."""
    for tag in current.values():
        repo = tag.split(":")[0]
        listed = docker("images", repo, "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
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
        kept = [line for line in dotenv.read_text().splitlines() if line.split("=", 1)[0].strip() not in ENV_KEYS]
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
        help="afterwards, remove older cleanroom-deps/-sandbox/-app tags and dangling layers",
    )
    args = parser.parse_args(argv)
    root = ROOT
    try:
        check_docker()

        found: list[tuple[str, str, bool]] = []
        built = []

        def base() -> None:
            with TIMINGS.stage("base") as record:
                found.append(resolve_base_image(args.base_image))
                record.result = "built" if found[0][2] else "present"

        def wheelhouse() -> None:
            with TIMINGS.stage("wheelhouse") as record:
                record.result = "up to date"
                if ensure_wheelhouse(root):
                    record.result = "downloaded"
                    built.append("wheelhouse")

        in_parallel(base, wheelhouse)
        base_ref, base_id, base_built = found[0]
        if base_built:
            built.insert(0, "base")
        names = [name for name in IMAGES if args.only in (None, name)]
        with WheelhouseServer(root / "containers" / "wheelhouse") as wheels:
            tags, images_built = ensure_images(root, names, base_ref, base_id, wheels)
        built += images_built
        for name, spec in IMAGES.items():
            if name not in tags:
                tags[name] = image_tag(root, spec, base_id)
                if not image_id(tags[name]):
                    step(f"{name} image: {tags[name]} not built (--only {args.only})")
        if args.prune:
            step("pruning older image tags")
            keep = {name: tag for name, tag in tags.items() if args.only in (None, name)}
            prune_old_tags({**keep, "deps": image_tag(root, DEPS, base_id)})
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
        print_timings()
        return 1
    except KeyboardInterrupt:
        print("build.py: interrupted", file=sys.stderr)
        return 130
    step("wrote containers/.build/images.env and .env")
    for key, value in (("app", tags["app"]), ("sandbox", tags["sandbox"]), ("base", base_ref)):
        detail(f"{key:8} {value}")
    print_timings()
    if built:
        step(f"done: built {', '.join(built)}")
    else:
        step("done: built nothing, everything was up to date")
    return 0


def print_timings() -> None:
    step("stage times (base and wheelhouse run at the same time, and so do sandbox and app)")
    for line in TIMINGS.table():
        detail(line)


if __name__ == "__main__":
    sys.exit(main())
