"""``tidehost fleet serve``'s page in a real headless Chromium (Debian's chromium and
chromedriver, driven by selenium): it shows the hosts, and changes when a report in etcd
changes; the served HTML has the hosts before any script runs, and ``chromium --dump-dom``
shows them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import partial

import pytest
import requests

from channels.etcd import EtcdGateway
from imagebuild.fleet import source
from imagebuild.fleet.serve import FleetView, server

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
QUIET = ("--headless", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--window-size=1280,900")


@pytest.fixture
def served(fleet_etcd) -> Iterator[str]:  # noqa: ANN001
    view = FleetView(partial(source.snapshot, EtcdGateway([fleet_etcd.url])), interval=0.5)
    view.start()
    httpd = server(view, "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    view.stop()


@pytest.fixture
def browser() -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are needed")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-")
    for a in (*QUIET, f"--user-data-dir={profile}"):
        opts.add_argument(a)
    if os.geteuid() == 0:
        opts.add_argument("--no-sandbox")
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def cells(drv, host: str) -> list[str]:  # noqa: ANN001
    """The texts of ``host``'s row, read at once (the page redraws its tables)."""
    rows = drv.execute_script(
        "return [...document.querySelectorAll('#hosts tbody tr')]"
        ".map(r => [r.dataset.host, [...r.cells].map(c => c.textContent)]);")
    return next((texts for h, texts in rows if h == host), [])


def until(check, timeout: float = 20.0) -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.25)
    assert check()


def test_the_page_shows_the_hosts_and_follows_the_reports(served: str, browser,  # noqa: ANN001
                                                          report, fleet_etcd) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    report("node1", version="1.0.0")
    report("node2", version="1.0.0", state="waiting-for-lock", target_version="1.1.0")
    report("<b>node3</b>", version="1.0.0")  # markup in an id is text, not HTML
    time.sleep(1.0)  # the server's reader has read them
    browser.get(served)
    assert browser.title == "Tidehost fleet"
    until(lambda: cells(browser, "node2")[:5] == ["node2", "1.0.0", "A", "waiting-for-lock",
                                                  "1.1.0"])
    until(lambda: cells(browser, "<b>node3</b>")[:1] == ["<b>node3</b>"])
    assert not browser.find_elements(By.CSS_SELECTOR, "#hosts b")
    # the rollout moves on: node2 reboots into 1.1.0, node1 rolls it back
    report("node2", version="1.1.0", slot="b", state="idle")
    report("node1", state="rolled-back", bad_versions=("1.1.0",),
           last_error="1.1.0 failed its boot or health checks")
    until(lambda: cells(browser, "node2")[1:4] == ["1.1.0", "B", "idle"])
    until(lambda: cells(browser, "node1")[3] == "rolled-back")
    assert "failed its boot" in cells(browser, "node1")[8]
    assert "node1 (1.1.0)" in browser.find_element(By.ID, "rolled").text
    legend = browser.find_element(By.ID, "legend").text
    assert "1.0.0: 2" in legend and "1.1.0: 1" in legend
    lines = browser.find_elements(By.CSS_SELECTOR, "#chart polyline")
    assert {x.get_attribute("data-version") for x in lines} == {"1.0.0", "1.1.0"}
    report("node3", state="rolled-back", bad_versions=("1.1.0",))
    until(lambda: "1.1.0 (rolled back on node1, node3)" in
          browser.find_element(By.ID, "groups").text)
    # etcd gone: the page says so and keeps the last picture
    fleet_etcd.stop()
    try:
        until(lambda: "etcd unreachable" in browser.find_element(By.ID, "error").text)
        assert cells(browser, "node2")[1] == "1.1.0"
    finally:
        fleet_etcd.start()


def test_the_served_page_has_the_hosts_without_any_script(served: str, report) -> None:  # noqa: ANN001
    report("nodeA", version="2.0.0", state="rebooting")
    time.sleep(1.0)
    html = requests.get(served, timeout=10).text
    assert 'data-host="nodeA"' in html and ">rebooting<" in html
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        args = [CHROMIUM, *QUIET, f"--user-data-dir={profile}", "--dump-dom", served]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")
        dom = subprocess.run(args, capture_output=True, text=True, timeout=120,
                             check=True).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert 'data-host="nodeA"' in dom and "2.0.0" in dom
