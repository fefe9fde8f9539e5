"""fcnseg serve: every endpoint and output, odd sizes, the API key, bad uploads, load limits,
agreement with `fcnseg predict`, and a real process's graceful shutdown."""

from __future__ import annotations

import base64
import io
import os
import socket

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
    assert c.get("/ready").json() == {"ready": True, "in_flight": 0}
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
        assert r.status_code == 401
        assert ("wrong API key" if headers else "X-API-Key") in r.json()["error"]
    assert raw(c, png(20, 20)).status_code == 401
    assert raw(c, png(20, 20), key="s3cret").status_code == 200


def test_a_non_ascii_api_key_is_a_401_and_refused_at_start_up(predictor, ckpt, capsys):
    c = client(predictor, api_key="s3cret")
    r = c.get("/v1/model", headers={"X-API-Key": "cl\xe9".encode("latin-1")})
    assert r.status_code == 401
    assert main(["serve", "--checkpoint", str(ckpt), "--api-key", "clé"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fcnseg: error:") and "printable ASCII" in err and "\n" not in err


def test_an_empty_api_key_is_refused_at_start_up(ckpt, capsys, monkeypatch):
    # An empty key would serve without authentication and without a word.
    assert main(["serve", "--checkpoint", str(ckpt), "--api-key", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fcnseg: error:") and "empty" in err and "\n" not in err
    monkeypatch.setenv("FCNSEG_API_KEY", "")
    assert main(["serve", "--checkpoint", str(ckpt)]) == 2
    assert "empty" in capsys.readouterr().err


def test_an_eps_upload_never_reaches_ghostscript(predictor, tmp_path, monkeypatch):
    calls = tmp_path / "gs-called"
    fake = tmp_path / "bin" / "gs"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {calls}\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    r = raw(client(predictor), eps)
    assert r.status_code == 415 and "PNG" in r.json()["error"]
    path = tmp_path / "x.png"  # the CLI's image reader is the same one
    path.write_bytes(eps)
    assert main(["predict", "--checkpoint", str(predictor.source), str(path),
                 "--out", str(tmp_path / "out")]) == 2
    assert not calls.exists()


def test_the_api_docs_work_offline_and_declare_the_key(predictor):
    c = client(predictor, api_key="s3cret")
    page = c.get("/docs").text
    assert "/docs-static/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    for asset in ("/docs-static/swagger-ui-bundle.js", "/docs-static/swagger-ui.css"):
        assert c.get(asset).status_code == 200
    schema = c.get("/openapi.json").json()
    scheme = schema["components"]["securitySchemes"]["APIKeyHeader"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "X-API-Key")
    assert schema["paths"]["/v1/segment"]["post"]["security"] == [{"APIKeyHeader": []}]


def test_head_and_favicon_answer(predictor):
    c = client(predictor)
    for route in ("/", "/health", "/ready", "/v1/model", "/docs", "/favicon.ico"):
        r = c.head(route)
        assert r.status_code == 200 and r.content == b"", route
    icon = c.get("/favicon.ico")
    assert icon.status_code == 200 and icon.content.startswith(b"<svg")


def test_bad_uploads_get_json_errors(predictor, monkeypatch):
    c = client(predictor, max_pixels=50_000, max_upload_mb=0.5)
    good = png(30, 40)
    cases = [
        (raw(c, b"hello", kind="text/plain"), 415, "content type"),
        (raw(c, b"hello there, not a png"), 415, "not a PNG"),
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


def test_serve_refuses_a_busy_port_in_one_line(ckpt, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--checkpoint", str(ckpt), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
