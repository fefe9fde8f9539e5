"""fcnseg serve in a real browser: Debian's Chromium, headless, drives the web page."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from conftest import CAMVID, make_checkpoint
from fcnseg.data.camvid import camvid_meta

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _need(what: str, ok: bool) -> None:
    if not ok:  # CI installs them (.ci/run): there a missing browser is a failure
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing in CI: .ci/run installs it")
        pytest.skip(f"{what} is not installed (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("fastapi")
    meta = camvid_meta()
    ckpt = make_checkpoint(tmp_path_factory.mktemp("browser") / "camvid.pt",
                           meta.class_names, meta.palette, model="fcn8s")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "fcnseg", "serve", "--checkpoint",
                             str(ckpt), "--port", str(port)], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(base + "/ready", timeout=2):
                break
        except OSError:
            time.sleep(0.2)
    yield base, meta
    proc.terminate()
    proc.wait(timeout=60)


@pytest.mark.slow
def test_upload_a_camvid_image_and_read_the_overlay_and_legend(server, tmp_path):
    _need("Chromium", Path(CHROMIUM).exists() and Path(DRIVER).exists())
    _need("the shared CamVid data", (CAMVID / "val").is_dir())
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, meta = server
    image = sorted((CAMVID / "val").glob("*.png"))[0]
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", "--window-size=1200,900",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    try:
        driver.get(base + "/")
        WebDriverWait(driver, 30).until(
            lambda d: "classes" in d.find_element(By.ID, "model").text)
        upload = driver.find_element(By.ID, "file")
        driver.execute_script("arguments[0].hidden = false", upload)
        upload.send_keys(str(image))
        driver.execute_script("arguments[0].hidden = true", upload)
        WebDriverWait(driver, 120).until(
            lambda d: d.find_element(By.ID, "overlay").get_attribute("data-ready") == "1")
        rows = [li.text.splitlines() for li in
                driver.find_elements(By.CSS_SELECTOR, "#legend li")]  # [name, "12.3 %"]
        assert rows and all(name in meta.class_names for name, _ in rows)
        shares = [float(share.split()[0]) for _, share in rows]
        assert abs(sum(shares) - 100) < 0.5 and shares == sorted(shares, reverse=True)
        canvas = driver.find_element(By.ID, "overlay")
        assert driver.execute_script("return [arguments[0].width, arguments[0].height]",
                                     canvas) == [480, 360]
        href = driver.find_element(By.ID, "download").get_attribute("href")
        mask = Image.open(io.BytesIO(base64.b64decode(href.split(",", 1)[1])))
        assert mask.size == (480, 360) and mask.mode == "P"
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert Image.open(tmp_path / "page.png").size[0] > 600
        if os.environ.get("FCNSEG_SCREENSHOT"):  # for the README: keep a copy
            shutil.copy(tmp_path / "page.png", os.environ["FCNSEG_SCREENSHOT"])
    finally:
        driver.quit()
