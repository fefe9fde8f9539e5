"""``fcnseg serve`` against an upload that lies about its length.

Starts ``fcnseg serve`` on a free 127.0.0.1 port and sends one request that declares
``Content-Length: 10`` *and* ``Transfer-Encoding: chunked``, then streams ``--mb`` MiB of
chunks as fast as the server reads them: how many bytes the server took before it answered
or closed the connection, its answer, and its resident memory before and at its peak. A
second request sends a plain ``Content-Length`` upload larger than ``--max-upload-mb``,
declared honestly, for comparison.

    python benchmarks/serve_bypass.py --checkpoint best.pt --mb 400

Run it against another checkout with ``PYTHONPATH=OTHER/src`` to compare versions.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

from report import write_report
from serve_load import start

CHUNK = 1 << 20


def rss_mib(pid: int, key: str = "VmRSS:") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def lying_upload(base: str, mb: int) -> dict:
    """Send the Content-Length + chunked request; bytes sent, seconds, the status line."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=120)
    head = (b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = f"{CHUNK:x}\r\n".encode() + b"x" * CHUNK + b"\r\n"
    sent, began = 0, time.perf_counter()
    try:
        sock.sendall(head)
        for _ in range(mb):
            sock.sendall(chunk)
            sent += CHUNK
        sock.sendall(b"0\r\n\r\n")
    except OSError:  # the server closed the connection: what it would not read
        pass
    try:
        answer = sock.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
    except OSError as exc:
        answer = f"no answer ({exc.__class__.__name__})"
    sock.close()
    return {"sent_mib": sent / CHUNK, "seconds": time.perf_counter() - began,
            "answer": answer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--mb", type=int, default=400, help="MiB of chunks to offer")
    parser.add_argument("--json", type=Path,  # benchmarks/out/, wherever it is run from
                        default=Path(__file__).resolve().parent / "out" / "serve_bypass.json")
    args = parser.parse_args()
    server, base = start(["--checkpoint", args.checkpoint], [])
    peak = [0.0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(server.pid))
            time.sleep(0.02)
    try:
        idle = rss_mib(server.pid)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        row = lying_upload(base, args.mb)
        time.sleep(1.0)  # the server's memory after it answered
        done.set()
        watcher.join()
        row.update(idle_rss_mib=idle, peak_rss_mib=peak[0], rss_after_mib=rss_mib(server.pid))
    finally:
        server.terminate()
        server.wait(timeout=120)
    print(f"Content-Length: 10 + chunked, {args.mb} MiB offered: the server took "
          f"{row['sent_mib']:.0f} MiB in {row['seconds']:.1f} s and answered "
          f"{row['answer']!r}; RSS idle {row['idle_rss_mib']:.0f} MiB, peak "
          f"{row['peak_rss_mib']:.0f} MiB (+{row['peak_rss_mib'] - row['idle_rss_mib']:.0f})")
    write_report(args.json, rows=[row])


if __name__ == "__main__":
    main()
