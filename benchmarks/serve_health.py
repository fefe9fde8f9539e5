"""``fcnseg serve``'s liveness while uploads that are slow to parse arrive.

Starts ``fcnseg serve`` on a free 127.0.0.1 port, sends ``--uploads`` PNGs at once, each
``--mb`` MB of tiny private chunks around a 20 x 20 image (Pillow reads such a header chunk
by chunk, seconds of Python), and probes ``/health`` every 50 ms until they are answered:
the probes' median and maximum latency.

    python benchmarks/serve_health.py --checkpoint best.pt --uploads 3 --mb 19
"""

from __future__ import annotations

import argparse
import io
import statistics
import struct
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from report import write_report
from serve_load import post, start


def chunky_png(size: int) -> bytes:
    """A 20 x 20 PNG padded to ``size`` bytes with 16-byte private chunks before its
    pixels."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(buf, "PNG")
    small = buf.getvalue()
    data = b"zzTx" + b"abcd"
    one = struct.pack(">I", 4) + data + struct.pack(">I", zlib.crc32(data) & 0xFFFFFFFF)
    return small[:33] + one * ((size - len(small)) // 16) + small[33:]


def probe(base: str, body: bytes, uploads: int) -> dict:
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(
        post(base + "/v1/segment", body)[0])) for _ in range(uploads)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    waits = []
    while any(t.is_alive() for t in threads):
        start_s = time.perf_counter()
        with urllib.request.urlopen(base + "/health", timeout=60):
            waits.append(time.perf_counter() - start_s)
        time.sleep(0.05)
    return {"uploads": uploads, "bytes": len(body), "codes": sorted(codes),
            "seconds": time.perf_counter() - began, "probes": len(waits),
            "median_ms": 1000 * statistics.median(waits), "max_ms": 1000 * max(waits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--uploads", type=int, default=3)
    parser.add_argument("--mb", type=float, default=19.0)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/serve_health.json"))
    args = parser.parse_args()
    server, base = start(["--checkpoint", args.checkpoint], [])
    try:
        row = probe(base, chunky_png(int(args.mb * 2**20)), args.uploads)
    finally:
        server.terminate()
        server.wait(timeout=120)
    print(f"{row['uploads']} uploads of {row['bytes']} bytes: {row['codes']} in "
          f"{row['seconds']:.1f} s; /health over {row['probes']} probes: median "
          f"{row['median_ms']:.1f} ms, max {row['max_ms']:.1f} ms")
    write_report(args.json, rows=[row])


if __name__ == "__main__":
    main()
