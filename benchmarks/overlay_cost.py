"""What writing the outputs costs ``fcnseg predict``: model-only against the command with
JPEG overlays, PNG overlays and no overlay, one exported model, alternating rounds.

    python benchmarks/overlay_cost.py --model benchmarks/out/inference/int8.onnx \\
        --data-dir data/CamVid --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fcnseg import Predictor
from fcnseg.data.io import read_image
from fcnseg.inference.runtimes import cpu_threads
from report import write_report

WAYS = {"jpg": ["--overlay-format", "jpg"], "png": ["--overlay-format", "png"],
        "none": ["--no-overlay"]}


def model_only(model: str, images: list) -> float:
    """Images/s of class ids on decoded images, ``cpu_threads()`` streams in flight."""
    predictor = Predictor.from_file(model, streams=cpu_threads())
    with ThreadPoolExecutor(predictor.streams) as pool:
        start = time.perf_counter()
        list(pool.map(lambda image: predictor.predict_labels([image]), images))
        return len(images) / (time.perf_counter() - start)


def command(model: str, folder: str, extra: list[str]) -> float:
    """Images/s that ``fcnseg predict`` reports on ``folder``."""
    done = subprocess.run([sys.executable, "-m", "fcnseg", "predict", "--checkpoint", model,
                           folder, "--out", tempfile.mkdtemp(), "--no-progress", *extra],
                          capture_output=True, text=True, check=True)
    return float(done.stderr.strip().rsplit("(", 1)[1].split(" img/s")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", required=True, help="the CamVid folder")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/overlay_cost.json"))
    args = parser.parse_args()
    folder = str(Path(args.data_dir) / "val")
    images = [read_image(p) for p in sorted(Path(folder).glob("*.png"))]
    runs: dict[str, list[float]] = {"model-only": [], **{k: [] for k in WAYS}}
    for _ in range(args.rounds):
        runs["model-only"].append(model_only(args.model, images))
        for way, extra in WAYS.items():
            runs[way].append(command(args.model, folder, extra))
    rows = {k: statistics.median(v) for k, v in runs.items()}
    for k, v in rows.items():
        print(f"{k:10s} {v:6.2f} img/s  {v / rows['model-only']:.0%} of model-only")
    write_report(args.json, images_per_s=rows, rounds=runs)


if __name__ == "__main__":
    main()
