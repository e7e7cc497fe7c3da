"""`cleanroom review`: the owner's review pages served from the owner's machine, over a real room and runner.

A clinic's dataset in exact mode (every release waits for the owner) with hostile names from the data
side: a numeric column named `lab<script>...` (a model feature) and group keys `<script>...` and one with
a bidi control. Real jobs release a ridge model and a table; the owner reviews them through the local
server (HTTP tests with a control for each refusal) and in headless Chromium.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from cleanroom.client import Client, manifest_sha256
from cleanroom.crypto import verify
from cleanroom.errors import Conflict, IntegrityError
from cleanroom.local.review_server import ReviewServer
from cleanroom.prepare.ingest import new_join_secret
from cleanroom.profile import Profile
from tests.conftest import Room, RunnerThread
from tests.test_web_browser import driver as _chromium  # noqa: F401  (the headless Chromium fixture)

REPO = Path(__file__).resolve().parent.parent
docker = pytest.mark.docker

DATASET = "clinic.visits"
HOSTILE_COLUMN = "lab<script>alert(2)</script>"
HOSTILE_KEY = "<script>alert(1)</script>"
BIDI_KEY = "we\u202est"
POLICY = """[outputs]
allowed = ["aggregate", "model"]

[privacy]
require_dp = false
k = 5

[release]
recipients = ["acme-analytics"]
review = true

[models]
estimators = ["ridge", "linear_regression"]

[columns.cost]
bounds = [0, 5000]
[columns.region]
domain = ["north", "south", "<script>alert(1)</script>", "we\\u202Est"]
"""


def job_spec(ids: dict[str, str], dataset: str = DATASET) -> str:
    return f"""name = "visit-costs"
recipient = "acme-analytics"

[[inputs]]
dataset = "{dataset}"

[[steps]]
plugin = "{ids["linear-model"]}"
params = {{ estimator = "ridge", target = "cost", alpha = 1.0 }}

[[steps]]
plugin = "{ids["group-aggregate"]}"
params = {{ name = "cost_by_region", group_by = ["region"], metrics = [{{ agg = "count" }}, \
{{ agg = "mean", column = "cost" }}] }}

[outputs]
model = true
metrics = true
aggregates = true
"""


def make_held_releases(
    owner: Client, analyst: Client, folder: Path, jobs: int, n: int = 300, dataset: str = DATASET
) -> list[str]:
    """Upload the clinic's data, approve the built-in plugins, run `jobs` jobs; their job ids (each release
    held for the owner's review once the job ended). Shared with scripts/screenshots.py."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "patient_id": [f"P{i:05d}" for i in range(n)],
            "region": rng.choice(["north", "south", HOSTILE_KEY, BIDI_KEY], n),
            "visits": rng.poisson(6, n),
            HOSTILE_COLUMN: rng.normal(50, 10, n).round(2),
        }
    )
    frame["cost"] = (100 + 30 * frame["visits"] + 2 * frame[HOSTILE_COLUMN] + rng.normal(0, 20, n)).round(2)
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "visits.csv", index=False)
    owner.upload_dataset(
        folder / "visits.csv", name=dataset, policy=POLICY, id_column="patient_id", join_secret=new_join_secret()
    )
    ids = {p: analyst.submit_plugin(REPO / "plugins" / p)["id"] for p in ("linear-model", "group-aggregate")}
    for pid in ids.values():
        owner.decide_plugin(pid, dataset)
    return [analyst.submit_job(job_spec(ids, dataset))["id"] for _ in range(jobs)]


@dataclass
class World:
    room: Room
    owner: Client
    analyst: Client
    jobs: list[str]
    home: Path


@pytest.fixture(scope="module")
def review_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("review-home")


@pytest.fixture(autouse=True)
def cleanroom_home(review_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """(Overrides conftest's.) One home for the module: the orgs' keys live there across its tests."""
    monkeypatch.setenv("CLEANROOM_HOME", str(review_home))
    for var in ("CLEANROOM_URL", "CLEANROOM_TOKEN", "CLEANROOM_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    return review_home


@pytest.fixture(scope="module")
def world(review_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from tests.dockerutil import require_docker, require_image

    require_image(require_docker(), "CLEANROOM_SANDBOX_IMAGE")
    tmp = tmp_path_factory.mktemp("review-room")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLEANROOM_HOME", str(review_home))
        room = Room(tmp / "api")
        runner = RunnerThread(room, tmp / "runner")
        try:
            owner, analyst = room.org("clinic", "owner"), room.org("acme-analytics", "analyst")
            jobs = make_held_releases(owner, analyst, tmp / "data", jobs=4)
            for job in jobs:
                assert room.admin.wait_job(job, timeout=300, interval=0.3)["status"] == "succeeded"
            yield World(room, owner, analyst, jobs, review_home)
        finally:
            runner.stop()
            room.stop()


@pytest.fixture
def served(world: World) -> Iterator[ReviewServer]:
    server = ReviewServer(world.owner)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def page(server: ReviewServer, path: str = "", **kw: Any) -> httpx.Response:
    return httpx.get(server.url + path, timeout=60, **kw)


def post(
    server: ReviewServer, path: str, data: dict[str, str], origin: str | None = "own", **headers: str
) -> httpx.Response:
    own = server.url.split("/", 3)
    sent = {"origin": f"{own[0]}//{own[2]}" if origin == "own" else origin, **headers}
    return httpx.post(
        server.url + path, data=data, timeout=60, headers={k: v for k, v in sent.items() if v is not None}
    )


def shown_manifest(text: str) -> str:
    match = re.search(r'name="manifest" value="([0-9a-f]{64})"', text)
    assert match, "the page has no decision form"
    return match.group(1)


def release_id(world: World, job: str) -> str:
    return str(world.owner.get_release(job)["id"])


# -- who can drive it ---------------------------------------------------------------------------------


@docker
def test_the_token_is_required(world, served):
    rid = release_id(world, world.jobs[0])
    assert page(served).status_code == 200  # the control: the printed address works
    assert page(served, f"releases/{rid}").status_code == 200
    origin = served.url.rsplit("/", 2)[0]
    token = served.app.token
    for path in (
        "/",
        "/releases/" + rid,
        f"/{token[:-1]}x/",
        f"/{token[:-1]}/releases/{rid}",
        f"/x{token}/",
        f"/releases/{token}/",
    ):
        r = httpx.get(origin + path, timeout=30)
        assert r.status_code == 403, path
        assert "printed" in r.text
        for secret in (rid, "clinic", "north", "alert", "cost_by_region"):
            assert secret not in r.text, (path, secret)
    refused = httpx.post(
        f"{origin}/{token[:-1]}x/releases/{rid}/approve",
        timeout=30,
        data={"manifest": "0" * 64},
        headers={"origin": origin},
    )
    assert refused.status_code == 403
    assert world.owner.get_release(rid)["pending_review"] == [DATASET]


@docker
def test_it_listens_on_loopback_only_and_answers_only_its_own_host(world, served):
    host, port = served.server_address[:2]
    assert host == "127.0.0.1"
    assert httpx.get(f"http://localhost:{port}/{served.app.token}/", timeout=30).status_code == 200  # control
    rebound = page(served, headers={"host": f"evil.example:{port}"})  # DNS rebinding: a page of another name
    assert rebound.status_code == 403 and "clinic" not in rebound.text
    assert page(served, headers={"host": "127.0.0.1"}).status_code == 403  # the port is part of the origin
    address = _non_loopback_address()
    if address:  # this machine's other addresses do not answer
        with pytest.raises(OSError), socket.create_connection((address, port), timeout=3):
            pass


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else str(address)


@docker
def test_security_headers_and_no_script(world, served):
    for path in ("", f"releases/{release_id(world, world.jobs[0])}"):
        r = page(served, path)
        csp = r.headers["content-security-policy"]
        assert csp.startswith("default-src 'none'; style-src 'sha256-") and "script-src" not in csp
        assert "unsafe-inline" not in csp and "form-action 'self'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["cache-control"] == "no-store" and r.headers["x-frame-options"] == "DENY"
        assert "<script" not in r.text and "http://" not in r.text and "https://" not in r.text
    style = re.search(r"<style>(.*?)</style>", r.text, re.S)
    digest = hashlib.sha256(style.group(1).encode()).digest()  # the hash in the CSP is the page's own style
    import base64

    assert base64.b64encode(digest).decode() in r.headers["content-security-policy"]


@docker
def test_a_cross_origin_post_is_refused(world, served):
    rid = release_id(world, world.jobs[0])
    manifest = shown_manifest(page(served, f"releases/{rid}").text)
    for origin, extra in (
        ("http://evil.example", {}),
        ("null", {}),
        (None, {}),
        ("own", {"sec-fetch-site": "cross-site"}),
        ("own", {"sec-fetch-site": "same-site"}),
    ):
        r = post(served, f"releases/{rid}/approve", {"manifest": manifest}, origin=origin, **extra)
        assert r.status_code == 403 and "cross-origin" in r.text, (origin, extra)
        r = post(served, f"releases/{rid}/reject", {"manifest": manifest, "reason": "x"}, origin=origin, **extra)
        assert r.status_code == 403
    view = world.owner.get_release(rid)
    assert view["pending_review"] == [DATASET] and not view["approved_by"] and not view["rejected_by"]


# -- what the owner sees ------------------------------------------------------------------------------


@docker
def test_the_content_is_decrypted_here_and_shown_escaped(world, served, tmp_path):
    job = world.jobs[0]
    rid = release_id(world, job)
    text = page(served, f"releases/{rid}").text
    # the same bytes as `result get` on the owner's machine
    world.owner.get_result(job, tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "aggregates" / "cost_by_region.csv", keep_default_na=False, dtype=str)
    assert set(table["region"]) == {"north", "south", HOSTILE_KEY, BIDI_KEY, "other"}
    for _, row in table.iterrows():  # every group key and value is a cell of the page's table
        key = (
            row["region"]
            .replace("<", "&lt;")
            .replace(">", "&gt;")
            .replace("\u202e", '<span class="hidden-char" title="hidden character">&lt;U+202E&gt;</span>')
        )
        assert f'<td class="key">{key}</td>' in text, row["region"]
        for value in (row["count"], row["mean_cost"]):
            assert (f'<td class="num">{value}</td>' if value else "suppressed") in text
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "\u202e" not in text and "&lt;U+202E&gt;" in text  # the bidi control is drawn, not obeyed
    # the model: coefficients by feature (the hostile feature name inert), intercept, metrics
    from cleanroom.modelio import load_model

    model = load_model(tmp_path / "out" / "model.skops")
    for name, value in zip(model.feature_names_in_, model.coef_, strict=True):
        shown = str(name).replace("<", "&lt;").replace(">", "&gt;")
        assert re.search(rf"<td><code>{re.escape(shown)}</code></td><td class=\"num\">{value:.6g}</td>", text), name
    assert f"{float(model.intercept_):.6g}" in text
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert f'<td>r2</td><td class="num">{metrics["metrics"]["r2"]:.6g}</td>' in text
    assert "Model card: ridge" in text
    # sizes are plaintext sizes (the receipt's), not the ciphertext sizes the room lists
    release = world.owner.get_release(job)
    receipt_outputs = release["receipt"]["body"]["outputs"]
    ciphertext = {a["name"]: a["size"] for a in release["artifacts"]}
    for name, entry in receipt_outputs.items():
        assert re.search(
            rf"<code>{re.escape(name)}</code></td><td><span class=\"nowrap\" title=\"{entry['bytes']} "
            'bytes">',
            text,
        ), name
        assert ciphertext[name] != entry["bytes"]
    # checks as a table, the decision state against the current policy version
    assert '<table class="checks">' in text and "4 groups, each with at least k units (exact)" in text
    assert "v1 " in text and "current" in text and "waits" in text
    assert "{" not in re.sub(r"<style>.*?</style>", "", text, flags=re.S)  # no JSON dumps


@docker
def test_the_list_shows_the_releases_waiting(world, served):
    text = page(served).text
    waiting = text.split("Waiting for your review")[1].split("Decided")[0]
    for job in world.jobs:
        if world.owner.get_release(job)["pending_review"]:
            assert release_id(world, job) in waiting


@docker
def test_approve_through_the_page_signs_the_release_shown(world, served):
    job = world.jobs[1]
    rid = release_id(world, job)
    text = page(served, f"releases/{rid}").text
    manifest = shown_manifest(text)
    # a form for another manifest signs nothing (the page must show what is signed)
    stale = post(served, f"releases/{rid}/approve", {"manifest": "0" * 64})
    assert stale.status_code == 409 and "Nothing was signed" in stale.text
    assert world.owner.get_release(rid)["pending_review"] == [DATASET]
    # the SDK the page signs with refuses, too, when the manifest it fetches is not the one reviewed
    with pytest.raises(Conflict, match="changed since you reviewed it"):
        world.owner.approve_release(rid, expect_manifest_sha256="0" * 64)
    assert world.owner.get_release(rid)["pending_review"] == [DATASET]

    done = post(served, f"releases/{rid}/approve", {"manifest": manifest})
    assert done.status_code == 303 and done.headers["location"].endswith(f"/releases/{rid}?done=approved")
    view = world.owner.get_release(rid)
    assert view["approved_by"] == [DATASET] and view["downloadable"]
    assert manifest == manifest_sha256(view["manifest"])
    after = page(served, f"releases/{rid}?done=approved").text
    assert "Approved: your signed approval was sent" in after and 'name="manifest"' not in after

    # the signature in the room is the owner's, over this exact release
    with sqlite3.connect(world.room.store.db_path) as conn:
        payload, signature = conn.execute(
            "SELECT payload, signature FROM release_approvals WHERE release_id = ?", (rid,)
        ).fetchone()
    payload = json.loads(payload)
    assert payload["release_id"] == rid and payload["manifest_sha256"] == manifest and payload["org"] == "clinic"
    verify(world.owner.whoami()["keys"]["sign_public"], payload, signature)
    forged = {**payload, "manifest_sha256": "0" * 64}
    with pytest.raises(IntegrityError):  # the control: the signature covers the manifest
        verify(world.owner.whoami()["keys"]["sign_public"], forged, signature)
    world.room.end_time_budget(job)
    world.analyst.get_result(job, Path(world.home) / "analyst-out")  # the recipient gets it now
    again = post(served, f"releases/{rid}/approve", {"manifest": manifest})
    assert again.status_code == 400 and "none of your datasets holds this release" in again.text  # decided


@docker
def test_reject_through_the_page_needs_a_reason(world, served):
    rid = release_id(world, world.jobs[2])
    manifest = shown_manifest(page(served, f"releases/{rid}").text)
    empty = post(served, f"releases/{rid}/reject", {"manifest": manifest, "reason": "  "})
    assert empty.status_code == 400 and "reason" in empty.text
    assert world.owner.get_release(rid)["pending_review"] == [DATASET]
    done = post(served, f"releases/{rid}/reject", {"manifest": manifest, "reason": "too fine <b>grained</b>"})
    assert done.status_code == 303
    view = world.owner.get_release(rid)
    assert view["rejected_by"] == [DATASET]
    assert view["rejection_reasons"] == {DATASET: "too fine <b>grained</b>"}
    assert "too fine &lt;b&gt;grained&lt;/b&gt;" in page(served, f"releases/{rid}").text


@docker
def test_decisions_and_plugin_approvals_are_shown_against_the_current_policy(world, tmp_path):
    """A dataset of its own (the other tests keep policy v1): after a new policy version, the page says the
    job ran under v1 and that the owner's plugin approvals no longer hold (`job submit` would refuse)."""
    owner = world.room.org("clinic-two", "owner")
    job = make_held_releases(owner, world.analyst, tmp_path / "data", jobs=1, dataset="clinic.two")[0]
    assert world.room.admin.wait_job(job, timeout=300, interval=0.3)["status"] == "succeeded"
    server = ReviewServer(owner)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rid = owner.get_release(job)["id"]
        before = page(server, f"releases/{rid}").text
        approvals = before.split("Plugin approvals behind this job")[1]
        assert approvals.count('<span class="badge ok">current</span>') == 2  # the control: both hold
        assert 'v1 <span class="badge ok">current</span>' in before and "changed:" not in before
        owner.update_policy("clinic.two", POLICY.replace("k = 5", "k = 6"))
        after = page(server, f"releases/{rid}").text
        assert "changed: the job ran under v1, the current policy is v2" in after
        approvals = after.split("Plugin approvals behind this job")[1]
        assert approvals.count("for v1: the current policy is v2") == 2
        assert '<span class="badge ok">current</span>' not in approvals
    finally:
        server.shutdown()
        server.server_close()


@docker
def test_the_cli_command_serves_the_pages(world):
    Profile(name="clinic", url=world.room.url, token=world.owner.token).save()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEANROOM_") or k == "CLEANROOM_HOME"}
    cmd = [
        sys.executable,
        "-c",
        "from cleanroom.cli import main; main()",
        "--profile",
        "clinic",
        "review",
        "--no-browser",
    ]
    # the context manager closes the pipes when the server has stopped (no file left to the collector)
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            url = (proc.stdout.readline() if proc.stdout else "").strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+/[A-Za-z0-9_-]{32}/", url), url
            text = httpx.get(url, timeout=60).text
            assert release_id(world, world.jobs[0]) in text and "clinic (owner)" in text
            assert httpx.get(url.rsplit("/", 2)[0] + "/", timeout=30).status_code == 403
        finally:
            proc.terminate()
            proc.communicate(timeout=30)
    missing = subprocess.run(
        cmd[:3] + ["--profile", "clinc", "review", "--no-browser"], env=env, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 1 and "no profile named 'clinc'" in " ".join(missing.stderr.split())


# -- in a browser -------------------------------------------------------------------------------------


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Any:
    """Headless Chromium at 1280 px (skips locally without it; fails when CI=true)."""
    chromium = request.getfixturevalue("_chromium")
    chromium.set_window_size(1280, 900)
    return chromium


@docker
def test_an_owner_reviews_and_approves_in_a_browser(world, served, browser):
    driver = browser
    from selenium.webdriver.common.by import By

    from tests.test_web_browser import SHOTS, click_and_wait

    job = world.jobs[3]
    rid = release_id(world, job)
    driver.get(served.url)
    assert "Releases over your data" in driver.find_element(By.TAG_NAME, "h1").text
    click_and_wait(driver, driver.find_element(By.LINK_TEXT, rid))
    content = driver.find_element(By.ID, "content").text
    assert HOSTILE_KEY in content and "we<U+202E>st" in content  # shown as text, the bidi control visible
    assert "cost_by_region" in content and "Coefficients" in content and HOSTILE_COLUMN in content
    assert "r2" in content and "Artifacts (plaintext sizes)" in content
    assert not driver.find_elements(By.TAG_NAME, "script")
    checks = driver.find_element(By.ID, "checks").text
    assert "aggregate:cost_by_region" in checks and "waits" in checks
    overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the 1280px window"
    _shot(driver, SHOTS / "review-local-release.png")

    click_and_wait(driver, driver.find_element(By.ID, "approve"))  # Chromium's own POST passes the checks
    assert "Approved: your signed approval was sent" in driver.find_element(By.TAG_NAME, "main").text
    view = world.owner.get_release(rid)
    assert view["approved_by"] == [DATASET] and view["downloadable"]


def _shot(driver: Any, path: Path) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(900, min(int(height) + 120, 6000)))
    path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)


# -- the zone -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("cleanroom.local.review_server", "from cleanroom.api import deps"),
        ("cleanroom.local.review_pages", "from cleanroom.store import blobs"),
        ("cleanroom.local.review_server", "from cleanroom.runner import recode"),
    ],
)
def test_the_review_server_never_imports_the_servers_code(tmp_path, module, line):
    """A planted import breaks the review server's import contract (the real tree keeping every contract,
    the control, is tests/test_architecture.py's)."""
    from tests.test_architecture import _copy, _lint, _plant

    tree = _copy(tmp_path)
    _plant(tree, module, line)
    result = _lint(tree)
    assert result.returncode != 0, result.stdout
    broken = " ".join(result.stdout.split("Broken contracts", 1)[-1].split())
    assert "The owner's local review server" in broken, result.stdout
