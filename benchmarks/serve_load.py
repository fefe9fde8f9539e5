"""Load on ``fcnseg serve`` (loopback only, bounded in requests and time).

Starts ``fcnseg serve`` on a free 127.0.0.1 port, then for each client count N sends CamVid
val images (360 x 480 PNGs, raw bodies) from N threads for ``--seconds``; reports requests/s,
latency percentiles, errors and the server's peak RSS. An overload phase (many clients, a
small queue) shows the 503 + Retry-After answers instead of growing memory. A slow-client
phase keeps ``--slow-clients`` uploads trickling one byte a second while one client sends
images: what that client gets, and what the slow ones are answered. The model's own rate is
``fcnseg predict`` on the same images in the same run (decode + predict + write).

    python benchmarks/serve_load.py --checkpoint runs/camvid/best.pt --json out.json
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from report import write_report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: list[str], extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fcnseg", "serve", *model, "--port",
                             str(port), *extra], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(base + "/ready", timeout=2):
                return proc, base
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(url: str, body: bytes) -> tuple[int, float]:
    req = urllib.request.Request(url, data=body, headers={"content-type": "image/png"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        e.read()
        status = e.code
    except OSError:
        status = -1
    return status, time.perf_counter() - start


def load(base: str, bodies: list[bytes], clients: int, seconds: float,
         max_requests: int = 5000) -> dict:
    """``clients`` threads posting for ``seconds`` (at most ``max_requests`` in all)."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(k: int) -> None:
        i = k
        while time.perf_counter() < deadline:
            with lock:
                if len(results) >= max_requests:
                    return
            r = post(base + "/v1/segment", bodies[i % len(bodies)])
            with lock:
                results.append(r)
            i += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = sorted(lat for status, lat in results if status == 200)
    q = statistics.quantiles(ok, n=100) if len(ok) >= 2 else [float("nan")] * 99
    return {"clients": clients, "requests": len(results), "ok": len(ok),
            "busy_503": sum(s == 503 for s, _ in results),
            "errors": sum(s not in (200, 503) for s, _ in results),
            "requests_per_s": len(ok) / wall, "p50_s": q[49], "p95_s": q[94], "p99_s": q[98]}


def trickle(base: str, seconds: float, answers: list[str]) -> None:
    """One upload that declares 1 MB and sends a byte a second for ``seconds``; appends the
    status line the server answered ("closed" when it hung up without one)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=seconds + 60) as sock:
        sock.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 1000000\r\n\r\n")
        deadline = time.perf_counter() + seconds
        try:
            while time.perf_counter() < deadline:
                sock.sendall(b"\x89")
                sock.settimeout(1.0)
                try:
                    reply = sock.recv(200)
                except TimeoutError:
                    continue
                answers.append(reply.split(b"\r\n")[0].decode() if reply else "closed")
                return
        except OSError:
            answers.append("closed")
            return
    answers.append("still open")


def slow_phase(model: list[str], bodies: list[bytes], slow: int, seconds: float) -> dict:
    """``slow`` trickling uploads and one normal client at once, on a fresh server."""
    proc, base = start(model, [])
    answers: list[str] = []
    try:
        post(base + "/v1/segment", bodies[0])  # warm-up
        threads = [threading.Thread(target=trickle, args=(base, seconds, answers))
                   for _ in range(slow)]
        for t in threads:
            t.start()
        time.sleep(2)  # every slow upload has begun
        row = load(base, bodies, 1, seconds - 4)
        for t in threads:
            t.join()
    finally:
        proc.terminate()
        proc.wait()
    row.update(slow_clients=slow, slow_answers=sorted(answers))
    return row


def predict_rate(model: list[str], folder: Path) -> float:
    """``fcnseg predict --no-overlay`` images/s on ``folder`` (masks only, as the service's
    default answer; its own loop rate, start-up excluded)."""
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([sys.executable, "-m", "fcnseg", "predict", *model, str(folder),
                               "--out", out, "--no-progress", "--no-overlay"],
                              capture_output=True, text=True, check=True)
    return float(done.stderr.rsplit("(", 1)[1].split(" img/s")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--data-dir", default="../shared/data/camvid")
    parser.add_argument("--images", type=int, default=24, help="distinct val images sent")
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--overload-clients", type=int, default=16)
    parser.add_argument("--slow-clients", type=int, default=9,
                        help="uploads trickling a byte a second in the slow-client phase")
    parser.add_argument("--slow-seconds", type=float, default=40,
                        help="its length (the server's body timeout is 30 s)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/serve_load.json"))
    args = parser.parse_args()
    model = ["--checkpoint", args.checkpoint, "--runtime", args.runtime]
    files = sorted((Path(args.data_dir) / "val").glob("*.png"))[:args.images]
    bodies = [f.read_bytes() for f in files]
    tmp = tempfile.TemporaryDirectory()
    for f in files:
        os.symlink(f.resolve(), Path(tmp.name) / f.name)
    before = predict_rate(model, Path(tmp.name))
    rows = []
    proc, base = start(model, [])
    try:
        post(base + "/v1/segment", bodies[0])  # warm-up
        for n in args.clients:
            rows.append(load(base, bodies, n, args.seconds))
        rss = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
    # The shared host's speed drifts: the model's rate is taken before and after the load.
    after = predict_rate(model, Path(tmp.name))
    tmp.cleanup()
    model_rate = (before + after) / 2
    print(f"fcnseg predict --no-overlay on the same {len(files)} images: {before:.2f} img/s "
          f"before the load, {after:.2f} after")
    for r in rows:
        r["fraction_of_predict"] = r["requests_per_s"] / model_rate
        print(f"{r['clients']:3d} clients: {r['requests_per_s']:.2f} req/s "
              f"({100 * r['fraction_of_predict']:.0f} % of predict), p50 {r['p50_s']:.2f} s, "
              f"p95 {r['p95_s']:.2f} s, p99 {r['p99_s']:.2f} s, {r['errors']} errors, "
              f"{r['busy_503']} x 503")
    proc, base = start(model, ["--queue", "2"])
    try:
        over = load(base, bodies, args.overload_clients, args.seconds / 2)
        over["peak_rss_mib"] = peak_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
    print(f"overload, {args.overload_clients} clients, queue 2: {over['ok']} ok, "
          f"{over['busy_503']} x 503, {over['errors']} other errors, peak RSS "
          f"{over['peak_rss_mib']:.0f} MiB (normal load: {rss:.0f} MiB)")
    slow = slow_phase(model, bodies, args.slow_clients, args.slow_seconds)
    print(f"{args.slow_clients} slow uploads and 1 client for {args.slow_seconds:.0f} s: "
          f"{slow['requests_per_s']:.2f} req/s, p95 {slow['p95_s']:.2f} s, {slow['errors']} "
          f"errors, {slow['busy_503']} x 503; the slow ones got {slow['slow_answers']}")
    write_report(args.json, predict_images_per_s=[before, after], rows=rows, peak_rss_mib=rss,
                 overload=over, slow_clients=slow)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
