"""``fcnseg demo``: the whole pipeline offline in a few minutes on a CPU.

Generates the synthetic ``shapes`` data set, trains an FCN-8s (ResNet-18, from scratch)
on it, evaluates the model on whole validation images and draws the chapter's figures.
Everything lands in ``--out``: ``metrics.json``, ``curves.png``, ``predictions.png`` and
the run folder with its checkpoints (which ``fcnseg predict`` / ``evaluate`` accept).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

# The demo's recipe, each choice measured (benchmarks/RESULTS.md, "The demo" and the recipe
# searches): 1024 images of 128 px, 96 px crops (more steps per minute than whole images);
# AdamW 2e-2 + poly; no scale jitter (it slowed learning in a short budget); cross entropy +
# Lovasz-softmax with boundary pixels weighted 5x, because from scratch most errors lie on
# the shapes' outlines; 10 epochs (the fewest that reach 0.90); NCHW, as fast as
# channels-last at 96 px. No ImageNet weights: the demo must work offline.
DEMO_SETTINGS: dict[str, Any] = {
    "dataset": "shapes", "model": "fcn8s", "backbone": "resnet18", "pretrained": False,
    "optimizer": "adamw", "lr": 2e-2, "weight_decay": 0.05, "schedule": "poly",
    "warmup_iters": 30, "batch_size": 8, "epochs": 10, "scale": [1.0, 1.0],
    "flip": True, "workers": 0, "val_every": 5, "loss": "ce+lovasz", "boundary_weight": 4.0,
    "channels_last": False,
}
DEMO_DATA = {"size": 1024, "image_size": 128}
# How the demo predicts: each image averaged with its mirror image (+0.007-0.018 mIoU in the
# search, for a few seconds of the run); `fcnseg evaluate/predict --flip` do the same.
DEMO_INFERENCE = {"flip": True}


def add_parser(subparsers: Any, help_text: str) -> None:
    p = subparsers.add_parser("demo", help=help_text, description=help_text)
    p.add_argument("--out", default="fcnseg-demo", metavar="DIR",
                   help="output folder (default: fcnseg-demo)")
    p.add_argument("--epochs", type=int, default=DEMO_SETTINGS["epochs"])
    p.add_argument("--size", type=int, default=DEMO_DATA["size"],
                   help="number of synthetic training images (validation: a quarter, "
                        "at most 128)")
    p.add_argument("--image-size", type=int, default=DEMO_DATA["image_size"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import build_dataset
    from ..device import resolve_precision
    from ..engine.config import resolve_config
    from ..engine.evaluate import evaluate
    from ..engine.train import fit
    from ..fileio import ensure_writable_dir
    from ..inference import Predictor
    from ..viz import prediction_grid

    start = time.perf_counter()
    out = ensure_writable_dir(args.out)
    data_dir, run_dir = out / "data", out / "run"
    data_options = {"size": args.size, "image_size": args.image_size, "seed": args.seed,
                    "val_size": max(4, min(128, args.size // 4))}

    print(f"[1/4] synthetic data: {args.size} training images of {args.image_size} px "
          f"in {data_dir}")
    val = build_dataset("shapes", data_dir, "val", **data_options)

    print(f"[2/4] training FCN-8s (ResNet-18, from scratch) for {args.epochs} epochs")
    crop = [max(32, args.image_size * 3 // 4 // 32 * 32)] * 2  # 3/4 size, a multiple of 32
    config = resolve_config({**DEMO_SETTINGS, "epochs": args.epochs, "crop": crop,
                             "seed": args.seed, "device": args.device,
                             "data_dir": str(data_dir), "data_options": data_options,
                             "out": str(run_dir)})
    result = fit(config, overwrite=True)  # the demo's own folder: each demo replaces it
    model = result["model"].eval()

    dtype, _ = resolve_precision(next(model.parameters()).device, config.precision)
    predictor = Predictor.from_model(model, val.meta, dtype, **DEMO_INFERENCE)
    # fit() validated the last epoch on the same whole images in a single pass: keep that,
    # and score the demo's prediction mode, which averages each image with its mirror.
    batch = config.batch_size  # the validation images all have one size: batch them
    single = result["val_metrics"] or evaluate(predictor.with_options(flip=False), val,
                                                batch_size=batch).compute()
    print(f"[3/4] evaluating on {len(val)} whole validation images, each averaged with its "
          "mirror image (test-time flip)")
    metrics = evaluate(predictor, val, batch_size=batch).compute()
    names = val.meta.class_names
    summary = {
        "miou": float(metrics["miou"]),
        "pixel_accuracy": float(metrics["pixel_accuracy"]),
        "mean_accuracy": float(metrics["mean_accuracy"]),
        "fwiou": float(metrics["fwiou"]),
        "per_class_iou": {n: _float_or_none(v) for n, v in zip(names, metrics["per_class_iou"],
                                                                strict=True)},
        "test_time_augmentation": "horizontal flip (fcnseg evaluate --flip)",
        "single_pass": {"miou": float(single["miou"]),
                        "pixel_accuracy": float(single["pixel_accuracy"])},
        "epochs": args.epochs, "train_images": args.size, "val_images": len(val),
        "seconds": round(time.perf_counter() - start, 1),
        "checkpoint": str(run_dir / "last.pt"),
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")

    print("[4/4] drawing predictions")
    count = min(6, len(val))
    images, truths = zip(*(val.read_raw(i) for i in range(count)), strict=True)
    preds = [p.argmax(0).numpy() for p in predictor.predict_many(images)]
    prediction_grid(list(images), preds, list(truths), meta=val.meta,
                    path=out / "predictions.png")
    (out / "curves.png").write_bytes((run_dir / "curves.png").read_bytes())

    print(f"\nvalidation mIoU {summary['miou']:.3f} with test-time flip "
          f"({single['miou']:.3f} in a single pass), pixel accuracy "
          f"{summary['pixel_accuracy']:.3f} ({summary['seconds']:.0f} s in all)")
    print(f"outputs in {out}/: metrics.json, curves.png, predictions.png, run/last.pt")
    print(f"next: fcnseg predict --checkpoint {run_dir / 'last.pt'} IMAGE... --out DIR")
    return 0


def _float_or_none(value: float) -> float | None:
    return None if value != value else float(value)  # NaN (class absent) -> null
