"""HTTPS: the API serves TLS with a certificate from settings; clients verify it against a custom CA."""

from __future__ import annotations

import datetime
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cleanroom.client import Client
from cleanroom.errors import ConnectionFailed, ValidationError
from tests.conftest import free_port


def _cert(tmp: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cleanroom test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def test_https_with_custom_ca(tmp_path):
    ca, cert, key = _cert(tmp_path)
    port = free_port()
    env = {
        "CLEANROOM_DATA_DIR": str(tmp_path / "data"),
        "CLEANROOM_TLS_CERT": str(cert),
        "CLEANROOM_TLS_KEY": str(key),
        "CLEANROOM_BOOTSTRAP_TOKEN": "crt_0123456789abcdef.secret-for-tls-test",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from cleanroom.cli import main; main()",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"https://localhost:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                httpx.get(url + "/health", verify=ssl.create_default_context(cafile=str(ca)))
                break
            except httpx.TransportError:
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError(proc.stderr.read().decode() if proc.stderr else "no output") from None
                time.sleep(0.2)
        with Client(url, env["CLEANROOM_BOOTSTRAP_TOKEN"], ca_file=str(ca)) as client:
            assert client.whoami()["name"] == "admin"
        with pytest.raises(ConnectionFailed), Client(url, env["CLEANROOM_BOOTSTRAP_TOKEN"]) as untrusted:
            untrusted.whoami()  # not trusted without the CA
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def test_plain_http_only_on_loopback():
    with pytest.raises(ValidationError, match="plain HTTP"):
        Client("http://10.1.2.3:8000", "crt_x.y")
    Client("http://127.0.0.1:8000", "crt_x.y").close()


def test_an_unusable_ca_file_is_a_clear_error(tmp_path):
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    for ca in (tmp_path / "missing.pem", not_pem):
        with pytest.raises(ValidationError, match="as the CA file"):
            Client("https://room.example:8443", "crt_x.y", ca_file=str(ca))
    Client("https://room.example:8443", "crt_x.y").close()  # control: the system's CAs


def test_serve_refuses_plain_http_on_a_public_address(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from cleanroom.cli import main; main()",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        env={"CLEANROOM_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "refusing plain HTTP" in done.stderr
