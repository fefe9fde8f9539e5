"""fcnseg serve's budgets, as hostile clients test them through ASGI: the queue, the
pixels and bytes in flight, slow and abandoned uploads, bodies longer than declared, large
images by tiles."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from conftest import make_checkpoint
from fcnseg import Predictor

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")
from fastapi.testclient import TestClient  # noqa: E402

from fcnseg.serve import ServeSettings, create_app  # noqa: E402
from fcnseg.serve.gate import ApiError, Gate  # noqa: E402


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    ckpt = make_checkpoint(tmp_path_factory.mktemp("limits") / "best.pt", model="fcn8s")
    return Predictor.from_file(ckpt, precision="fp32")


def png(h: int, w: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def raw(c: TestClient, data: bytes, query: str = ""):
    return c.post(f"/v1/segment{query}", content=data, headers={"content-type": "image/png"})


def test_a_full_queue_answers_503_with_retry_after(predictor, monkeypatch):
    app = create_app(predictor, ServeSettings(concurrency=1, queue=0))
    started = threading.Event()
    real = Predictor.predict_labels

    def slow(self, images):
        started.set()
        time.sleep(1.0)
        return real(self, images)

    monkeypatch.setattr(Predictor, "predict_labels", slow)
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


    class Gone:
        async def is_disconnected(self):
            return True

        async def receive(self):
            return {"type": "http.disconnect"}

    calls = []
    gate = Gate(ServeSettings())
    with pytest.raises(ApiError) as err:
        asyncio.run(gate.run(Gone(), lambda: calls.append(1)))
    assert err.value.status == 499 and calls == []


def test_admission_counts_pixels_not_only_requests():

    gate = Gate(ServeSettings(max_pixels=1000, queue=8))  # 2000 pixels in flight
    gate.admit(900)
    gate.admit(900)
    with pytest.raises(ApiError) as busy:
        gate.admit(900)  # a third large image would pass the bound: 503, retry later
    assert busy.value.status == 503 and "pixels" in busy.value.message
    gate.admit(100)  # a small one still fits
    gate.leave(900)
    gate.admit(900)
    assert (gate.admitted, gate.pixels) == (3, 1900)
    alone = Gate(ServeSettings(max_pixels=1000, max_pixels_in_flight=10))
    alone.admit(1000)  # one request is always admitted (max_pixels bounds it alone)


def _asgi_post(app, chunks: list[bytes], pause: float, size: int | None = None):
    """A POST to /v1/segment straight through ASGI, its body sent in ``chunks`` with
    ``pause`` seconds before each; a ``None`` chunk is the client leaving. The status."""

    size = sum(len(c) for c in chunks if c) if size is None else size
    scope = {"type": "http", "method": "POST", "path": "/v1/segment", "raw_path": b"/v1/segment",
             "query_string": b"", "root_path": "", "http_version": "1.1", "scheme": "http",
             "server": ("test", 80), "client": ("client", 1),
             "headers": [(b"content-type", b"image/png"),
                         (b"content-length", str(size).encode())]}
    pending, sent = list(chunks), []

    async def receive():
        if not pending:
            await asyncio.sleep(3600)
        await asyncio.sleep(pause)
        chunk = pending.pop(0)
        if chunk is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message):
        sent.append(message)

    async def call():
        await app(scope, receive, send)
        return next(m["status"] for m in sent if m["type"] == "http.response.start")

    return call()


def test_slow_uploads_hold_no_queue_place_and_time_out(predictor, caplog):

    app = create_app(predictor, ServeSettings(concurrency=1, queue=0, body_timeout_s=1.0))
    image = png(20, 20)

    async def scenario():
        slow = [asyncio.ensure_future(_asgi_post(app, [image[:1], image[1:]], 5.0))
                for _ in range(3)]  # 1 byte, then nothing for 5 s
        await asyncio.sleep(0.2)
        fast = await _asgi_post(app, [image], 0.0)
        left = await _asgi_post(app, [image[:10], None], 0.05, size=len(image))
        return fast, left, await asyncio.gather(*slow)

    fast, left, slow = asyncio.run(scenario())
    assert fast == 200  # the slow uploaders did not take the only place
    assert slow == [408, 408, 408]
    assert left == 499
    assert "Traceback" not in caplog.text and "ClientDisconnect" not in caplog.text




def test_a_body_longer_than_its_length_is_cut_off_at_the_length(predictor):
    app = create_app(predictor, ServeSettings())
    image = png(20, 20)
    assert asyncio.run(_asgi_post(app, [image], 0.0, size=len(image) - 1)) == 413
    assert asyncio.run(_asgi_post(app, [image], 0.0)) == 200


def test_uploads_being_received_are_bounded_by_bytes(predictor):
    app = create_app(predictor, ServeSettings(max_upload_mb=1, max_receiving_mb=1.5))
    image = png(20, 20)
    big = 2**20 - 1  # two of these cannot be received at once under 1.5 MB

    async def scenario():
        slow = asyncio.ensure_future(_asgi_post(app, [image[:1], None], 1.0, size=big))
        await asyncio.sleep(0.2)  # its 1 MB is reserved from its Content-Length
        refused = await _asgi_post(app, [image], 0.0, size=big)
        small = await _asgi_post(app, [image], 0.0)  # 100 bytes still fit
        return refused, small, await slow

    refused, small, slow = asyncio.run(scenario())
    assert (refused, small, slow) == (503, 200, 499)
    assert app.state.gate.receiving == 0  # every reservation returned
    gate = Gate(ServeSettings(max_upload_mb=1, max_receiving_mb=0.5))
    with gate.reception(2**20):  # one upload is always let in, up to --max-upload-mb
        with pytest.raises(ApiError) as busy:
            with gate.reception(10):
                pass
    assert busy.value.status == 503 and busy.value.headers == {"Retry-After": "1"}


def test_forms_with_many_files_or_no_boundary_are_400(predictor):
    c = TestClient(create_app(predictor))
    two = c.post("/v1/segment", files=[("image", ("a.png", png(8, 8), "image/png")),
                                       ("other", ("b.png", png(8, 8), "image/png"))])
    assert two.status_code == 400 and "one file" in two.json()["error"]
    bare = c.post("/v1/segment", content=b"--x\r\n\r\n",
                  headers={"content-type": "multipart/form-data"})
    assert bare.status_code == 400 and "boundary" in bare.json()["error"]
    named = c.post("/v1/segment?output=json",
                   files={"note": (None, "hello"), "image": ("a.png", png(8, 9), "image/png")})
    assert named.status_code == 200 and named.json()["width"] == 9


def test_images_above_the_whole_pass_bound_go_by_tiles(predictor, monkeypatch):
    import fcnseg.inference.predictor as module

    calls = []
    real = module.slide_labels
    monkeypatch.setattr(module, "slide_labels", lambda *a: calls.append(a[1].shape) or real(*a))
    c = TestClient(create_app(predictor, ServeSettings(max_whole_pixels=5000)))
    data = png(90, 70, seed=3)
    got = np.asarray(Image.open(io.BytesIO(raw(c, data).content)))
    raw(c, png(60, 80))  # 4800 pixels: one whole pass
    assert calls == [(90, 70, 3)]
    want = predictor.with_options(mode="slide").predict(Image.open(io.BytesIO(data)))
    assert np.array_equal(got, want)
