"""fcnseg serve as a real process, as hostile clients meet it: graceful and immediate
shutdown, slow headers, request smuggling shapes, uploads that are slow to parse, and many
large uploads at once."""

from __future__ import annotations

import io
import json
import signal
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import free_port, make_checkpoint, start_server, wait_until

pytest.importorskip("fastapi")

NAMES = ["background", "thing", "other"]
PALETTE = [(0, 0, 0), (200, 30, 30), (30, 200, 30)]


def png(h: int, w: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _post(url: str, data: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers={"content-type": "image/png"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _serve(tmp_path, *flags: str, backbone: str = "tiny"):
    """A real `fcnseg serve` process, ready: (process, base URL)."""
    ckpt = make_checkpoint(tmp_path / f"{backbone}.pt", NAMES, PALETTE, model="fcn8s",
                           backbone=backbone)
    return start_server([sys.executable, "-m", "fcnseg", "serve", "--checkpoint", str(ckpt),
                         "--precision", "fp32", *flags])


def _slow_request(base: str, results: dict) -> threading.Thread:
    """A big sliding-window request on ResNet-18: still in the model a second later."""
    def send() -> None:
        try:
            results["a"] = _post(base + "/v1/segment?mode=slide&flip=true", png(1200, 1600))
        except OSError:  # the server left mid-request
            results["a"] = (None, b"")
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _in_flight(base: str) -> int | None:
    """Requests the server has admitted and not answered; None once it drains (503, or
    no longer listening)."""
    try:
        with urllib.request.urlopen(base + "/ready", timeout=5) as r:
            return json.loads(r.read())["in_flight"]
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            return None
        raise
    except (urllib.error.URLError, ConnectionError):
        return None


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


@pytest.mark.slow
def test_a_second_sigterm_exits_at_once(tmp_path):
    proc, base = _serve(tmp_path, backbone="resnet18")
    try:
        _slow_request(base, {})
        wait_until(lambda: _in_flight(base) == 1, 30, "the big image admitted")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _in_flight(base) is None, 30, "draining")
        proc.send_signal(signal.SIGTERM)
        # 128 + SIGTERM is the immediate exit's status; a drain would end by -SIGTERM
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()


@pytest.mark.slow
def test_a_real_server_drains_on_sigterm(tmp_path):
    proc, base = _serve(tmp_path, backbone="resnet18")
    try:
        results: dict = {}
        slow = _slow_request(base, results)
        wait_until(lambda: _in_flight(base) == 1, 30, "the big image admitted")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _post(base + "/v1/segment", png(20, 20))[0] == 503, 10,
                   "new requests refused while draining")
        late = _post(base + "/v1/segment", png(20, 20))
        slow.join(timeout=120)
        assert results["a"][0] == 200  # in flight when SIGTERM came: finished
        assert Image.open(io.BytesIO(results["a"][1])).size == (1600, 1200)
        assert late[0] == 503 and "shutting down" in json.loads(late[1])["error"]
        # drained, then uvicorn re-raises the signal: the process ends by SIGTERM, as
        # process managers expect of a clean stop
        assert proc.wait(timeout=60) == -signal.SIGTERM
        err = proc.stderr.read()
        assert f"on {base}/" in err and "Traceback" not in err
    finally:
        proc.kill()


@pytest.mark.slow
def test_a_slow_loris_connection_is_closed_after_the_header_timeout():
    port = free_port()
    script = ("from fastapi import FastAPI\nfrom fcnseg.serve.server import run_server\n"
              "app = FastAPI()\napp.get('/')(lambda: {'ok': True})\n"
              "app.get('/ready')(lambda: {'ok': True})\n"
              "class Gate:\n    draining = False\n    admitted = 0\n"
              f"app.state.gate = Gate()\nrun_server(app, '127.0.0.1', {port}, "
              "header_timeout=0.5)\n")
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/ready"), 60, "the server")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as loris:
            loris.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the end
            assert loris.recv(1024) == b""  # closed by the server, not by our timeout
    finally:
        proc.kill()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _exchange(base: str, request: bytes, timeout: float = 30) -> tuple[bytes, bool]:
    """Send raw bytes; what came back, and whether the server closed the connection."""
    host, port = base.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except TimeoutError:
            return got, False
    return got, True


@pytest.mark.slow
def test_length_and_chunked_together_are_refused_and_nothing_is_smuggled(tmp_path):
    proc, base = _serve(tmp_path)
    try:
        smuggled = (b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                    b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        got, closed = _exchange(base, smuggled, timeout=10)
        assert got.startswith(b"HTTP/1.1 400") and b"Content-Length and Transfer-Encoding" in got
        assert closed and got.count(b"HTTP/1.1") == 1  # the second request was not answered
        # chunked alone has no length to reserve: 411, whatever follows
        chunked = (b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n" + b"100000\r\n" + b"x" * 0x100000)
        got, _ = _exchange(base, chunked, timeout=10)
        assert got.startswith(b"HTTP/1.1 411")
    finally:
        proc.kill()


def _chunky_png(size: int) -> bytes:
    """A 20 x 20 PNG made ``size`` bytes long by tiny private chunks before its pixels:
    slow to parse (its header is read chunk by chunk), cheap to send."""
    small = png(20, 20)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    filler = chunk(b"zzTx", b"abcd") * ((size - len(small)) // 16)
    return small[:33] + filler + small[33:]


@pytest.mark.slow
def test_health_answers_while_uploads_are_parsed(tmp_path):
    proc, base = _serve(tmp_path)
    try:
        body = _chunky_png(19 * 2**20)
        results: list = []
        senders = [threading.Thread(target=lambda: results.append(
            _post(base + "/v1/segment", body)[0])) for _ in range(3)]
        for t in senders:
            t.start()
        waits = []
        while any(t.is_alive() for t in senders):
            start = time.monotonic()
            assert _answers(base + "/health")
            waits.append(time.monotonic() - start)
            time.sleep(0.05)
        assert sorted(results) == [200, 200, 200] and len(waits) > 5
        # parsing runs in worker threads: the event loop only moves bytes
        assert np.median(waits) < 0.1 and max(waits) < 2.0, waits
    finally:
        proc.kill()


@pytest.mark.slow
def test_many_large_uploads_at_once_hold_bounded_memory(tmp_path):
    proc, base = _serve(tmp_path, "--max-receiving-mb", "40")
    try:
        before = _rss(proc.pid)
        size = 19 * 2**20
        head = (b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: %d\r\n\r\n" % size)
        host, port = base.rsplit("/", 1)[1].split(":")
        socks = [socket.create_connection((host, int(port)), timeout=30) for _ in range(40)]
        refused = 0
        for s in socks:  # 40 uploaders, each 1 MB into a 19 MB body
            s.sendall(head + b"\0" * 2**20)
        for s in socks:
            s.settimeout(0.5)
            try:
                refused += s.recv(64).startswith(b"HTTP/1.1 503")
            except TimeoutError:  # still being received: it holds its reservation
                pass
        grown = _rss(proc.pid) - before
        for s in socks:
            s.close()
        assert refused >= 37  # 40 MB of reservations hold two 19 MB bodies at most
        assert grown < 100 * 2**20, grown / 2**20
        assert _answers(base + "/health")
    finally:
        proc.kill()
