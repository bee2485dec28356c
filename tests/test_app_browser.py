"""The explorer and eval.py's report.html in a real browser: headless Chromium driven by Selenium.

``make chromium`` installs Debian's chromium and chromium-driver (CI does); where they are absent these tests
skip with a reason.
"""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from lficam.training.task import train
from tests.conftest import ROOT, TINY, compose_train, subprocess_env

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
Keys = pytest.importorskip("selenium.webdriver.common.keys").Keys
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="no chromium/chromedriver here: make chromium installs them with apt",
    ),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("browser")
    cfg = compose_train(
        [*TINY, "++trainer.limit_train_batches=3", "callbacks.attention_overlays=null"], base / "run"
    )
    cfg.paths.data_dir = str(base / "data")
    train(cfg)
    return base / "run"


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1100"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def loaded_pictures(driver, selector: str) -> list[tuple[str, int, int]]:
    """(alt or caption, natural width, natural height) of every <img> under ``selector`` that has loaded."""
    return driver.execute_script(
        """return [...document.querySelectorAll(arguments[0])]
             .filter(img => img.complete && img.naturalWidth > 0)
             .map(img => [img.alt || '', img.naturalWidth, img.naturalHeight]);""",
        selector,
    )


PICTURES = '[data-testid="stImage"] img'
NUMBER = 'input[aria-label^="image (1"]'


def sources(driver) -> set[str]:
    """The served address of every picture on the page (a new image gets new ones)."""
    return {img.get_attribute("src") for img in driver.find_elements("css selector", PICTURES)}


def not_blank(png: bytes) -> bool:
    """A screenshot with content: many colours and some contrast, not one flat page colour."""
    picture = Image.open(io.BytesIO(png)).convert("RGB")
    colours = picture.getcolors(maxcolors=1 << 20) or []
    return len(colours) > 200 and max(ImageStat.Stat(picture).stddev) > 20


def test_the_explorer_shows_the_maps_in_chromium(run, browser, tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lficam.app.launch",
            str(run),
            "--port",
            str(port),
            "--data-dir",
            str(run.parent / "data"),
        ],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok"
            except OSError:
                return server.poll() is not None  # a server that died: stop waiting, fail below

        wait_for(healthy, 90, "the app's server")
        assert server.poll() is None, server.stdout.read()
        browser.get(url)
        # the image and the two default methods (own map, Grad-CAM): three pictures
        pictures = wait_for(
            lambda: (p := loaded_pictures(browser, PICTURES)) and len(p) >= 3 and p, 120, "the maps to appear"
        )
        assert len(pictures) == 3
        assert all(width >= 32 and height >= 32 for _, width, height in pictures)
        first = sources(browser)
        # another image: type its number into the sidebar's image field (a React field: select its text and
        # type over it; clear() does not reach React's state)
        field = browser.find_element("css selector", NUMBER)
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys("5", Keys.ENTER)
        wait_for(
            lambda: browser.find_element("css selector", NUMBER).get_attribute("value") == "5", 30, "image 5"
        )
        wait_for(
            lambda: sources(browser).isdisjoint(first) and len(loaded_pictures(browser, PICTURES)) == 3,
            60,
            "the new image's maps",
        )
        text = browser.find_element("tag name", "body").text
        assert "predicted:" in text and "true class:" in text
        assert "scores of each map on this image" in text  # the table itself is drawn on a canvas
        shot = browser.get_screenshot_as_png()
        (tmp_path / "explorer.png").write_bytes(shot)
        assert not_blank(shot)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_report_html_opens_from_a_file_in_chromium(run, browser, tmp_path):
    out = tmp_path / "eval"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "eval.py"),
            f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
            "eval.num_images=6",
            "eval.cams=[gradcam]",
            "eval.pixels_per_step=128",
            f"paths.data_dir={run.parent / 'data'}",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    browser.get((out / "report.html").as_uri())
    pictures = wait_for(lambda: loaded_pictures(browser, "img"), 30, "the report's pictures")
    assert len(pictures) == 2  # the deletion/insertion curves and the overlay grid, inline
    rows = browser.find_elements("css selector", "table tr")
    assert len(rows) >= 8  # a header and one row per metric
    assert not_blank(browser.get_screenshot_as_png())
