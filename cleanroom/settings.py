"""All settings in one place, read from the environment (`CLEANROOM_*`) and passed in.

Nothing here is built at import time: `Settings.from_env()` is called by the entry points.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from cleanroom.errors import ValidationError

_PLACEHOLDERS = {"", "changeme", "change-me", "secret", "token", "admin"}


def _bool(value: str) -> bool:
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass
class Settings:
    """Every setting of the API service and the runner. The README lists each one."""

    # API service
    data_dir: Path = Path(".cleanroom-data")
    database_url: str | None = None  # sqlite:///path or postgresql://user:pass@host/db (default: data_dir)
    host: str = "127.0.0.1"
    port: int = 8000
    tls_cert: str | None = None
    tls_key: str | None = None
    allow_insecure_remote: bool = False  # plain HTTP on a non-loopback address
    max_upload_bytes: int = 4 * 2**30
    max_bundle_bytes: int = 5 * 2**20
    max_release_bytes: int = 100 * 2**20
    max_queued_jobs_per_org: int = 20
    dp_room_epsilon: float = 0.0  # room-wide privacy cap over every job (cleanroom.ledger); 0: none
    job_time_budget_seconds: int = 600  # a job's outcome is shown to its analyst this long after its start
    upload_ttl_seconds: int = 24 * 3600  # a declared upload reserves its dataset name this long
    blob_grace_seconds: int = 48 * 3600  # `admin sweep` keeps unreferenced blobs younger than this
    max_json_bytes: int = 2**20  # request bodies of every route without a cap of its own
    max_upload_meta_bytes: int = 8 * 2**20  # a dataset declaration (schema, mock sample, policy)
    max_runner_json_bytes: int = 16 * 2**20  # the runner's finish report (manifest and receipt)
    web_session_seconds: int = 8 * 3600  # a review-page login lasts this long at most
    api_docs: bool = False  # serve /docs (rendered here, no scripts); off by default
    runner_token_file: str | None = None  # the API writes/reads the runner's token here
    bootstrap_token: str | None = None  # preset admin token (else one is printed on first start)
    # runner
    url: str = "http://127.0.0.1:8000"
    token: str | None = None
    token_file: str | None = None
    ca_file: str | None = None
    runner_home: Path = Path(".cleanroom-runner")
    runner_name: str | None = None  # this runner among the room's runners; default: the host name
    sandbox_image: str = "cleanroom-sandbox:latest"
    poll_seconds: float = 1.0
    max_concurrent_jobs: int = 2
    job_memory: str = "2g"
    job_cpus: float = 1.0
    job_pids: int = 128
    job_tmpfs_bytes: int = 256 * 2**20
    job_timeout_seconds: int = 900
    job_max_output_bytes: int = 512 * 2**20
    job_log_bytes: int = 64 * 2**10
    sandbox_runtime: str | None = None  # e.g. "runsc" when gVisor is installed
    warm_pool: bool = True  # keep one started container per phase ready for the next job
    allow_unenforced: list[str] = field(default_factory=list)  # isolation controls the operator waives

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            key = "CLEANROOM_" + f.name.upper()
            if key not in env:
                continue
            raw = env[key]
            if raw == "":
                continue  # compose passes unset variables through as empty strings
            try:
                values[f.name] = _convert(f.type, raw)
            except ValueError as exc:
                raise ValidationError(f"setting {key}={raw!r} is not valid: {exc}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)  # type: ignore[arg-type]
        settings.data_dir = Path(settings.data_dir)
        settings.runner_home = Path(settings.runner_home)
        return settings

    def runner_token(self) -> str:
        token = self.token
        if not token and self.token_file:
            try:
                token = Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise ValidationError(f"cannot read CLEANROOM_TOKEN_FILE {self.token_file}: {exc}") from exc
        if not token or token.lower() in _PLACEHOLDERS:
            raise ValidationError("the runner needs a token: set CLEANROOM_TOKEN or CLEANROOM_TOKEN_FILE")
        return token


def _convert(kind: object, raw: str) -> object:
    text = str(kind)
    if "bool" in text:
        return _bool(raw)
    if text.startswith("int"):
        return int(raw)
    if text.startswith("float"):
        return float(raw)
    if "list" in text:
        return [item.strip() for item in raw.split(",") if item.strip()]
    if "Path" in text:
        return Path(raw)
    return raw
