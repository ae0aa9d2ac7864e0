"""Browser fixtures: headless Chromium (Debian's chromium and chromium-driver packages, which
`make test` installs when missing) driven by Selenium, against the session's local stack."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import api  # noqa: F401  (the Functions host on the session stack)

CHROMIUM = Path(os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER_BINARY", "/usr/bin/chromedriver"))
SCREENSHOTS = Path(
    os.environ.get(
        "DASHBOARD_SCREENSHOTS", Path(__file__).resolve().parents[2] / ".local" / "test-output" / "dashboard"
    )
)


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where the browser tests leave a screenshot of each page (kept after the run, to look at)."""
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS


@pytest.fixture
def browser(request: pytest.FixtureRequest, screenshots: Path, local_stack: Any) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install -y chromium chromium-driver "
        "(make test does it)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, CSP violations
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1000", "--disable-extensions", "--no-first-run"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
        if getattr(request.node, "failed_call", False):  # what the page showed, and the host's log
            driver.save_screenshot(str(screenshots / "failure.png"))
            (screenshots / "failure.txt").write_text(driver.find_element("tag name", "body").text)
            for log in Path(local_stack.logs_dir).glob("*.log"):
                shutil.copy2(log, screenshots / f"failure-{log.name}")
    finally:
        driver.quit()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.failed_call = True  # type: ignore[attr-defined]
    return report
