"""``fcnseg serve`` under a burst of maximum-size images: what admission by pixels bounds.

Starts ``fcnseg serve`` on a free 127.0.0.1 port with the given checkpoint, then sends
``--burst`` uploads of a ``--side`` x ``--side`` PNG at once (loopback only, one burst) and
reports how many were answered 200 and 503, and the server's peak RSS (VmHWM) before and
after, for each ``--max-pixels-in-flight`` given.

    python benchmarks/serve_memory.py --checkpoint best.pt --side 5000 --burst 8 \\
        --in-flight 0 250000000
"""

from __future__ import annotations

import argparse
import io
import threading
import time
from pathlib import Path

from PIL import Image

from report import write_report
from serve_load import peak_rss_mib, post, start


def burst(checkpoint: str, body: bytes, count: int, in_flight: int, side: int) -> dict:
    """``count`` uploads of ``body`` at once to a fresh server; what came back, its RSS."""
    server, base = start(["--checkpoint", checkpoint],
                         ["--max-pixels", str(side * side), "--queue", str(count),
                          "--max-pixels-in-flight", str(in_flight)])
    try:
        idle = peak_rss_mib(server.pid)
        codes: list[int] = []
        threads = [threading.Thread(target=lambda: codes.append(
            post(base + "/v1/segment", body)[0])) for _ in range(count)]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"max_pixels_in_flight": in_flight or 2 * side * side, "burst": count,
                "ok": codes.count(200), "busy_503": codes.count(503),
                "other": len(codes) - codes.count(200) - codes.count(503),
                "seconds": time.perf_counter() - began, "idle_peak_rss_mib": idle,
                "peak_rss_mib": peak_rss_mib(server.pid)}
    finally:
        server.terminate()
        server.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--side", type=int, default=5000, help="image side, pixels")
    parser.add_argument("--burst", type=int, default=8, help="uploads sent at once")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[0],
                        help="--max-pixels-in-flight values to try (0: the default)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/serve_memory.json"))
    args = parser.parse_args()
    buf = io.BytesIO()
    # a smooth picture: a small file (within --max-upload-mb) of many pixels, like a photo
    # whose cost is in its pixels, not its bytes
    Image.radial_gradient("L").resize((args.side, args.side)).convert("RGB").save(buf, "PNG")
    rows = [burst(args.checkpoint, buf.getvalue(), args.burst, n, args.side)
            for n in args.in_flight]
    for r in rows:
        print(f"max pixels in flight {r['max_pixels_in_flight']:>11}: {r['ok']} answered, "
              f"{r['busy_503']} x 503, {r['other']} other, {r['seconds']:.0f} s, peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB (idle {r['idle_peak_rss_mib']:.0f})")
    write_report(args.json, side=args.side, rows=rows)


if __name__ == "__main__":
    main()
