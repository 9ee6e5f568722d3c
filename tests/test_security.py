"""Nothing a search opens listens beyond loopback, and the Ray dashboard (token-authenticated) shows the search."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT


def start_search(results: Path, conll_dir: Path) -> subprocess.Popen:
    """A smoke search long enough (minutes) to be looked at while it runs; the test stops it when done."""
    args = ["--stage", "teacher", "--trials", 2, "--profile", "smoke", "--epochs", 20, "--train-sentences", 600,
            "--data", conll_dir, "--results-dir", results]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    log = open(results.parent / "driver.log", "w")
    return subprocess.Popen([sys.executable, "-m", "tuner.run", *map(str, args)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_trial(driver: subprocess.Popen, results: Path, timeout: float = 240) -> str:
    """Wait until a trial has reported; returns the dashboard URL the driver printed."""
    url, deadline = None, time.time() + timeout
    while time.time() < deadline:
        output = (results.parent / "driver.log").read_text()
        match = re.search(r"Ray dashboard: (http://\S+)", output)
        url = match.group(1) if match else url
        reported = any(p.stat().st_size for p in (results / "teacher" / "search").glob("*/result.json"))
        if url and reported:
            return url
        assert driver.poll() is None, output[-3000:]
        time.sleep(0.5)
    pytest.fail("no trial reported in time:\n" + (results.parent / "driver.log").read_text()[-3000:])


def stop(driver: subprocess.Popen) -> None:
    driver.terminate()
    try:
        driver.wait(timeout=60)
    except subprocess.TimeoutExpired:
        driver.kill()


def listening_sockets(root: int) -> list:
    processes = [psutil.Process(root)] + psutil.Process(root).children(recursive=True)
    found = []
    for process in processes:
        try:
            found += [(process.name(), c.laddr) for c in process.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.mark.slow
def test_search_listens_on_loopback_only_and_dashboard_shows_it(tmp_path, conll_dir):
    from playwright.sync_api import sync_playwright

    results = tmp_path / "results"
    driver = start_search(results, conll_dir)
    try:
        url = wait_for_trial(driver, results)
        sockets = listening_sockets(driver.pid)
        assert len(sockets) >= 5, sockets  # GCS, raylet, dashboard, agents, workers
        exposed = [(name, addr) for name, addr in sockets if not is_loopback(addr.ip)]
        assert not exposed, f"listening beyond loopback: {exposed}"
        assert url.startswith("http://127.0.0.1:")

        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        screenshot = tmp_path / "dashboard.png"  # never into the checkout
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"])
            page = browser.new_page()
            # Two busy cores (a trial trains meanwhile) load the dashboard's bundle slowly: wait for what is
            # shown, not for the page's load event, and allow minutes rather than Playwright's 30 s default.
            page.set_default_timeout(120_000)
            page.set_default_navigation_timeout(120_000)
            page.goto(url, wait_until="domcontentloaded")  # without the token the dashboard asks for it
            prompt = page.get_by_text("Authentication Token Required")
            prompt.wait_for()
            page.get_by_placeholder("Enter your authentication token").fill(token)
            page.get_by_role("button", name="Submit").click()
            prompt.wait_for(state="hidden")  # the token was accepted
            page.goto(url + "/#/jobs", wait_until="domcontentloaded")
            page.get_by_text("tuner.run").first.wait_for()  # the search's driver job
            page.goto(url + "/#/actors", wait_until="domcontentloaded")
            page.get_by_text("ImplicitFunc").first.wait_for()  # Tune's trial actors
            page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
        assert screenshot.read_bytes()[:4] == b"\x89PNG"
    finally:
        stop(driver)
