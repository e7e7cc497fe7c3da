"""The images, the build script and the compose file.

Docker tests use the images named by CLEANROOM_SANDBOX_IMAGE / CLEANROOM_APP_IMAGE, which `make test`
exports from containers/.build/images.env after `containers/build.py` built them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cleanroom.runner.isolation import SECCOMP_FILE, seccomp_profile
from tests.dockerutil import require_docker, require_image, unavailable

REPO = Path(__file__).resolve().parent.parent
# The sandbox runs untrusted code the way the runner starts it: no network, read-only root, no
# capabilities, no privilege escalation, the runner's seccomp profile.
HARDENED: dict[str, Any] = {
    "network_mode": "none",
    "read_only": True,
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges", "seccomp=" + seccomp_profile()],
}


def load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cleanroom_build_script", REPO / "containers" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while the class is made
    spec.loader.exec_module(module)
    return module


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def pyproject_dependencies() -> list[str]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        return list(tomllib.load(fh)["project"]["dependencies"])


def name_of(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


# ------------------------------------------------------------------------------------------ no docker


def test_app_requirements_are_the_pyproject_dependencies() -> None:
    assert requirement_lines(REPO / "containers" / "requirements-app.txt") == pyproject_dependencies()


def test_sandbox_requirements_use_the_pyproject_pins() -> None:
    pins = {name_of(dep): dep for dep in pyproject_dependencies()}
    sandbox = requirement_lines(REPO / "containers" / "requirements-sandbox.txt")
    assert {name_of(req) for req in sandbox} == {
        "pandas",
        "numpy",
        "scikit-learn",
        "skops",
        "pyarrow",
        "pluggy",
        "opendp",
        "diffprivlib",
    }
    for req in sandbox:
        assert req == pins[name_of(req)], f"{req} differs from pyproject.toml's {pins[name_of(req)]}"


def test_the_seccomp_profile_is_package_data() -> None:
    """The runner reads it at run time, so the wheel the app image installs must carry it."""
    with (REPO / "pyproject.toml").open("rb") as fh:
        package_data = tomllib.load(fh)["tool"]["setuptools"]["package-data"]
    assert SECCOMP_FILE in package_data["cleanroom.runner"]
    assert (REPO / "cleanroom" / "runner" / SECCOMP_FILE).is_file()


def make_tree(root: Path) -> None:
    files = {
        "containers/sandbox.Dockerfile": "FROM x\n",
        "containers/app.Dockerfile": "FROM x\n",
        "containers/requirements-sandbox.txt": "pandas\n",
        "containers/requirements-app.txt": "pandas\nfastapi\n",
        ".dockerignore": "*\n",
        "pyproject.toml": "[project]\nname = 'cleanroom'\n",
        "cleanroom/__init__.py": "",
        "cleanroom/hookspecs.py": "",
        "cleanroom/sandbox/__init__.py": "",
        "cleanroom/sandbox/wire.py": "",
        "cleanroom/api/app.py": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def hashes(build: ModuleType, root: Path, base_id: str = "sha256:base") -> tuple[str, str]:
    return (
        build.image_hash(root, build.IMAGES["sandbox"], base_id),
        build.image_hash(root, build.IMAGES["app"], base_id),
    )


def test_image_hash_covers_exactly_what_goes_into_each_image(tmp_path: Path) -> None:
    build = load_build_script()
    make_tree(tmp_path)
    sandbox, app = hashes(build, tmp_path)
    assert re.fullmatch(r"[0-9a-f]{12}", sandbox) and sandbox != app
    assert hashes(build, tmp_path) == (sandbox, app)

    # Bytecode is not an input.
    (tmp_path / "cleanroom/sandbox/__pycache__").mkdir()
    (tmp_path / "cleanroom/sandbox/__pycache__/wire.cpython-311.pyc").write_bytes(b"x")
    assert hashes(build, tmp_path) == (sandbox, app)

    # Server code is in the app image only.
    (tmp_path / "cleanroom/api/app.py").write_text("# changed\n")
    new_sandbox, new_app = hashes(build, tmp_path)
    assert new_sandbox == sandbox and new_app != app
    app = new_app

    # Sandbox code is in both.
    (tmp_path / "cleanroom/sandbox/wire.py").write_text("# changed\n")
    new_sandbox, new_app = hashes(build, tmp_path)
    assert new_sandbox != sandbox and new_app != app
    sandbox, app = new_sandbox, new_app

    # The app's requirements and Dockerfile are not the sandbox's.
    (tmp_path / "containers/requirements-app.txt").write_text("pandas\nfastapi\nhttpx\n")
    (tmp_path / "containers/app.Dockerfile").write_text("FROM y\n")
    new_sandbox, new_app = hashes(build, tmp_path)
    assert new_sandbox == sandbox and new_app != app

    # A new base image changes both.
    assert all(a != b for a, b in zip(hashes(build, tmp_path, "sha256:other"), (sandbox, new_app), strict=True))


def test_env_files_name_the_images_and_keep_other_settings(tmp_path: Path) -> None:
    build = load_build_script()
    (tmp_path / ".env").write_text("CLEANROOM_PORT=9000\nCLEANROOM_APP_IMAGE=cleanroom-app:old\n")
    values = {
        "CLEANROOM_APP_IMAGE": "cleanroom-app:aaa",
        "CLEANROOM_SANDBOX_IMAGE": "cleanroom-sandbox:bbb",
        "CLEANROOM_BASE_IMAGE": "cleanroom-base:ccc",
    }
    build.write_env_files(tmp_path, values)
    dotenv = (tmp_path / ".env").read_text().splitlines()
    assert dotenv == ["CLEANROOM_PORT=9000"] + [f"{k}={v}" for k, v in values.items()]
    images_env = (tmp_path / "containers/.build/images.env").read_text().splitlines()
    assert [line for line in images_env if not line.startswith("#")] == dotenv[1:]


def test_wheelhouse_stamp_needs_every_recorded_file(tmp_path: Path) -> None:
    build = load_build_script()
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    (wheelhouse / "a-1-py3-none-any.whl").write_bytes(b"x")
    (wheelhouse / ".stamp.json").write_text(json.dumps({"stamp": "s1", "files": ["a-1-py3-none-any.whl"]}))
    assert build.wheelhouse_complete(wheelhouse, "s1")
    assert not build.wheelhouse_complete(wheelhouse, "s2")
    (wheelhouse / "a-1-py3-none-any.whl").unlink()
    assert not build.wheelhouse_complete(wheelhouse, "s1")


def test_both_images_start_from_one_deps_stage(tmp_path: Path) -> None:
    build = load_build_script()
    build.check_shared_stage(REPO)  # the real Dockerfiles: the same deps stage, byte for byte
    for name in ("sandbox.Dockerfile", "app.Dockerfile"):
        (tmp_path / "containers").mkdir(exist_ok=True)
        shutil.copy(REPO / "containers" / name, tmp_path / "containers" / name)
    deps = build.image_hash(tmp_path, build.DEPS, "sha256:base")
    sandbox = tmp_path / "containers" / "sandbox.Dockerfile"
    # What follows the deps stage is not part of it.
    sandbox.write_text(sandbox.read_text() + "LABEL extra=1\n")
    assert build.image_hash(tmp_path, build.DEPS, "sha256:base") == deps
    # An edit inside it changes its hash, and one Dockerfile edited alone is refused.
    sandbox.write_text(sandbox.read_text().replace("PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=0", 1))
    assert build.image_hash(tmp_path, build.DEPS, "sha256:base") != deps
    with pytest.raises(build.BuildError, match="the deps stage differs"):
        build.check_shared_stage(tmp_path)


def test_wheelhouse_server_serves_only_the_wheelhouse(tmp_path: Path) -> None:
    build = load_build_script()
    (tmp_path / "pkg-1.0-py3-none-any.whl").write_bytes(b"wheel bytes")
    (tmp_path / ".stamp.json").write_text("{}")
    with build.WheelhouseServer(tmp_path) as server:
        proxy = server.build_args[server.build_args.index("--build-arg") + 1].split("=", 1)[1]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))

        def get(url: str) -> tuple[int, bytes]:
            try:
                with opener.open(url, timeout=10) as answer:
                    return answer.status, answer.read()
            except urllib.error.HTTPError as error:
                return error.code, b""

        status, index = get(f"http://{build.WHEELHOUSE_HOST}/")
        assert status == 200 and b'href="pkg-1.0-py3-none-any.whl"' in index and b".stamp" not in index
        assert get(f"http://{build.WHEELHOUSE_HOST}/pkg-1.0-py3-none-any.whl") == (200, b"wheel bytes")
        # Nothing else: not its other files, not a path out of it, not another host through the proxy.
        assert get(f"http://{build.WHEELHOUSE_HOST}/.stamp.json")[0] == 404
        assert get(f"http://{build.WHEELHOUSE_HOST}/..%2Fetc%2Fpasswd")[0] == 404
        assert get("http://example.org/pkg-1.0-py3-none-any.whl")[0] == 403


# ------------------------------------------------------------------------------------------ docker


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    client = require_docker()
    yield client
    client.close()


def run(client: Any, image: str, command: list[str], **options: Any) -> str:
    output = client.containers.run(image, command, remove=True, stdout=True, stderr=True, **options)
    return output.decode() if isinstance(output, bytes) else str(output)


@pytest.mark.docker
def test_sandbox_image_has_the_stack_and_runs_hardened(docker_client: Any) -> None:
    image = require_image(docker_client, "CLEANROOM_SANDBOX_IMAGE")
    out = run(
        docker_client,
        image,
        [
            "python",
            "-I",
            "-c",
            "import pandas, sklearn, skops, pyarrow, pluggy, cleanroom.sandbox.wire; "
            "import opendp, cleanroom.hookspecs; print('ok')",
        ],
        **HARDENED,
    )
    assert out.strip().splitlines()[-1] == "ok"


@pytest.mark.docker
def test_sandbox_image_is_unprivileged_and_has_no_tools(docker_client: Any) -> None:
    image = require_image(docker_client, "CLEANROOM_SANDBOX_IMAGE")
    probe = (
        "import importlib.util, json, os, shutil\n"
        "def found(m):\n"
        "    try:\n"
        "        return importlib.util.find_spec(m) is not None\n"
        "    except ModuleNotFoundError:  # its parent package is not there either\n"
        "        return False\n"
        "print(json.dumps({"
        "'uid': os.getuid(), 'gid': os.getgid(), 'cwd': os.getcwd(),"
        "'tools': [t for t in ('gcc', 'cc', 'c++', 'g++', 'pip', 'pip3', 'make', 'curl', 'wget')"
        " if shutil.which(t)],"
        "'modules': [m for m in ('pip', 'setuptools', 'fastapi', 'docker', 'httpx', 'uvicorn',"
        " 'cryptography', 'cleanroom.api', 'cleanroom.runner', 'cleanroom.store.db', 'cleanroom.store')"
        " if found(m)]}))"
    )
    facts = json.loads(run(docker_client, image, ["python", "-I", "-c", probe], **HARDENED).strip().splitlines()[-1])
    assert (facts["uid"], facts["gid"]) == (65534, 65534)
    assert facts["cwd"] == "/tmp"
    assert facts["tools"] == []
    # Only the sandbox runtime: no installer and no server code for plugin code to reach.
    assert facts["modules"] == []


@pytest.mark.docker
def test_sandbox_bytecode_is_precompiled(docker_client: Any) -> None:
    # The root filesystem is read-only, so every module the sandbox imports must come compiled.
    image = require_image(docker_client, "CLEANROOM_SANDBOX_IMAGE")
    probe = (
        "import importlib.util, pathlib, cleanroom.sandbox as s; "
        "missing = [str(p) for p in pathlib.Path(s.__file__).parent.glob('*.py') "
        "if not pathlib.Path(importlib.util.cache_from_source(str(p))).exists()]; print(missing)"
    )
    assert run(docker_client, image, ["python", "-I", "-c", probe], **HARDENED).strip() == "[]"


@pytest.mark.docker
def test_app_image_has_the_cleanroom_command(docker_client: Any) -> None:
    image = require_image(docker_client, "CLEANROOM_APP_IMAGE")
    probe = (
        "import importlib.metadata as md, json, os, shutil; "
        "(ep,) = md.entry_points(group='console_scripts', name='cleanroom'); "
        "print(json.dumps({'uid': os.getuid(), 'script': shutil.which('cleanroom'), 'entry': ep.value}))"
    )
    facts = json.loads(run(docker_client, image, ["python", "-c", probe]).strip().splitlines()[-1])
    assert facts == {"uid": 10001, "script": "/opt/venv/bin/cleanroom", "entry": "cleanroom.cli:main"}
    assert "Usage" in run(docker_client, image, ["cleanroom", "--help"], network_mode="none")


@pytest.mark.docker
def test_app_image_ships_the_sandbox_seccomp_profile(docker_client: Any) -> None:
    image = require_image(docker_client, "CLEANROOM_APP_IMAGE")
    probe = (
        "import hashlib; from cleanroom.runner.isolation import seccomp_profile; "
        "print(hashlib.sha256(seccomp_profile().encode()).hexdigest())"
    )
    out = run(docker_client, image, ["python", "-c", probe], network_mode="none")
    assert out.strip().splitlines()[-1] == hashlib.sha256(seccomp_profile().encode()).hexdigest()


def progress(output: str) -> str:
    """build.py's own progress lines, without the tools' output it echoes."""
    return "\n".join(line for line in output.splitlines() if not line.startswith("    |"))


@pytest.mark.docker
@pytest.mark.timeout(1800)
def test_second_build_is_a_no_op(docker_client: Any) -> None:
    script = [sys.executable, str(REPO / "containers" / "build.py")]
    # The first run builds whatever is out of date (nothing, right after `make images`).
    first = subprocess.run(script, cwd=REPO, capture_output=True, text=True, timeout=1700)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    started = time.monotonic()
    second = subprocess.run(script, cwd=REPO, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    lines = progress(second.stdout)
    assert "done: built nothing" in lines, lines
    assert "building" not in lines and "Step 1/" not in second.stdout, lines
    assert "wheelhouse: up to date" in lines, lines
    assert elapsed < 30, f"a no-op build took {elapsed:.1f}s"


@pytest.mark.docker
def test_compose_file_parses() -> None:
    if shutil.which("docker") is None:
        unavailable("docker CLI not installed")
    proc = subprocess.run(
        [str(REPO / "scripts" / "compose.sh"), "config"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    if proc.returncode == 127:
        unavailable("neither `docker compose` nor `docker-compose` is installed")
    assert proc.returncode == 0, proc.stderr
    config = proc.stdout
    for needle in (
        "cleanroom.runner.health",
        "/var/run/docker.sock",
        "CLEANROOM_SANDBOX_IMAGE",
        "/run/cleanroom-shared",
        "api-data",
        "runner-data",
    ):
        assert needle in config
