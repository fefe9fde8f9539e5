"""fcnseg serve: every endpoint and output, odd sizes, the API key, bad uploads, load limits,
agreement with `fcnseg predict`, and a real process's graceful shutdown."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import make_checkpoint
from fcnseg import Predictor
from fcnseg.cli import main

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")
from fastapi.testclient import TestClient  # noqa: E402

from fcnseg.serve import ServeSettings, create_app  # noqa: E402

NAMES = ["background", "thing", "other"]
PALETTE = [(0, 0, 0), (200, 30, 30), (30, 200, 30)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("serve") / "best.pt", NAMES, PALETTE,
                           model="fcn8s")


@pytest.fixture(scope="module")
def predictor(ckpt):
    return Predictor.from_file(ckpt, precision="fp32")


def client(predictor, **settings) -> TestClient:
    return TestClient(create_app(predictor, ServeSettings(**settings)))


def png(h: int, w: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def raw(c: TestClient, data: bytes, query: str = "", kind: str = "image/png", key: str = ""):
    headers = {"content-type": kind, **({"X-API-Key": key} if key else {})}
    return c.post(f"/v1/segment{query}", content=data, headers=headers)


def test_health_ready_and_model(predictor):
    c = client(predictor)
    assert c.get("/health").json() == {"status": "ok"}
    assert c.get("/ready").json() == {"ready": True}
    m = c.get("/v1/model").json()
    assert [x["name"] for x in m["classes"]] == NAMES and m["classes"][1]["color"] == [200, 30, 30]
    assert m["model"]["name"] == "fcn8s" and m["runtime"] == "torch"
    assert m["input"]["max_pixels"] == 25_000_000 and "api_key" not in m["limits"]
    assert "/v1/segment" in c.get("/openapi.json").json()["paths"]
    page = c.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: works offline
    assert c.get("/static/app.js").status_code == 200
    missing = c.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}


@pytest.mark.parametrize("size", [(97, 131), (375, 500)])
def test_mask_overlay_and_json_at_the_exact_size(predictor, size):
    c = client(predictor)
    data = png(*size)
    r = c.post("/v1/segment", files={"image": ("x.png", data, "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    mask = Image.open(io.BytesIO(r.content))
    assert mask.mode == "P" and mask.size == (size[1], size[0])
    assert np.array_equal(np.asarray(mask), predictor.predict(Image.open(io.BytesIO(data))))
    over = Image.open(io.BytesIO(raw(c, data, "?output=overlay&alpha=0.3").content))
    assert over.mode == "RGB" and over.size == (size[1], size[0])
    body = raw(c, data, "?output=json").json()
    assert (body["width"], body["height"]) == (size[1], size[0]) and "mask_png" not in body
    assert sum(x["pixels"] for x in body["classes"]) == size[0] * size[1]
    assert abs(sum(x["fraction"] for x in body["classes"]) - 1) < 1e-9
    with_mask = raw(c, data, "?output=json&mask=true").json()
    assert base64.b64decode(with_mask["mask_png"]) == r.content


def test_inference_options_are_query_parameters(predictor):
    c = client(predictor)
    data = png(70, 90, seed=2)
    got = np.asarray(Image.open(io.BytesIO(raw(c, data, "?mode=slide&flip=true").content)))
    want = predictor.with_options(mode="slide", flip=True).predict(Image.open(io.BytesIO(data)))
    assert np.array_equal(got, want)
    bad = raw(c, data, "?mode=crop")
    assert bad.status_code == 422 and "mode" in bad.json()["error"]


def test_the_service_masks_equal_fcnseg_predict(predictor, ckpt, tmp_path):
    src = tmp_path / "street.png"
    src.write_bytes(png(120, 161, seed=5))
    assert main(["predict", "--checkpoint", str(ckpt), str(src), "--out", str(tmp_path / "o"),
                 "--precision", "fp32", "--no-progress"]) == 0
    served = raw(client(predictor), src.read_bytes()).content
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(served))),
                          np.asarray(Image.open(tmp_path / "o" / "street.png")))


def test_api_key(predictor):
    c = client(predictor, api_key="s3cret")
    assert c.get("/health").status_code == 200  # liveness needs no key
    for headers in ({}, {"X-API-Key": "wrong"}):
        r = c.get("/v1/model", headers=headers)
        assert r.status_code == 401 and "X-API-Key" in r.json()["error"]
    assert raw(c, png(20, 20)).status_code == 401
    assert raw(c, png(20, 20), key="s3cret").status_code == 200


def test_bad_uploads_get_json_errors(predictor, monkeypatch):
    c = client(predictor, max_pixels=50_000, max_upload_mb=0.5)
    good = png(30, 40)
    cases = [
        (raw(c, b"hello", kind="text/plain"), 415, "content type"),
        (raw(c, b"hello there, not a png"), 415, "not an image"),
        (raw(c, good[: len(good) // 2]), 400, "truncated"),
        (raw(c, b""), 400, "empty"),
        (raw(c, png(300, 300)), 413, "pixels"),  # 90000 > 50000
        (raw(c, os.urandom(600_000)), 413, "over the limit"),
        (c.post("/v1/segment", files={"note": (None, "text only")}), 400, "no file"),
        (c.post("/v1/segment", content=iter([good]), headers={"content-type": "image/png"}),
         411, "Content-Length"),
    ]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 30 x 40 image is now a "bomb"
    cases.append((raw(c, good), 413, "too large"))
    for r, status, needle in cases:
        assert r.status_code == status, (status, r.text)
        assert needle in r.json()["error"]


def test_a_full_queue_answers_503_with_retry_after(predictor, monkeypatch):
    app = create_app(predictor, ServeSettings(concurrency=1, queue=0))
    started = threading.Event()
    real = Predictor.predict_many

    def slow(self, images):
        started.set()
        time.sleep(1.0)
        return real(self, images)

    monkeypatch.setattr(Predictor, "predict_many", slow)
    c = TestClient(app)
    results = {}
    first = threading.Thread(target=lambda: results.update(a=raw(c, png(20, 20))))
    first.start()
    assert started.wait(10)
    second = raw(c, png(20, 20))
    first.join()
    assert results["a"].status_code == 200
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert "busy" in second.json()["error"]
    app.state.gate.draining = True
    assert raw(c, png(20, 20)).status_code == 503 and c.get("/ready").status_code == 503
    assert c.get("/health").status_code == 200


def test_an_abandoned_request_does_not_use_the_model(predictor):
    import asyncio

    from fcnseg.serve.app import ApiError, Gate

    class Gone:
        async def is_disconnected(self):
            return True

    calls = []
    gate = Gate(ServeSettings())
    with pytest.raises(ApiError) as err:
        asyncio.run(gate.run(Gone(), lambda: calls.append(1)))
    assert err.value.status == 499 and calls == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, data: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers={"content-type": "image/png"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.slow
def test_a_real_server_drains_on_sigterm(tmp_path):
    # ResNet-18, not the tiny backbone: the big request must still be in flight a second
    # after it was sent (with the tiny one it can finish first and the server stops at once)
    ckpt = make_checkpoint(tmp_path / "resnet18.pt", NAMES, PALETTE, model="fcn8s",
                           backbone="resnet18")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fcnseg", "serve", "--checkpoint", str(ckpt),
                             "--port", str(port), "--precision", "fp32"],
                            stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(base + "/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        results = {}
        slow = threading.Thread(target=lambda: results.update(
            a=_post(base + "/v1/segment?mode=slide&flip=true", png(1200, 1600))))
        slow.start()
        time.sleep(1.0)  # the big image is in the model now
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        late = _post(base + "/v1/segment", png(20, 20))
        slow.join(timeout=120)
        assert results["a"][0] == 200  # in flight when SIGTERM came: finished
        assert Image.open(io.BytesIO(results["a"][1])).size == (1600, 1200)
        assert late[0] == 503 and "shutting down" in json.loads(late[1])["error"]
        # drained, then uvicorn re-raises the signal: the process ends by SIGTERM, as
        # process managers expect of a clean stop
        assert proc.wait(timeout=60) == -signal.SIGTERM
        err = proc.stderr.read()
        assert f"on http://127.0.0.1:{port}/" in err and "Traceback" not in err
    finally:
        proc.kill()


def test_serve_refuses_a_busy_port_in_one_line(ckpt, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--checkpoint", str(ckpt), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
