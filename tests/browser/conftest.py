"""Fixtures of the browser tests: Debian's headless Chromium under Selenium, and the services it talks to.

Outside CI a machine without Chromium, chromedriver or Selenium skips these tests; in CI (``CI=true``) the same
lack fails them, since ``.ci/run`` installs all three and a skip there would hide a broken step.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from service.core.config import BUNDLED_MODEL_DIR
from tests.browser.page import RECORD_API_CALLS, Playground
from tests.support.server import spawn_server

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

API_KEY = "playground-browser-key"
# The network is closed: without these Chromium keeps trying to reach update, sync and QUIC endpoints.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1100,1500",
)
# The servers' own settings, whatever the environment says (a developer's API_KEY must not leak in).
SERVER_ENV = {"TORCH_THREADS": "1", "API_KEY": "", "DEFAULT_MODEL": "", "LOG_LEVEL": "warning"}


def browser_unavailable(reason: str) -> NoReturn:
    """Skip, or fail in CI."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"the browser tests must run in CI, but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """One headless Chromium for the session, with a fresh profile, recording the page's API calls."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        browser_unavailable("selenium is not installed (pip install -e '.[browser]')")
    chromium = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        browser_unavailable("chromium or chromedriver is missing (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console: CSP violations, errors
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    try:
        # An explicit driver path: Selenium Manager (which would download one) never runs.
        browser = webdriver.Chrome(service=Service(chromedriver, log_output=str(log)), options=options)
    except WebDriverException as exc:
        browser_unavailable(f"Chromium did not start ({exc.msg}); chromedriver log: {log}")
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_API_CALLS})
    yield browser
    browser.quit()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the panel screenshots go: ``PLAYGROUND_SCREENSHOTS`` (docs/playground to refresh the docs)."""
    wanted = os.environ.get("PLAYGROUND_SCREENSHOTS")
    return Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service over the bundled models (mnist, moons, bimodal), with no API key."""
    log = tmp_path_factory.mktemp("service") / "service.log"
    with spawn_server(BUNDLED_MODEL_DIR, log, env=SERVER_ENV) as (_, base_url):
        yield base_url


@pytest.fixture(scope="module")
def keyed_service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service with ``API_KEY`` set, over the bundled moons model alone (it loads in a moment)."""
    store = tmp_path_factory.mktemp("moons_only")
    shutil.copytree(BUNDLED_MODEL_DIR / "moons", store / "moons")  # a link would point out of MODEL_DIR: refused
    log = tmp_path_factory.mktemp("keyed_service") / "service.log"
    with spawn_server(store, log, env={**SERVER_ENV, "API_KEY": API_KEY}) as (_, base_url):
        yield base_url


@pytest.fixture
def page(driver: WebDriver, service_url: str) -> Iterator[Playground]:
    """The page on the bundled models; afterwards, its console must hold no error but the API's refusals."""
    driver.get_log("browser")  # drop what earlier tests left
    yield Playground(driver, service_url)
    errors = [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
    ]
    assert errors == [], "the page logged errors (a CSP violation, an uncaught exception)"
