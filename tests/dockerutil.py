"""Docker for tests: a missing engine skips a test locally and fails it in CI (CI=true)."""

from __future__ import annotations

import os
from typing import Any

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> None:
    """Skip, or fail when running in CI, where every Docker test must run."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: Docker tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


def require_docker() -> Any:
    """A connected `docker.DockerClient`; skips (locally) or fails (in CI) without an engine."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:  # ImportError, DockerException, connection errors: all mean "no engine"
        unavailable(f"Docker engine not available: {exc}")
    return client


def require_image(client: Any, env_var: str) -> str:
    """The image tag named by `env_var` (set by `make test` from containers/.build/images.env)."""
    import docker

    tag = os.environ.get(env_var, "")
    if not tag:
        unavailable(f"{env_var} is not set: run `make images` and export containers/.build/images.env")
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        unavailable(f"image {tag} ({env_var}) does not exist: run `make images`")
    return tag


def job_containers(client: Any, job_id: str) -> list[Any]:
    """A job's sandbox containers: labelled with its id, or taken from the runner's warm pool (labelled
    `warm`, renamed `cleanroom-<job>-<phase>` when the job took them)."""
    from cleanroom.runner.launcher import LABEL, WARM_PHASES, container_name

    found = {
        c.id: c for c in client.containers.list(all=True, filters={"label": f"{LABEL}={job_id}"}, ignore_removed=True)
    }
    names = {container_name(job_id, phase) for phase in WARM_PHASES}
    for c in client.containers.list(all=True, filters={"name": container_name(job_id, "")}, ignore_removed=True):
        if c.name in names:
            found.setdefault(c.id, c)
    return list(found.values())
