"""A hostile org member (or nobody at all) against the API of a running room, over real HTTP.

- Pre-authentication cost: bodies are refused before a byte is read (401/403 before the body, 413
  for a declared or counted size over the route's cap), on the JSON, streaming and runner routes.
- Sessions: the review page's session is its own short-lived, server-side, revocable secret.
- Names: full-match validation; look-alikes (trailing or invisible characters, confusables, names
  equal after NFKC/casefold) are refused with a clear message.
- Oracles and assets: exact id lookups (no LIKE wildcards), one "not found" for absent, forbidden and
  ambiguous-with-what-you-may-not-see; no API docs by default (and none from a CDN when on);
  `Cache-Control: no-store` on JSON.
Every attack has a harmless control next to it.
"""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cleanroom import bundle
from cleanroom.errors import ValidationError
from cleanroom.store.db import dumps, now
from tests.conftest import Room
from tests.redteam.test_api_attacks import _register_room_key
from tests.test_web import add_dataset, csrf_of

BIG = 23 * 2**20


def raw_request(
    room: Any, head: str, body_chunks: list[bytes] | None = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """Send a request by hand (a header block, then optional body chunks) and read the answer.

    The answer must come within `timeout` without the declared body: a server that waits for
    the body before answering makes this time out."""
    with socket.create_connection(("127.0.0.1", room.port), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        try:
            for chunk in body_chunks or []:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed while we were still sending: that is the point
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
        header, _, body = data.partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            part = sock.recv(65536)
            if not part:
                break
            body += part
    return status, headers, body


def head(
    method: str,
    path: str,
    length: int | None,
    token: str | None = None,
    content_type: str = "application/json",
    extra: str = "",
) -> str:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return "\n".join(lines) + "\n" + extra


# Pre-authentication cost -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/jobs"),
        ("POST", "/datasets/uploads"),
        ("POST", "/orgs"),
        ("PUT", "/datasets/uploads/upl_x"),
        ("POST", "/plugins"),
        ("POST", "/runner/jobs/job_x/finish"),
        ("PUT", "/runner/jobs/job_x/artifacts/a.csv"),
    ],
)
@pytest.mark.parametrize("token", [None, "crt_0000000000000000.wrong", "not-a-token"])
def test_a_huge_body_without_a_valid_token_is_refused_before_it_is_read(room, method, path, token):
    started = time.monotonic()
    status, headers, body = raw_request(room, head(method, path, BIG, token))
    assert status == 401 and b"unauthenticated" in body, body
    assert time.monotonic() - started < 2
    assert headers.get("cache-control") == "no-store"


def test_a_wrong_role_is_refused_before_the_body_too(room):
    analyst, owner = room.org("acme", "analyst"), room.org("retailer", "owner")
    for token, method, path in (
        (owner.token, "POST", "/jobs"),
        (analyst.token, "POST", "/datasets/uploads"),
        (analyst.token, "POST", "/runner/jobs/job_x/finish"),
        (room.runner_token, "POST", "/plugins"),
    ):
        status, _, body = raw_request(room, head(method, path, BIG, token))
        assert status == 403 and b"forbidden" in body, (path, body)
    # control: the same callers with small bodies reach the routes (and their own validation)
    r = httpx.post(room.url + "/jobs", json={"spec": "name = 1"}, headers={"authorization": f"Bearer {analyst.token}"})
    assert r.status_code == 400 and r.json()["error"] in ("invalid_input", "policy_violation")


@pytest.mark.parametrize(
    "method,path,who,length",
    [
        ("POST", "/jobs", "analyst", 2**20 + 1),  # JSON routes: max_json_bytes
        ("POST", "/orgs", "admin", 2**20 + 1),
        ("POST", "/datasets/uploads", "owner", 8 * 2**20 + 1),  # the declaration: max_upload_meta_bytes
        ("POST", "/plugins", "analyst", 5 * 2**20 + 1),  # bundles: max_bundle_bytes
        ("POST", "/runner/jobs/job_x/finish", "runner", 16 * 2**20 + 1),
        ("PUT", "/runner/jobs/job_x/artifacts/a.csv", "runner", 100 * 2**20 + 1),
        ("PUT", "/datasets/uploads/upl_x", "owner", 4 * 2**30 + 1),  # ciphertext: max_upload_bytes
    ],
)
def test_a_declared_length_over_the_routes_cap_is_refused_before_the_body(room, method, path, who, length):
    tokens = {
        "analyst": room.org("acme", "analyst").token if who == "analyst" else None,
        "owner": room.org("retailer", "owner").token if who == "owner" else None,
        "admin": room.admin_token,
        "runner": room.runner_token,
    }
    status, _, body = raw_request(room, head(method, path, length, tokens[who]))
    assert status == 413 and b"too_large" in body, body
    # control: one byte under the cap is not refused for its size (the body is then read and judged)
    if length < 20 * 2**20:
        ok, _, body = raw_request(room, head(method, path, length - 2, tokens[who]), [b"x" * (length - 2)], timeout=30)
        assert ok != 413, body


def test_a_streamed_body_without_a_length_is_counted(room):
    analyst = room.org("acme", "analyst")
    chunk = b"x" * 65536
    chunks = [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(17)]  # 1.06 MiB > 1 MiB
    status, _, body = raw_request(
        room, head("POST", "/jobs", None, analyst.token, extra="Transfer-Encoding: chunked\n"), chunks, timeout=15
    )
    assert status == 413 and b"too_large" in body, body
    # control: a small chunked body is read and judged
    small = [b'10\r\n{"spec": "x = 1"}\r\n', b"0\r\n\r\n"]
    status, _, body = raw_request(
        room, head("POST", "/jobs", None, analyst.token, extra="Transfer-Encoding: chunked\n"), small
    )
    assert status == 400, body


@pytest.mark.parametrize("value", ["-1", "abc", "1e9", "99999999999999999999999"])
def test_a_malformed_content_length_is_refused(room, value):
    analyst = room.org("acme", "analyst")
    status, _, _ = raw_request(
        room, f"POST /jobs HTTP/1.1\nHost: x\nAuthorization: Bearer {analyst.token}\nContent-Length: {value}\n"
    )
    assert status == 400


def test_the_review_page_login_form_has_a_cap_too(room):
    status, _, body = raw_request(
        room, head("POST", "/ui/login", BIG, None, content_type="application/x-www-form-urlencoded")
    )
    assert status == 413, body
    assert httpx.get(room.url + "/ui/login").status_code == 200  # control


def test_streaming_routes_keep_their_larger_caps(room, tmp_path):
    analyst = room.org("acme", "analyst")
    folder = tmp_path / "big-plugin"
    folder.mkdir()
    (folder / "cleanroom-plugin.toml").write_text(
        'name = "big-plugin"\nversion = "1.0.0"\nkind = "preprocess"\nentry = "plugin.py"\n'
    )
    (folder / "plugin.py").write_text("def preprocess(df, params):\n    return df\n")
    (folder / "weights.csv").write_bytes(hashlib.sha256(b"seed").hexdigest().encode() * 40000)  # 2.5 MiB
    archive = bundle.pack(folder)
    assert len(archive) > 2**20  # bigger than the JSON cap
    assert analyst.submit_plugin(folder)["created"]


# Sessions --------------------------------------------------------------------------------------


def _browser(room: Any, token: str) -> httpx.Client:
    client = httpx.Client(base_url=room.url, follow_redirects=False, timeout=30)
    form = client.get("/ui/login")
    r = client.post("/ui/login", data={"token": token, "csrf": csrf_of(form.text)}, headers={"origin": room.url})
    assert r.status_code == 303, r.text
    return client


def _with_session(room: Any, session: str) -> int:
    return httpx.get(room.url + "/ui/datasets", cookies={"cleanroom_session": session}).status_code


def test_a_session_is_not_the_token_and_not_a_bearer(room):
    owner = room.org("retailer", "owner")
    client = _browser(room, owner.token)
    session = client.cookies["cleanroom_session"]
    assert owner.token not in session and session.startswith("crs_")
    assert _with_session(room, owner.token) == 401  # the org token is no session
    r = httpx.get(room.url + "/datasets", headers={"authorization": f"Bearer {session}"})
    assert r.status_code == 401  # the session is no API token
    assert _with_session(room, session) == 200  # control


def test_logout_revokes_the_session_on_the_server(room):
    owner = room.org("retailer", "owner")
    client = _browser(room, owner.token)
    session = client.cookies["cleanroom_session"]
    other = _browser(room, owner.token)  # a second browser of the same org
    page = client.get("/ui/datasets")
    assert client.post("/ui/logout", data={"csrf": csrf_of(page.text)}, headers={"origin": room.url}).status_code == 303
    assert _with_session(room, session) == 401  # a copied cookie is dead too
    assert other.get("/ui/datasets").status_code == 200  # control: only that session ended


def test_a_new_login_rotates_the_session(room):
    owner = room.org("retailer", "owner")
    client = _browser(room, owner.token)
    first = client.cookies["cleanroom_session"]
    form = client.get("/ui/datasets")
    r = client.post("/ui/login", data={"token": owner.token, "csrf": csrf_of(form.text)}, headers={"origin": room.url})
    assert r.status_code == 303
    second = client.cookies["cleanroom_session"]
    assert second != first
    assert _with_session(room, first) == 401 and _with_session(room, second) == 200


def test_rotating_the_org_token_ends_its_sessions(room):
    owner, other = room.org("retailer", "owner"), room.org("bank", "owner")
    mine, theirs = _browser(room, owner.token), _browser(room, other.token)
    owner.rotate_token()
    assert mine.get("/ui/datasets").status_code == 401
    assert theirs.get("/ui/datasets").status_code == 200  # control: another org's session lives on
    assert _browser(room, owner.token).get("/ui/datasets").status_code == 200  # the new token logs in


def test_sessions_expire(tmp_path):
    room = Room(tmp_path / "short", web_session_seconds=1)
    try:
        owner = room.org("retailer", "owner")
        session = _browser(room, owner.token).cookies["cleanroom_session"]
        assert _with_session(room, session) == 200  # control
        time.sleep(1.5)
        expired = httpx.get(room.url + "/ui/datasets", cookies={"cleanroom_session": session})
        assert expired.status_code == 401 and "Log in again" in expired.text  # kept past its max-age: refused
    finally:
        room.stop()


@pytest.mark.parametrize("forged", ["crs_", "crs_0.x", "crs_" + "0" * 24 + "." + "A" * 43, "crs_../..", "x" * 400])
def test_forged_sessions_are_refused(room, forged):
    owner = room.org("retailer", "owner")
    _browser(room, owner.token)
    assert _with_session(room, forged) == 401


def test_sessions_are_stored_hashed(room):
    owner = room.org("retailer", "owner")
    session = _browser(room, owner.token).cookies["cleanroom_session"]
    session_id, _, secret = session.removeprefix("crs_").partition(".")
    with room.store.read() as conn:
        row = conn.execute("SELECT * FROM web_sessions WHERE id = ?", (session_id,)).fetchone()
    assert row is not None and secret not in dict(row).values()
    assert row["hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert row["expires_at"] - row["created_at"] <= room.settings.web_session_seconds


# Names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,why",
    [
        ("acme\n", "not valid"),
        ("acme\u200b", "invisible"),
        ("acm\u0435", "non-ASCII|invisible|not valid"),
        ("ACME", "not valid"),
        ("acme-analytlcs", "looks like"),
        ("acrne-analytics", "looks like"),
        ("acme-analytics\t", "not valid"),
        ("acme-anal\u00adytics", "invisible"),
    ],
)
def test_org_names_are_full_matches_and_no_look_alikes(room, name, why):
    room.org("acme-analytics", "analyst")
    r = httpx.post(
        room.url + "/orgs",
        json={"name": name, "roles": ["analyst"]},
        headers={"authorization": f"Bearer {room.admin_token}"},
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_input", r.text
    import re

    assert re.search(why, r.json()["message"]), r.json()
    assert "\u200b" not in r.text and "\n" not in r.json()["message"]  # the message shows markers, not the bytes
    names = [o["name"] for o in room.admin.list_orgs()]
    assert name not in names
    assert room.admin.create_org("acme-labs", ["analyst"])["org"]["name"] == "acme-labs"  # control


def _declare(owner: Any, name: str) -> httpx.Response:
    return httpx.post(
        owner.url + "/datasets/uploads",
        headers={"authorization": f"Bearer {owner.token}"},
        json={
            "name": name,
            "policy": "[privacy]\nk = 5\n",
            "row_count": 10,
            "mock": [],
            "dropped": [],
            "schema": {"columns": [{"name": "_pid", "type": "string"}]},
            "sha256": hashlib.sha256(name.encode()).hexdigest(),
            "size": 100,
        },
    )


@pytest.mark.parametrize(
    "name",
    [
        "retail.purchases\n",
        "retail_purchases",
        "retail-purchases",
        "retai1.purchases",
        "Retail.purchases",
        "retail.purchases\u200d",
        "retail.purchase\u0455",
    ],
)
def test_dataset_names_are_full_matches_and_no_look_alikes(room, name):
    _register_room_key(room)
    owner = room.org("retailer", "owner")
    add_dataset(room, owner.whoami()["id"], "retail.purchases", "the real one")
    r = _declare(owner, name)
    assert r.status_code == 400 and r.json()["error"] == "invalid_input", r.text
    assert _declare(owner, "retail.returns").status_code == 201  # control


@pytest.mark.parametrize("version", ["1.0.0\n", "01.0.0", "1.00.0", "1.0.0\u200b"])
def test_plugin_versions_are_full_matches(room, tmp_path, version):
    analyst = room.org("acme", "analyst")
    folder = tmp_path / "p"
    folder.mkdir()
    toml_version = version.replace("\n", "\\n")
    (folder / "cleanroom-plugin.toml").write_text(
        f'name = "tidy"\nversion = "{toml_version}"\nkind = "preprocess"\nentry = "plugin.py"\n', encoding="utf-8"
    )
    (folder / "plugin.py").write_text("def preprocess(df, params):\n    return df\n")
    with pytest.raises(ValidationError):
        analyst.submit_plugin(folder)
    assert analyst.list_plugins() == []
    (folder / "cleanroom-plugin.toml").write_text(
        'name = "tidy"\nversion = "1.0.0"\nkind = "preprocess"\nentry = "plugin.py"\n'
    )
    assert analyst.submit_plugin(folder)["created"]  # control


def test_a_job_name_with_a_trailing_newline_is_refused(room):
    analyst = room.org("acme", "analyst")
    spec = (
        'name = "weekly\\n"\nrecipient = "acme"\n[[inputs]]\ndataset = "x"\n[[steps]]\nplugin = "'
        + "a" * 64
        + '"\n[outputs]\n'
    )
    r = httpx.post(room.url + "/jobs", json={"spec": spec}, headers={"authorization": f"Bearer {analyst.token}"})
    assert r.status_code == 400 and "job name" in r.json()["message"], r.text
    r = httpx.post(
        room.url + "/jobs",
        json={"spec": spec.replace("weekly\\n", "weekly")},
        headers={"authorization": f"Bearer {analyst.token}"},
    )
    assert r.status_code == 400 and "job name" not in r.json()["message"]  # control: fails later, for other reasons


# Oracles ---------------------------------------------------------------------------------------


def _fake_plugin(room: Any, org_id: str, plugin_id: str, name: str) -> None:
    with room.store.tx() as conn:
        conn.execute(
            "INSERT INTO plugins (id, name, version, kind, manifest, review, size, submitted_by,"
            " created_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (plugin_id, name, "1.0.0", "preprocess", dumps({"name": name}), dumps({"findings": []}), 1, org_id, now()),
        )


def test_plugin_lookups_are_exact_and_say_one_thing_to_those_who_may_not_see(room, tmp_path):
    bob, rival, owner = room.org("bob-co", "analyst"), room.org("rival", "analyst"), room.org("retailer", "owner")
    bob_id = bob.whoami()["id"]
    _fake_plugin(room, bob_id, "deadbeef" + "1" * 56, "bob-one")
    _fake_plugin(room, bob_id, "deadbeef" + "2" * 56, "bob-two")
    folder = tmp_path / "rival-own"
    folder.mkdir()
    (folder / "cleanroom-plugin.toml").write_text(
        'name = "rival-own"\nversion = "1.0.0"\nkind = "preprocess"\nentry = "plugin.py"\n'
    )
    (folder / "plugin.py").write_text("def preprocess(df, params):\n    return df\n")
    own = rival.submit_plugin(folder)["id"]

    def ask(client: Any, ref: str) -> tuple[int, bytes]:
        r = httpx.get(f"{room.url}/plugins/{ref}", headers={"authorization": f"Bearer {client.token}"})
        return r.status_code, r.content

    absent = ask(rival, "0123456789abcdef")
    assert absent[0] == 404
    for ref in (
        "deadbeef",  # ambiguous among bob's
        "deadbeef1111",  # exactly one of bob's
        "deadbeef" + "1" * 56,  # bob's full id
        "bob-one@1.0.0",  # bob's name@version
        "%25%25%25%25%25%25%25%25",  # LIKE wildcards: %%%%%%%%
        "________",
        "dead____",
        "deadbee%25",
        "%25",
    ):
        assert ask(rival, ref) == absent, ref  # byte for byte the same answer
    # wildcards are no wildcards, even for those who may see everything
    for ref in ("________", "%25%25%25%25%25%25%25%25", "dead%25"):
        assert ask(owner, ref)[0] == 404, ref
    # controls: the caller's own plugin by prefix; an owner sees the ambiguity among what it may see
    assert ask(rival, own[:8])[0] == 200 and ask(rival, "rival-own@1.0.0")[0] == 200
    status, body = ask(owner, "deadbeef")
    assert status == 400 and b"ambiguous" in body
    assert ask(bob, "deadbeef")[0] == 400


def test_other_lookups_answer_not_found_the_same_way(room, tmp_path):
    owner, analyst, rival = room.org("retailer", "owner"), room.org("acme", "analyst"), room.org("rival", "analyst")
    add_dataset(room, owner.whoami()["id"], "shop", "x")
    job_id = "job_" + "a" * 20
    with room.store.tx() as conn:
        conn.execute(
            "INSERT INTO jobs (id, org_id, name, spec, effective_policy, status, created_at) VALUES (?,?,?,?,?,?,?)",
            (
                job_id,
                analyst.whoami()["id"],
                "j",
                dumps({"inputs": [{"dataset": "shop"}], "recipient": "acme"}),
                "{}",
                "queued",
                now(),
            ),
        )

    def ask(client: Any, path: str) -> tuple[int, bytes]:
        r = httpx.get(room.url + path, headers={"authorization": f"Bearer {client.token}"})
        return r.status_code, r.content

    assert ask(rival, f"/jobs/{job_id}") == ask(rival, "/jobs/job_" + "b" * 20)
    assert ask(rival, f"/jobs/{job_id}")[0] == 404
    assert ask(rival, f"/releases/{job_id}") == ask(rival, "/releases/job_" + "b" * 20)
    assert ask(analyst, f"/jobs/{job_id}")[0] == 200  # control


# Assets and caching ----------------------------------------------------------------------------


def test_api_docs_are_off_by_default(room):
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        r = httpx.get(room.url + path)
        assert r.status_code == 404, path
        assert "cdn" not in r.text.lower()
    assert httpx.get(room.url + "/openapi.json").status_code == 200  # control: the schema stays


def test_api_docs_when_on_load_nothing_from_outside(tmp_path: Path):
    room = Room(tmp_path / "docs", api_docs=True)
    try:
        r = httpx.get(room.url + "/docs")
        assert r.status_code == 200 and "/plugins/{ref}" in r.text
        text = r.text.lower()
        assert "<script" not in text and "cdn" not in text and "http://" not in text and "https://" not in text
        csp = r.headers["content-security-policy"]
        assert csp.startswith("default-src 'none'") and "script-src" not in csp
        assert httpx.get(room.url + "/redoc").status_code == 404
    finally:
        room.stop()


def test_json_answers_are_not_cached(room):
    owner = room.org("retailer", "owner")
    auth = {"authorization": f"Bearer {owner.token}"}
    for path, headers in (
        ("/datasets", auth),
        ("/orgs/me", auth),
        ("/plugins/nope", auth),
        ("/datasets", {}),
        ("/audit", auth),
    ):
        r = httpx.get(room.url + path, headers=headers)
        assert r.headers.get("cache-control") == "no-store", path
        assert r.headers.get("x-content-type-options") == "nosniff", path
    assert httpx.get(room.url + "/datasets", headers=auth).status_code == 200  # control


@pytest.mark.parametrize(
    "name,version",
    [("tidy\n", "1.0.0"), ("tidy", "1.0.0\n"), ("tidy", "1.0.0\u200b"), ("tidy\u200b", "1.0.0"), ("tidy", "01.0.0")],
)
def test_a_hand_made_bundle_with_a_look_alike_manifest_is_refused_by_the_api(room, name, version):
    """The client refuses these before sending; a hostile client sends the archive by hand."""
    from cleanroom.sandbox.bundles import pack_files

    analyst = room.org("acme", "analyst")
    toml_name, toml_version = (v.replace("\n", "\\n") for v in (name, version))

    def archive(n: str, v: str) -> bytes:
        manifest = f'name = "{n}"\nversion = "{v}"\nkind = "preprocess"\nentry = "plugin.py"\n'
        return pack_files(
            {"cleanroom-plugin.toml": manifest.encode(), "plugin.py": b"def preprocess(df, params):\n    return df\n"}
        )

    r = httpx.post(
        room.url + "/plugins",
        content=archive(toml_name, toml_version),
        headers={"authorization": f"Bearer {analyst.token}", "content-type": "application/x-tar"},
    )
    assert r.status_code == 400 and r.json()["error"] in ("invalid_input", "invalid_bundle"), r.text
    assert analyst.list_plugins() == []
    r = httpx.post(
        room.url + "/plugins",
        content=archive("tidy", "1.0.0"),
        headers={"authorization": f"Bearer {analyst.token}", "content-type": "application/x-tar"},
    )
    assert r.status_code == 201  # control
