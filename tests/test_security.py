"""Nothing a search opens listens beyond loopback, the Ray dashboard (token-authenticated) shows the search, and
optuna-dashboard (--optuna-dashboard) shows its front live."""

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

from tests.conftest import ROOT, copied


def start_search(results: Path, conll_dir: Path) -> subprocess.Popen:
    """A smoke front search of students (of the results' teacher) long enough (minutes) to be looked at while it
    runs, optuna-dashboard served beside Ray's; the test stops it when done."""
    args = ["--stage", "student", "--objectives", "f1,params", "--trials", 2, "--profile", "smoke", "--epochs", 20,
            "--train-sentences", 600, "--data", conll_dir, "--results-dir", results, "--optuna-dashboard"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    log = open(results.parent / "driver.log", "w")
    return subprocess.Popen([sys.executable, "-m", "tuner.run", *map(str, args)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_trial(driver: subprocess.Popen, results: Path, timeout: float = 240) -> tuple[str, str]:
    """Wait until a trial has reported; returns the URLs of Ray's dashboard and Optuna's the driver printed."""
    urls, deadline = None, time.time() + timeout
    while time.time() < deadline:
        output = (results.parent / "driver.log").read_text()
        ray, optuna = (re.search(rf"{name} dashboard: (http://\S+)", output) for name in ("Ray", "Optuna"))
        urls = (ray.group(1), optuna.group(1)) if ray and optuna else urls
        reported = any(p.stat().st_size for p in (results / "student" / "search").glob("*/result.json"))
        if urls and reported:
            return urls
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
def test_search_listens_on_loopback_only_and_dashboards_show_it(pipeline_run, tmp_path, conll_dir):
    from playwright.sync_api import sync_playwright

    results = copied(pipeline_run[0], tmp_path / "results", "teacher/best")  # the smoke pipeline's teacher
    driver = start_search(results, conll_dir)
    try:
        url, optuna_url = wait_for_trial(driver, results)
        sockets = listening_sockets(driver.pid)
        assert len(sockets) >= 6, sockets  # GCS, raylet, dashboard, agents, workers; optuna-dashboard in the driver
        exposed = [(name, addr) for name, addr in sockets if not is_loopback(addr.ip)]
        assert not exposed, f"listening beyond loopback: {exposed}"
        assert url.startswith("http://127.0.0.1:") and optuna_url.startswith("http://127.0.0.1:")
        assert f":{optuna_url.rsplit(':', 1)[1]}" in {f":{addr.port}" for _, addr in sockets}

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
            # optuna-dashboard: the student study, its Pareto front over the objectives by name, its first trial
            page.goto(optuna_url + "/dashboard", wait_until="domcontentloaded")
            page.get_by_text("student").first.click()
            page.get_by_text("Pareto Front").first.wait_for()
            page.get_by_text("parameters", exact=True).first.wait_for()  # the study names its objectives
            page.goto(page.url.rstrip("/") + "/trials", wait_until="domcontentloaded")
            page.get_by_text("Trial 0").first.wait_for()  # the running trial, listed with its state
            browser.close()
        assert screenshot.read_bytes()[:4] == b"\x89PNG"
    finally:
        stop(driver)
