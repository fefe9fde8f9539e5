"""What a deployed model costs: the install's size, ``fcnseg serve``'s start-up and memory.

For each environment given as ``NAME=VENV`` (a virtual environment with fcnseg installed),
serves ``--model`` there on a free 127.0.0.1 port and reports: the environment's size on
disk, seconds from start to ``/ready`` (median of ``--starts``), resident memory when ready
and the peak after ``--requests`` uploads of CamVid val images (360 x 480 PNGs).

    python benchmarks/deploy_footprint.py --model lite0.onnx \\
        --env deploy=/tmp/deploy-venv --env training=.venv

``--make-model lite0.onnx`` first writes an FCN-8s on ImageNet EfficientNet-Lite0 with
CamVid's 11 classes (an untrained head: time and memory do not depend on the weights) and
exports it with ``fcnseg export``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

from report import write_report
from serve_load import free_port, peak_rss_mib, post

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


def make_model(out: Path) -> Path:
    """An FCN-8s on ImageNet Lite0 with CamVid's classes, exported to ``out``."""
    from fcnseg import build_model
    from fcnseg.checkpoint import model_entries, save_checkpoint
    from fcnseg.cli import main
    from fcnseg.data.camvid import camvid_meta
    from fcnseg.models.backbones import normalization

    args = {"name": "fcn8s", "num_classes": 11, "backbone": "efficientnet_lite0"}
    mean, std = normalization("efficientnet_lite0")
    meta = camvid_meta()
    meta.mean, meta.std = mean, std
    model = build_model(**args, pretrained=True)
    ckpt = save_checkpoint(out.with_suffix(".pt"), model_entries(model, meta, args))
    if main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) != 0:
        raise SystemExit("export failed")
    return out


def disk_mib(folder: Path) -> float:
    out = subprocess.run(["du", "-sk", str(folder)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0]) / 1024


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve_once(venv: Path, model: Path, bodies: list[bytes]) -> dict:
    """Start ``fcnseg serve`` from ``venv``; seconds to ready, RSS ready and after load."""
    port = free_port()
    began = time.perf_counter()
    proc = subprocess.Popen([str(venv / "bin" / "fcnseg"), "serve", "--checkpoint", str(model),
                             "--port", str(port)], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"fcnseg serve from {venv} exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(base + "/ready", timeout=2):
                    break
            except OSError:
                time.sleep(0.05)
        ready = time.perf_counter() - began
        rss_ready = rss_mib(proc.pid)
        codes = [post(base + "/v1/segment", body)[0] for body in bodies]
        return {"start_s": ready, "rss_ready_mib": rss_ready,
                "peak_rss_mib": peak_rss_mib(proc.pid), "ok": codes.count(200)}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an exported .onnx")
    parser.add_argument("--make-model", action="store_true",
                        help="first write --model (FCN-8s, Lite0, CamVid's classes)")
    parser.add_argument("--env", action="append", required=True, metavar="NAME=VENV")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/deploy_footprint.json"))
    args = parser.parse_args()
    if args.make_model:
        make_model(args.model)
    bodies = [p.read_bytes() for p in sorted((CAMVID / "val").glob("*.png"))[:args.requests]]
    results = {}
    for spec in args.env:
        name, venv = spec.split("=", 1)
        runs = [serve_once(Path(venv), args.model, bodies) for _ in range(args.starts)]
        results[name] = {"venv_mib": disk_mib(Path(venv)),
                         "start_s": statistics.median(r["start_s"] for r in runs),
                         "rss_ready_mib": statistics.median(r["rss_ready_mib"] for r in runs),
                         "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
                         "requests_ok": runs[-1]["ok"], "requests": len(bodies)}
        r = results[name]
        print(f"{name}: {r['venv_mib']:.0f} MiB on disk, ready in {r['start_s']:.2f} s, "
              f"RSS {r['rss_ready_mib']:.0f} MiB ready, peak {r['peak_rss_mib']:.0f} MiB "
              f"after {r['requests_ok']}/{len(bodies)} requests")
    write_report(args.json, model=str(args.model), results=results)


if __name__ == "__main__":
    main()
