"""Data pipeline throughput next to the model's training throughput.

Builds VOC-size (375 x 500) synthetic JPEG images with palette masks in a temporary VOC
layout, then measures images/s for: cold decoding, threaded preloading into the in-memory
cache, the train transform alone (320 x 480 crop, scale 0.5-2, flip) on cached arrays, and a
DataLoader over the cached data set with 0/1/2 workers (batch 4). Next to it: training
images/s of ``build_model("fcn8s", 21)`` at 320 x 480, batch 4, fp32, channels_last.
The pipeline keeps up when its images/s exceed the model's.

    python benchmarks/data_pipeline.py --json out.json      # the record (a few minutes)
    python benchmarks/data_pipeline.py --quick              # sanity check (seconds)
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fcnseg.data import build_dataset, train_transform, voc_colormap
from fcnseg.data.io import write_mask


def make_voc_like(root: Path, n: int, h: int = 375, w: int = 500) -> Path:
    """n JPEG images with smooth content + noise (realistic JPEG sizes) and palette masks."""
    base = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:h, 0:w]
    ids = []
    for i in range(n):
        rng = np.random.default_rng(i)
        img = (np.sin(xx / rng.uniform(5, 40))[..., None] * 60 + rng.uniform(60, 190, 3)
               + rng.normal(0, 12, (h, w, 3)))
        mask = ((xx // rng.integers(40, 120) + yy // rng.integers(40, 120)) % 21).astype(np.int64)
        mask[::50, :] = 255
        name = f"b_{i:05d}"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            base / "JPEGImages" / f"{name}.jpg", quality=90)
        write_mask(base / "SegmentationClass" / f"{name}.png", mask, voc_colormap())
        ids.append(name)
    (base / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    return root


def rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def bench_pipeline(root: Path, epochs: int, workers: list[int]) -> dict:
    out: dict = {}
    ds = build_dataset("voc", root, "train", cache=False)
    t = time.perf_counter()
    for i in range(len(ds)):
        ds.read_raw(i)
    out["decode_cold"] = rate(len(ds), time.perf_counter() - t)

    ds = build_dataset("voc", root, "train")
    t = time.perf_counter()
    ds.preload()
    out["preload_threads"] = rate(len(ds), time.perf_counter() - t)

    ds.transform = train_transform(ds.meta, crop=(320, 480))
    t = time.perf_counter()
    for _ in range(epochs):
        for i in range(len(ds)):
            ds[i]
    out["train_transform_cached"] = rate(epochs * len(ds), time.perf_counter() - t)

    for nw in workers:
        loader = torch.utils.data.DataLoader(
            ds, batch_size=4, shuffle=True, num_workers=nw, drop_last=True,
            persistent_workers=nw > 0,
        )
        seen = 0
        for _ in loader:  # warm-up epoch: starts the workers
            pass
        t = time.perf_counter()
        for _ in range(epochs):
            for x, _y in loader:
                seen += x.shape[0]
        out[f"dataloader_workers_{nw}"] = rate(seen, time.perf_counter() - t)
    return out


def bench_model(steps: int) -> float:
    from fcnseg import build_model

    model = build_model("fcn8s", 21).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(4, 3, 320, 480).to(memory_format=torch.channels_last)
    y = torch.randint(0, 21, (4, 320, 480))
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x)["out"], y).backward()
        opt.step()

    step()  # warm-up (allocations, kernel selection)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return rate(4 * steps, time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64, help="synthetic VOC-size images")
    p.add_argument("--epochs", type=int, default=2, help="timed passes over the images")
    p.add_argument("--steps", type=int, default=5, help="timed model training steps")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="tiny run, a sanity check only")
    p.add_argument("--no-model", action="store_true", help="skip the model measurement")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.steps, args.workers = 8, 1, 1, [0, 1]

    with tempfile.TemporaryDirectory() as tmp:
        root = make_voc_like(Path(tmp), args.images)
        results = bench_pipeline(root, args.epochs, args.workers)
    if not args.no_model:
        results["model_train_fcn8s_320x480_b4_fp32"] = bench_model(args.steps)

    print(f"{'measurement':40s} {'images/s':>10s}")
    for k, v in results.items():
        print(f"{k:40s} {v:10.1f}")
    if args.json:
        record = {
            "benchmark": "data_pipeline", "images": args.images, "epochs": args.epochs,
            "image_size": [375, 500], "crop": [320, 480], "batch_size": 4,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.platform(), "processor": platform.processor(),
            "images_per_s": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
