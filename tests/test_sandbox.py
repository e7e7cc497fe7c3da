"""The sandbox launcher: the isolation baseline, read back from the engine, failing closed."""

from __future__ import annotations

import io
import os

import pytest

from cleanroom.errors import IsolationUnavailable
from cleanroom.runner import sandbox as sb
from cleanroom.sandbox import wire
from cleanroom.settings import Settings
from tests.dockerutil import require_docker, require_image


def test_config_is_the_baseline():
    cfg = sb.container_config(Settings(job_memory="1g", job_pids=64, job_cpus=0.5), "img", "compute", "job_1")
    assert cfg["network_mode"] == "none" and cfg["read_only"] is True and cfg["cap_drop"] == ["ALL"]
    assert cfg["user"] == "65534:65534" and cfg["security_opt"] == ["no-new-privileges:true"]
    assert cfg["mem_limit"] == cfg["memswap_limit"] == 2**30 and cfg["pids_limit"] == 64
    assert cfg["nano_cpus"] == 500_000_000 and cfg["ipc_mode"] == "none" and cfg["init"] is True
    assert "noexec" in cfg["tmpfs"]["/tmp"] and cfg["environment"] == {"HOME": "/tmp"}
    assert "volumes" not in cfg and "privileged" not in cfg and cfg["tty"] is False
    assert cfg["command"] == ["python", "-I", "-m", "cleanroom.sandbox.compute"]


def test_missing_control_fails_closed_unless_waived():
    applied = dict.fromkeys(sb.CONTROLS, True)
    assert sb.check_isolation(applied, []) == []
    applied["pids"] = False
    with pytest.raises(IsolationUnavailable, match="pids"):
        sb.check_isolation(applied, [])
    assert sb.check_isolation(applied, ["pids"]) == ["pids"]


@pytest.fixture
def box():
    client = require_docker()
    image = require_image(client, "CLEANROOM_SANDBOX_IMAGE")
    return sb.Sandbox(Settings(sandbox_image=image, job_timeout_seconds=60))


def _empty_compute_request() -> bytes:
    buf = io.BytesIO()
    wire.write_message(buf, "job.json", {"job_id": "t", "inputs": [], "steps": [], "max_output_bytes": 10**6}, {})
    return buf.getvalue()


@pytest.mark.docker
def test_engine_applies_every_control(box):
    result = box.run_phase("compute", "job_conformance", _empty_compute_request())
    assert result.exit_code is not None
    assert {c: result.isolation[c] for c in sb.CONTROLS} == dict.fromkeys(sb.CONTROLS, True)
    assert result.isolation["environment"] == sorted(result.isolation["environment"])
    assert not [k for k in result.isolation["environment"] if "TOKEN" in k or "KEY" in k or "SECRET" in k]
    leftover = box.docker.containers.list(all=True, filters={"label": "cleanroom.job=job_conformance"},
                                          ignore_removed=True)
    assert leftover == []


@pytest.mark.docker
def test_unknown_runtime_is_refused(box):
    strict = sb.Sandbox(Settings(sandbox_image=box.settings.sandbox_image, sandbox_runtime="runsc-missing"))
    with pytest.raises(IsolationUnavailable):
        strict.run_phase("compute", "job_runtime", _empty_compute_request())


@pytest.mark.docker
def test_waived_control_is_reported(box, monkeypatch):
    real = sb.read_back

    def without_pids(attrs, config):
        applied = real(attrs, config)
        applied["pids"] = False  # as an engine that ignores pids limits would report
        return applied

    monkeypatch.setattr(sb, "read_back", without_pids)
    with pytest.raises(IsolationUnavailable):
        box.run_phase("compute", "job_waive", _empty_compute_request())
    waiving = sb.Sandbox(Settings(sandbox_image=box.settings.sandbox_image, allow_unenforced=["pids"]))
    result = waiving.run_phase("compute", "job_waive2", _empty_compute_request())
    assert result.isolation["waived"] == ["pids"]
    assert os.environ.get("CLEANROOM_ALLOW_UNENFORCED") is None
