"""The demo page and /docs in a real browser (headless Chromium via Selenium and chromedriver,
both installed by scripts/setup.sh), against a live server holding the bundled model.

Set DEMO_SCREENSHOT=docs/demo.png to regenerate the README's picture of the page.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from server import create_app
from server.config import Settings, bundled_store
from tests.server.conftest import image_bytes

selenium = pytest.importorskip("selenium", reason="the dev extra installs selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow
PAGE_WAIT_S = 120  # a bound so a broken page fails instead of hanging; never reached when it works


@pytest.fixture(scope="module")
def live() -> Iterator[str]:
    """The app on a free loopback port, in a thread, serving the bundled model."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(Settings(store=bundled_store(), model="embedded"))
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromedriver missing: run scripts/setup.sh as root (chromium-driver)"
    options = webdriver.ChromeOptions()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1100,1400",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
    yield driver
    driver.quit()


def _wait(browser: webdriver.Chrome, css: str) -> list:
    return WebDriverWait(browser, PAGE_WAIT_S).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, css) or False
    )


def test_the_page_shows_every_domain_its_cost_and_the_filter_map(
    live: str, browser: webdriver.Chrome
) -> None:
    browser.get(live + "/")
    _wait(browser, "body[data-ready=true]")
    domains = httpx.get(live + "/domains").json()["domains"]
    options = [
        o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#domain option")
    ]
    assert options == [d["name"] for d in domains]
    cost = browser.find_element(By.ID, "cost").text
    assert "budget β" in cost and "MACs per image" in cost and "parameters used" in cost
    blocks = httpx.get(live + "/domains/filters").json()["blocks"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#map tr[data-block]")
    assert len(rows) == len(blocks)  # one heat row per gated conv, not one per domain
    first = rows[0].find_elements(By.CSS_SELECTOR, ".cell")
    assert len(first) == blocks[0]["filters"]  # kept filters, then the pruned ones
    assert (
        len(rows[0].find_elements(By.CSS_SELECTOR, ".gone"))
        == blocks[0]["filters"] - blocks[0]["kept"]
    )
    legend = browser.find_element(By.ID, "legend").text
    assert f"all {len(domains)} domains" in legend and "pruned" in legend
    for d in domains[:2]:  # the faded cells are the chosen domain's unused kept filters
        browser.find_element(By.CSS_SELECTOR, f"#domain option[value={d['name']}]").click()
        faded = len(rows[0].find_elements(By.CSS_SELECTOR, ".kept.off"))
        assert faded == blocks[0]["kept"] - sum(blocks[0]["domains"][d["name"]])


def test_an_upload_through_the_page_shows_the_top1_of_classify(
    live: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get(live + "/")
    _wait(browser, "body[data-ready=true]")
    image = tmp_path / "upload.png"
    image.write_bytes(image_bytes(7, size=(28, 28)))
    for domain in ("fashion", "digits"):
        browser.find_element(By.CSS_SELECTOR, f"#domain option[value={domain}]").click()
        browser.execute_script("document.getElementById('results').replaceChildren()")
        browser.find_element(By.ID, "file").send_keys(str(image))
        [top] = _wait(browser, "#top1")
        direct = httpx.post(
            f"{live}/classify?domain={domain}&top_k=1",
            content=image.read_bytes(),
            headers={"content-type": "image/png"},
        ).json()["predictions"][0]
        assert top.find_elements(By.TAG_NAME, "td")[0].text == direct["label"]
        browser.execute_script("document.getElementById('file').value = ''")
    if target := os.environ.get("DEMO_SCREENSHOT"):
        browser.save_screenshot(target)


def test_a_file_that_is_not_an_image_gets_a_plain_sentence(
    live: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get(live + "/")
    _wait(browser, "body[data-ready=true]")
    upload = tmp_path / "notes.png"  # named like an image, holds text: the server answers 400
    upload.write_text("not an image")
    browser.find_element(By.ID, "file").send_keys(str(upload))
    WebDriverWait(browser, PAGE_WAIT_S).until(lambda b: b.find_element(By.ID, "error").text)
    message = browser.find_element(By.ID, "error").text
    assert message.startswith("That file is not an image the server can read.")
    assert "415" not in message and "400" not in message


def test_docs_render_their_operations_offline(live: str, browser: webdriver.Chrome) -> None:
    browser.get(live + "/docs")
    operations = _wait(browser, ".opblock-summary-path")
    paths = {o.text.replace("\u200b", "") for o in operations}
    assert {"/classify", "/classify/batch", "/domains", "/domains/filters"} <= paths
    # every script and style the page loaded came from the server itself
    sources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert sources and all(s.startswith(live) for s in sources), sources
