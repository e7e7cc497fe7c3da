"""Screenshots of the main review pages at 1280 px, with headless Chromium.

    .venv/bin/python scripts/screenshots.py OUT_DIR                    # a demo room of its own (needs Docker)
    .venv/bin/python scripts/screenshots.py OUT_DIR --profile retailer  # a running room, as an owner profile

The demo room is the one `tests/test_review_local.py` uses: an API and a runner in this process, a clinic's
dataset in exact mode and one job whose release waits for the clinic's review. With `--profile`, the pages
are those of that owner's room: its first dataset and the first release over its data.

Writes server-datasets.png, server-dataset.png, server-releases.png, server-release.png (the room's own
review page: checks only), local-index.png and local-release.png (`cleanroom review`: the content,
decrypted on this machine). Needs Chromium and chromedriver (`scripts/prereqs.sh test`) and selenium.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def chromium() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = os.environ.get("CHROMEDRIVER_BIN") or shutil.which("chromedriver")
    if not binary or not driver_bin:
        raise SystemExit(
            "needs chromium and chromedriver: scripts/prereqs.sh test (or apt-get install chromium chromium-driver)"
        )
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
    driver = webdriver.Chrome(service=Service(executable_path=driver_bin), options=options)
    driver.set_page_load_timeout(60)
    return driver


def shot(driver: Any, url: str, path: Path) -> None:
    """The whole page at 1280 px wide; says so when the page is wider than the window."""
    driver.set_window_size(1280, 900)
    driver.get(url)
    wider = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(900, min(int(height) + 120, 8000)))
    driver.save_screenshot(str(path))
    print(f"wrote {path}" + (f"  (WARNING: {wider}px wider than 1280)" if wider > 0 else ""))


def log_in(driver: Any, url: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/ui/login")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()


def demo_room(stack: ExitStack, work: Path) -> tuple[Any, Any]:
    """An API and a runner in this process, a held release over the clinic's data: (owner client, room url)."""
    from tests.conftest import Room, RunnerThread
    from tests.test_review_local import make_held_releases

    room = Room(work / "api")
    stack.callback(room.stop)
    runner = RunnerThread(room, work / "runner")
    stack.callback(runner.stop)
    owner, analyst = room.org("clinic", "owner"), room.org("acme-analytics", "analyst")
    for job in make_held_releases(owner, analyst, work / "data", jobs=1):
        status = room.admin.wait_job(job, timeout=300, interval=0.5)["status"]
        if status != "succeeded":
            raise SystemExit(f"the demo job ended {status}")
    return owner, room.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the PNG files (made if missing)")
    parser.add_argument("--profile", help="an owner's profile of a running room (default: start a demo room)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from cleanroom.client import Client
    from cleanroom.local.review_server import ReviewServer

    with ExitStack() as stack:
        if args.profile:
            owner = Client.from_profile(args.profile)
            url = owner.url
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cleanroom-shots-")))
            os.environ["CLEANROOM_HOME"] = str(work / "home")  # the demo's keys stay out of ~/.cleanroom
            owner, url = demo_room(stack, work)
        me = owner.whoami()["name"]
        datasets = [d["name"] for d in owner.list_datasets() if d["owner"] == me]
        releases = owner.list_releases()
        ours = [r for r in releases if set(r["review_by"]) & set(datasets)] or releases
        server = ReviewServer(owner)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        driver = chromium()
        stack.callback(driver.quit)

        log_in(driver, url, owner.token or "")
        shot(driver, url + "/ui/datasets", args.out / "server-datasets.png")
        if datasets:
            shot(driver, url + "/ui/datasets/" + quote(datasets[0], safe=""), args.out / "server-dataset.png")
        shot(driver, url + "/ui/releases", args.out / "server-releases.png")
        shot(driver, server.url, args.out / "local-index.png")
        if ours:
            rid = quote(ours[0]["id"], safe="")
            shot(driver, f"{url}/ui/releases/{rid}", args.out / "server-release.png")
            shot(driver, f"{server.url}releases/{rid}", args.out / "local-release.png")
        else:
            print("no release over your data yet: no release pages")


if __name__ == "__main__":
    main()
