"""The runner's HTTP client for the API's /runner routes (the runner holds its own token)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from cleanroom.errors import ConnectionFailed, from_response


class RunnerAPI:
    def __init__(
        self, url: str, token: str, *, ca_file: str | None = None, transport: httpx.BaseTransport | None = None
    ) -> None:
        verify: ssl.SSLContext | bool = True
        if ca_file:  # the room's CA: a PEM file, or a folder of them
            is_dir = Path(ca_file).is_dir()
            verify = ssl.create_default_context(capath=ca_file if is_dir else None, cafile=None if is_dir else ca_file)
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(60.0, read=600.0),
            verify=verify,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RunnerAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"runner cannot reach the API: {exc}") from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"message": resp.text[:200]}
            raise from_response(resp.status_code, body)
        return resp

    def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        body: dict[str, Any] = self._call(method, path, **kw).json()
        return body

    def register(self, enc_public: str, sign_public: str, waived: list[str] | None = None) -> dict[str, Any]:
        return self._json(
            "POST",
            "/runner/register",
            json={"enc_public": enc_public, "sign_public": sign_public, "waived": waived or []},
        )

    def heartbeat(self, instance: str, name: str, ttl: float) -> dict[str, Any]:
        """This runner instance is alive (the first call announces it); the answer lists the live instances."""
        return self._json("POST", "/runner/heartbeat", json={"instance": instance, "name": name, "ttl": ttl})

    def recover(self, instance: str | None = None) -> dict[str, Any]:
        """Re-queue (or fail) the running jobs of runner instances that are gone."""
        return self._json("POST", "/runner/recover", json={"instance": instance} if instance else None)

    def claim(self, instance: str | None = None) -> str | None:
        job: str | None = self._json("POST", "/runner/claim", json={"instance": instance} if instance else None)["job"]
        return job

    def status(self, job_id: str) -> str:
        return str(self._json("GET", f"/runner/jobs/{job_id}")["status"])

    def context(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/runner/jobs/{job_id}/context")

    def ciphertext(self, name: str, max_bytes: int) -> bytes:
        out = bytearray()
        try:
            with self.http.stream("GET", f"/runner/datasets/{name}/ciphertext") as resp:
                if resp.status_code >= 400:
                    raise from_response(resp.status_code, {"message": f"cannot fetch {name}"})
                for chunk in resp.iter_bytes():
                    out.extend(chunk)
                    if len(out) > max_bytes:
                        raise ConnectionFailed(f"ciphertext of {name} is larger than declared")
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"runner cannot fetch {name}: {exc}") from exc
        return bytes(out)

    def bundle(self, plugin_id: str) -> bytes:
        return self._call("GET", f"/runner/plugins/{plugin_id}/bundle").content

    def progress(self, job_id: str, phase: str) -> str:
        return str(self._json("POST", f"/runner/jobs/{job_id}/progress", json={"phase": phase})["status"])

    def artifact(self, job_id: str, name: str, data: bytes) -> dict[str, Any]:
        return self._json("PUT", f"/runner/jobs/{job_id}/artifacts/{name}", content=data)

    def finish(self, job_id: str, **body: Any) -> dict[str, Any]:
        return self._json("POST", f"/runner/jobs/{job_id}/finish", json=body)
