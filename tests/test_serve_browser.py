"""fcnseg serve in a real browser: Debian's Chromium, headless, drives the web page through
its states: empty, a key prompt and the retry, a result, an error, a new upload over an old
one; a screenshot of each lands in the test's folder (FCNSEG_SCREENSHOTS=DIR keeps them).

The server is the deployment install's (the built wheel with ``fcnseg[deploy]``, no
PyTorch) serving an exported model, as a deployed service runs."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import CAMVID, export_model, make_checkpoint, start_server
from fcnseg.data.camvid import camvid_meta

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
KEY = "browser-key"


def _need(what: str, ok: bool) -> None:
    if not ok:  # CI installs them (.ci/run): there a missing browser is a failure
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing in CI: .ci/run installs it")
        pytest.skip(f"{what} is not installed (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def server(tmp_path_factory, deploy_venv):
    """A real `fcnseg serve` of an exported CamVid-class model that asks for an API key."""
    meta = camvid_meta()
    folder = tmp_path_factory.mktemp("browser")
    ckpt = make_checkpoint(folder / "camvid.pt", meta.class_names, meta.palette, model="fcn8s")
    model = export_model(ckpt, folder / "camvid.onnx")
    proc, base = start_server([str(deploy_venv / "fcnseg"), "serve", "--checkpoint",
                               str(model), "--api-key", KEY],
                               stderr=subprocess.DEVNULL)
    yield base, meta
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture
def browser(tmp_path):
    _need("Chromium", Path(CHROMIUM).exists() and Path(DRIVER).exists())
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", "--window-size=1200,900",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_the_page_through_its_states(server, browser, tmp_path):
    _need("the shared CamVid data", (CAMVID / "val").is_dir())
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, meta = server
    driver = browser
    first, second = sorted((CAMVID / "val").glob("*.png"))[:2]
    small = tmp_path / "small.png"  # a new upload of another size over the first result
    Image.open(second).resize((240, 180)).save(small)
    big = tmp_path / "big.png"  # slow to segment: a later small image must win over it
    Image.open(first).resize((2400, 1800)).save(big)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a picture")
    shown = lambda i: driver.find_element(By.ID, i).is_displayed()  # noqa: E731
    status = lambda: driver.find_element(By.ID, "status").text  # noqa: E731

    def shot(name: str) -> None:
        path = tmp_path / f"{name}.png"
        driver.save_screenshot(str(path))
        assert Image.open(path).size[0] >= 390  # the phone width, at least
        if os.environ.get("FCNSEG_SCREENSHOTS"):
            shutil.copy(path, Path(os.environ["FCNSEG_SCREENSHOTS"]) / path.name)

    def choose(path: Path) -> None:
        upload = driver.find_element(By.ID, "file")
        driver.execute_script("arguments[0].hidden = false", upload)
        upload.send_keys(str(path))
        driver.execute_script("arguments[0].hidden = true", upload)

    def result_for(width: int, height: int) -> None:
        WebDriverWait(driver, 120).until(
            lambda d: d.find_element(By.ID, "overlay").get_attribute("data-ready") == "1")
        size = driver.execute_script("return [arguments[0].width, arguments[0].height]",
                                     driver.find_element(By.ID, "overlay"))
        assert size == [width, height]
        assert all(shown(i) for i in ("legend", "download", "opacity"))

    # empty: the drop zone and the key prompt; no result, legend, download or slider
    driver.get(base + "/")
    WebDriverWait(driver, 30).until(
        lambda d: "API key" in d.find_element(By.ID, "model").text)
    assert shown("key-row") and not any(shown(i) for i in ("result", "legend", "download",
                                                              "opacity", "original"))
    shot("1-empty")
    # an upload without the key: an error, still no result; a wrong key, then the key
    # (typed, then the button), and the retry of what the key blocked
    choose(first)
    WebDriverWait(driver, 30).until(lambda d: "needs an API key" in status())
    assert not shown("result")
    key = driver.find_element(By.ID, "key")
    use = driver.find_element(By.CSS_SELECTOR, "#key-row button")
    key.send_keys("not-the-key")
    use.click()
    WebDriverWait(driver, 30).until(
        lambda d: "wrong key" in d.find_element(By.ID, "model").text)
    assert shown("key-row") and not shown("result")
    key.clear()
    key.send_keys(KEY)
    use.click()
    result_for(480, 360)
    assert not shown("key-row")  # accepted: the field goes away
    rows = [li.text.splitlines() for li in driver.find_elements(By.CSS_SELECTOR, "#legend li")]
    assert rows and all(name in meta.class_names for name, _ in rows)
    shares = [float(share.split()[0]) for _, share in rows]
    assert abs(sum(shares) - 100) < 0.5 and shares == sorted(shares, reverse=True)
    href = driver.find_element(By.ID, "download").get_attribute("href")
    mask = Image.open(io.BytesIO(base64.b64decode(href.split(",", 1)[1])))
    assert mask.size == (480, 360) and mask.mode == "P"
    shot("2-result")
    # an error after a result: the message alone, nothing stale beside it
    choose(broken)
    WebDriverWait(driver, 30).until(lambda d: "not a PNG" in status())
    assert not any(shown(i) for i in ("result", "legend", "download", "original"))
    shot("3-error")
    # the same file again is a new upload; then a smaller image over that result
    choose(first)
    result_for(480, 360)
    choose(small)
    result_for(240, 180)
    assert "240 x 180" in status()
    shot("4-new-upload")
    # a big image, then at once a small one: the big one's request is aborted, and its
    # answer never replaces the small one's result
    choose(big)
    choose(small)
    result_for(240, 180)
    time.sleep(3)  # longer than the big image takes to segment here
    result_for(240, 180)
    assert "240 x 180" in status()
    # on a phone the result lands below the drop zone: the page scrolls to it
    driver.set_window_size(390, 844)
    choose(first)
    result_for(480, 360)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script(
        "const r = document.getElementById('result').getBoundingClientRect();"
        "return r.top >= 0 && r.top < window.innerHeight / 2;"))
    shot("5-phone")
    driver.set_window_size(1200, 900)
    # the background class is left transparent: the photo shows through it
    alphas = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const c = document.createElement('canvas'); c.width = 2; c.height = 1;
        const x = c.getContext('2d');
        x.fillStyle = 'rgb(0,0,0)'; x.fillRect(0, 0, 1, 1);
        x.fillStyle = 'rgb(200,30,30)'; x.fillRect(1, 0, 1, 1);
        const img = new Image();
        img.onload = () => {
          clearColours = ['0,0,0'];
          const d = transparentBackground(img).getContext('2d').getImageData(0, 0, 2, 1).data;
          done([d[3], d[7]]);
        };
        img.src = c.toDataURL();""")
    assert alphas == [0, 255]
