"""The dashboard in headless Chromium against the local stack: the key, a run of the MNIST sample
from upload to succeeded with its learning curve growing, its outputs, a cancelled run, and two runs
of one dataset compared. Each page is screenshotted into the `screenshots` folder."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

from infra.local.waiting import wait_for
from samples.mnist import make_dataset
from tests.api.stackapp import TRAIN_SPEC, Api, stage_dataset

pytestmark = pytest.mark.e2e

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "mnist"
# Small and quick: three epochs, three points on each curve.
SAMPLE_ARGUMENTS = "$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL --epochs 3 --threads 1 --seed 1"


def upload_sample(api: Api, dataset: str, work: Path) -> None:
    """The sample's files and run.json (last) into the app's training container, as a user would."""
    make_dataset.main([str(work), "--train", "1200", "--test", "300"])
    manifest = json.loads((SAMPLE / "run.json").read_text())
    manifest["arguments"] = SAMPLE_ARGUMENTS
    container = BlobServiceClient.from_connection_string(api.stack.connection_string).get_container_client(
        api.settings.training_container
    )
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    for name in ("ConvNet_MNIST.py",):
        container.upload_blob(f"{dataset}/{name}", (SAMPLE / name).read_bytes(), overwrite=True)
    for name in (make_dataset.TRAIN_FILE, make_dataset.TEST_FILE):
        container.upload_blob(f"{dataset}/{name}", (work / name).read_bytes(), overwrite=True)
    container.upload_blob(f"{dataset}/run.json", json.dumps(manifest), overwrite=True)


def shot(browser: Any, folder: Path, name: str) -> None:
    time.sleep(0.3)  # let the charts finish drawing
    browser.save_screenshot(str(folder / f"{name}.png"))


def text(browser: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, selector).text


UNLABELLED_JS = """
return [...document.querySelectorAll('input, select, button, a[href], pre[tabindex]')]
  .filter((e) => e.offsetParent !== null)
  .filter((e) => !((e.labels && e.labels.length) || e.getAttribute('aria-label') || e.textContent.trim()))
  .map((e) => e.outerHTML.slice(0, 120));
"""


def unlabelled(browser: Any) -> list[str]:
    """Visible controls a screen reader could not name (no label, aria-label or text)."""
    return browser.execute_script(UNLABELLED_JS)


def console_errors(browser: Any) -> list[str]:
    """Errors the page logged since the last call (script errors, CSP violations, failed loads), but
    the browser's own request for /favicon.ico, which the app does not serve."""
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and "favicon.ico" not in entry["message"]
    ]


def run_of(browser: Any, dataset: str) -> str | None:
    from selenium.webdriver.common.by import By

    for row in browser.find_elements(By.CSS_SELECTOR, "#runs-table tr[data-run]"):
        if dataset in row.text:
            return row.get_attribute("data-run")
    return None


def points_of(browser: Any, metric: str) -> int:
    """How many points the run page's chart of ``metric`` has drawn (0: no chart yet)."""
    from selenium.webdriver.common.by import By

    figures = browser.find_elements(By.CSS_SELECTOR, f"#charts figure[data-metric='{metric}']")
    return int(figures[0].get_attribute("data-points")) if figures else 0


def test_dashboard_follows_a_sample_run_cancels_one_and_compares_two(
    api: Api, browser: Any, screenshots: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    dataset = f"ui-mnist-{uuid.uuid4().hex[:6]}"
    upload_sample(api, dataset, tmp_path / "data")

    # The page itself is anonymous and asks for the key.
    browser.get(f"{api.base}/ui")
    key_input = wait_for(
        lambda: browser.find_element(By.ID, "key-input").is_displayed(),
        180.0,
        0.25,
        what="the key form",
        retry_on=(Exception,),
    )
    assert key_input
    assert browser.switch_to.active_element.get_attribute("id") == "key-input"  # focus is where to type
    assert unlabelled(browser) == []
    shot(browser, screenshots, "01-key")
    browser.find_element(By.ID, "key-input").send_keys(api.key)
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    row = wait_for(
        lambda: browser.find_element(By.CSS_SELECTOR, "#runs-table tr[data-run] td[data-label=Dataset]"),
        180.0,
        0.25,
        what="the sample's run in the list",
        retry_on=(Exception,),
    )
    run_id = wait_for(
        lambda: run_of(browser, dataset), 180.0, 0.25, what="the run of the dataset", retry_on=(Exception,)
    )
    assert row is not None
    assert "refreshing every" in text(browser, "#refresh-note")  # an active run: the list refreshes itself
    assert unlabelled(browser) == []
    shot(browser, screenshots, "02-runs-active")

    # The run's page: its curve, its timeline, its log. (That the curve is drawn and grows while a
    # job runs is shown on the paced run below: how fast the sample trains depends on the machine.)
    browser.find_element(By.CSS_SELECTOR, f"tr[data-run='{run_id}'] a").click()
    wait_for(
        lambda: browser.find_element(By.ID, "run-facts").get_attribute("data-state"),
        180.0,
        0.25,
        what="the run page",
        retry_on=(Exception,),
    )
    seen_points: list[int] = []

    def finished() -> bool:
        points = points_of(browser, "test_accuracy")
        if points and (not seen_points or points != seen_points[-1]):
            seen_points.append(points)
            if len(seen_points) == 1:
                shot(browser, screenshots, "03-run-training")
        return browser.find_element(By.ID, "run-facts").get_attribute("data-state") in ("succeeded", "failed")

    wait_for(finished, 240, 0.25, what="the run to finish", retry_on=(Exception,))
    assert browser.find_element(By.ID, "run-facts").get_attribute("data-state") == "succeeded", text(
        browser, "#view"
    )
    wait_for(
        lambda: points_of(browser, "test_accuracy") == 3,
        180.0,
        0.25,
        what="the last points",
        retry_on=(Exception,),
    )
    assert {"loss", "accuracy", "test_loss", "test_accuracy"} <= {
        f.get_attribute("data-metric") for f in browser.find_elements(By.CSS_SELECTOR, "#charts figure")
    }
    assert browser.find_elements(By.CSS_SELECTOR, "#charts figure canvas")  # uPlot drew them
    states = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#timeline li .state")]
    assert states[0] == "staging" and "running" in states and states[-1] == "succeeded", states
    assert "succeeded" in text(browser, "#run-facts")  # the state in words, not only a colour
    assert "Epoch 3/3" in wait_for(
        lambda: text(browser, "#stdout"), 180.0, 0.25, what="the log", retry_on=(Exception,)
    )
    assert not browser.find_element(By.ID, "cancel-run").is_displayed()  # nothing to cancel any more
    assert unlabelled(browser) == []

    # Its outputs: download links that work.
    link = wait_for(
        lambda: browser.find_element(By.XPATH, "//ul[@id='outputs']//a[contains(., 'metrics.json')]"),
        180.0,
        0.25,
        what="the metrics.json link",
        retry_on=(Exception,),
    )
    shot(browser, screenshots, "04-run-succeeded")
    downloaded = requests.get(link.get_attribute("href"), timeout=30)
    assert downloaded.status_code == 200 and json.loads(downloaded.content)["epochs"] == 3
    browser.set_window_size(390, 844)  # a phone
    shot(browser, screenshots, "05-run-phone")
    browser.set_window_size(1280, 1000)

    # A second run of the same dataset (started over HTTP), and a long run to cancel.
    spec = {
        **json.loads((SAMPLE / "run.json").read_text()),
        "arguments": SAMPLE_ARGUMENTS.replace("--epochs 3", "--epochs 1"),
    }
    second = api.post("/runs", json={"dataset": dataset, "spec": spec})
    assert second.status_code == 202, second.text
    long_dataset = f"ui-long-{uuid.uuid4().hex[:6]}"
    stage_dataset(api.stack, long_dataset, {"train.py": PACED_TRAIN_PY})
    long_run = api.post("/runs", json={"dataset": long_dataset, "spec": TRAIN_SPEC}).json()

    # The curve is drawn while the job runs, and grows (one epoch a second, until cancelled).
    browser.get(f"{api.base}/ui#/run/{long_run['id']}")
    first = wait_for(
        lambda: points_of(browser, "test_accuracy"),
        120,
        0.25,
        what="the running job's first points",
        retry_on=(Exception,),
    )
    wait_for(
        lambda: points_of(browser, "test_accuracy") > first,
        60,
        0.25,
        what="the curve to grow",
        retry_on=(Exception,),
    )
    assert browser.find_element(By.ID, "run-facts").get_attribute("data-state") == "running"
    cancel = wait_for(
        lambda: (b := browser.find_element(By.ID, "cancel-run")).is_displayed() and b,
        180.0,
        0.25,
        what="the cancel button",
        retry_on=(Exception,),
    )
    cancel.click()
    dialog = browser.find_element(By.ID, "confirm-cancel")
    assert dialog.is_displayed() and long_run["id"] in dialog.text
    shot(browser, screenshots, "06-cancel-confirm")
    browser.find_element(By.ID, "confirm-no").click()  # asked, and declined: nothing happens
    assert not dialog.is_displayed() and api.get(f"/runs/{long_run['id']}").json()["state"] != "cancelled"
    cancel.click()
    browser.find_element(By.ID, "confirm-yes").click()
    wait_for(
        lambda: browser.find_element(By.ID, "run-facts").get_attribute("data-state") == "cancelled",
        180.0,
        0.25,
        what="the run cancelled",
        retry_on=(Exception,),
    )
    assert "cancelled" in text(browser, "#run-facts")
    assert "cancelled on request" in text(browser, "#run-errors")
    shot(browser, screenshots, "07-run-cancelled")
    assert api.get(f"/runs/{long_run['id']}").json()["state"] == "cancelled"

    # Compare the two runs of the sample's dataset.
    wait_for(
        lambda: api.get(f"/runs/{second.json()['id']}").json()["state"] == "succeeded",
        180,
        0.25,
        what="the second run to finish",
        retry_on=(Exception,),
    )
    browser.get(f"{api.base}/ui#/compare/{dataset}")
    figure = wait_for(
        lambda: browser.find_element(By.CSS_SELECTOR, "#compare-charts figure[data-metric='test_accuracy']"),
        180.0,
        0.25,
        what="the overlaid curves",
        retry_on=(Exception,),
    )
    assert figure.get_attribute("data-series") == "2"
    assert unlabelled(browser) == []
    rows = browser.find_elements(By.CSS_SELECTOR, "#final-metrics tbody tr")
    assert {r.get_attribute("data-run") for r in rows} == {run_id, second.json()["id"]}
    assert "test_accuracy" in text(browser, "#final-metrics thead")
    shot(browser, screenshots, "08-compare")

    # ?code= in the URL works too, and does not stay in the address bar.
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{api.base}/ui?code={api.key}#/?dataset={dataset}")
    wait_for(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "#runs-table tr[data-run]")) == 2,
        180.0,
        0.25,
        what="the runs list",
        retry_on=(Exception,),
    )
    assert "code=" not in browser.current_url
    browser.set_window_size(390, 844)
    shot(browser, screenshots, "09-runs-phone")
    assert console_errors(browser) == []


# A job that trains at a fixed pace, whatever the machine: one epoch's metrics a second, until
# it is cancelled.
PACED_TRAIN_PY = b"""import json, time
for epoch in range(1, 301):
    metrics = {"epoch": epoch, "loss": 1.0 / epoch, "test_accuracy": 1 - 1.0 / (epoch + 1)}
    print(json.dumps(metrics), flush=True)
    time.sleep(1.0)
"""


SWEEP_TRAIN_PY = b"""import json, math, sys, time
args = sys.argv[1:]
lr = float(args[args.index("--lr") + 1])
for epoch in range(1, 5):
    loss = 10.0 if lr > 1 else abs(math.log10(lr) + 1.2) + 1.0 / epoch
    print(json.dumps({"epoch": epoch, "loss": loss}), flush=True)
    time.sleep(1.0 if lr > 1 else 0.2)
"""


def test_dashboard_shows_a_sweeps_leaderboard_and_trial_curves(api: Api, browser: Any) -> None:
    """A sweep's parent page: its trials best first, the best one named, every trial's curve overlaid
    and the stopped one marked."""
    from selenium.webdriver.common.by import By

    dataset = f"ui-sweep-{uuid.uuid4().hex[:6]}"
    manifest = {
        "toolkit": "pytorch",
        "image": None,
        "script": "train.py",
        "arguments": "--lr ${{search_space.lr}}",
        "files": ["train.py"],
        "sweep": {
            "parameters": {"lr": {"values": [0.01, 0.1, 5.0]}},
            "sampling": "grid",
            "max_trials": 3,
            "max_concurrent_trials": 2,
            "primary_metric": "loss",
            "goal": "minimize",
            "early_termination": {"policy": "median_stopping", "delay_evaluation": 1},
        },
    }
    container = BlobServiceClient.from_connection_string(api.stack.connection_string).get_container_client(
        api.settings.training_container
    )
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    container.upload_blob(f"{dataset}/train.py", SWEEP_TRAIN_PY, overwrite=True)
    container.upload_blob(f"{dataset}/run.json", json.dumps(manifest), overwrite=True)

    def parent() -> dict | None:
        runs = api.get("/runs", params={"dataset": dataset}).json()["runs"]
        done = [r for r in runs if r.get("parent_id") is None and r["state"] in ("succeeded", "failed")]
        return done[0] if done else None

    run = wait_for(parent, 240, 0.25, what="the sweep to finish", retry_on=(Exception,))
    assert run["state"] == "succeeded", run
    browser.get(f"{api.base}/ui#/run/{run['id']}")
    with contextlib.suppress(Exception):  # the key, when this browser has not given it yet
        browser.find_element(By.ID, "key-input").send_keys(api.key)
        browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    rows = wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr") or None,
        180.0,
        0.25,
        what="the leaderboard",
        retry_on=(Exception,),
    )
    assert len(rows) == 3
    assert rows[0].get_attribute("data-run") == run["sweep"]["best"]["trial"]  # best first
    assert "lr=0.1" in text(browser, "#sweep-best")
    stopped = [r for r in rows if r.get_attribute("data-stopped") == "true"]
    assert stopped and all("stopped early" in r.text for r in stopped)
    figure = wait_for(
        lambda: browser.find_element(By.ID, "sweep-curves"),
        180.0,
        0.25,
        what="the trial curves",
        retry_on=(Exception,),
    )
    assert figure.get_attribute("data-series") == "3"
    assert "(stopped early)" in figure.find_element(By.CSS_SELECTOR, ".chart").get_attribute("aria-label")
    assert browser.find_elements(By.CSS_SELECTOR, "#sweep-curves canvas")
    assert unlabelled(browser) == [] and console_errors(browser) == []
