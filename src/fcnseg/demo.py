"""The demo: the whole pipeline offline in a few minutes on a CPU (``fcnseg demo``).

Generates the synthetic ``shapes`` data set, trains an FCN-8s (ResNet-18, from scratch)
on it, evaluates the model on whole validation images and draws the chapter's figures.
Everything lands in ``out``: ``metrics.json``, ``curves.png``, ``predictions.png`` and
the run folder with its checkpoints (which ``fcnseg predict`` / ``evaluate`` accept).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .data import build_dataset
from .device import resolve_precision
from .fileio import atomic_write, atomic_write_text, ensure_writable_dir
from .inference import Predictor
from .inference.evaluate import evaluate
from .metrics import metrics_report
from .training.config import resolve_config
from .training.train import fit
from .viz import prediction_grid

# The demo's recipe as its differences from fcnseg's (TrainConfig's defaults: FCN-8s, AdamW +
# poly, batch 8, flips, cross entropy + Lovasz-softmax with boundary pixels weighted, which
# matter here too, since from scratch most errors lie on the shapes' outlines). Each choice
# measured (benchmarks/RESULTS.md, "The demo"): ResNet-18 from random weights (faster here
# than fine-tuning ImageNet Lite0, and as accurate), 1024 images of 128 px, 96 px crops
# (more steps per minute than whole images); AdamW 2e-2, no scale jitter (it slowed
# learning in a short budget) and no colour jitter (drawn shapes do not change with the
# light); 10 epochs (the fewest that reach 0.90); NCHW, as fast as channels-last at 96 px.
DEMO_SETTINGS: dict[str, Any] = {
    "dataset": "shapes", "backbone": "resnet18", "pretrained": False, "lr": 2e-2,
    "weight_decay": 0.05, "warmup_iters": 30, "epochs": 10, "scale": [1.0, 1.0],
    "color_jitter": 0.0, "workers": 0, "val_every": 5, "channels_last": False,
}
DEMO_DATA = {"size": 1024, "image_size": 128}
# How the demo predicts: each image averaged with its mirror image (a little more accurate,
# for a few seconds of the run); `fcnseg evaluate/predict --flip` do the same.
DEMO_INFERENCE = {"flip": True}



def run_demo(out: str | Path = "fcnseg-demo", epochs: int = DEMO_SETTINGS["epochs"],
             size: int = DEMO_DATA["size"], image_size: int = DEMO_DATA["image_size"],
             seed: int = 0, device: str = "auto",
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate, train, evaluate and draw; returns the report written to metrics.json."""
    start = time.perf_counter()
    out = ensure_writable_dir(out)
    data_dir, run_dir = out / "data", out / "run"
    data_options = {"size": size, "image_size": image_size, "seed": seed,
                    "val_size": max(4, min(128, size // 4))}

    say(f"[1/4] synthetic data: {size} training images of {image_size} px in {data_dir}")
    val = build_dataset("shapes", data_dir, "val", **data_options)

    say(f"[2/4] training FCN-8s (ResNet-18, from scratch) for {epochs} epochs")
    crop = [max(32, image_size * 3 // 4 // 32 * 32)] * 2  # 3/4 size, a multiple of 32
    config = resolve_config({**DEMO_SETTINGS, "epochs": epochs, "crop": crop, "seed": seed,
                             "device": device, "data_dir": str(data_dir),
                             "data_options": data_options, "out": str(run_dir)})
    result = fit(config, overwrite=True)  # the demo's own folder: each demo replaces it
    model = result.model.eval()

    dtype, _ = resolve_precision(next(model.parameters()).device, config.precision)
    predictor = Predictor.from_model(model, result.meta, dtype, **DEMO_INFERENCE)
    # fit() validated the last epoch on the same whole images in a single pass: keep that,
    # and score the demo's prediction mode, which averages each image with its mirror.
    batch = config.batch_size  # the validation images all have one size: batch them
    single = result.val_metrics or evaluate(predictor.with_options(flip=False), val,
                                            batch_size=batch).compute()
    say(f"[3/4] evaluating on {len(val)} whole validation images, each averaged with its "
        "mirror image (test-time flip)")
    metrics = evaluate(predictor, val, batch_size=batch).compute()
    summary = metrics_report(
        metrics, val.meta.class_names,
        test_time_augmentation="horizontal flip (fcnseg evaluate --flip)",
        single_pass={"miou": float(single["miou"]),
                     "pixel_accuracy": float(single["pixel_accuracy"])},
        epochs=epochs, train_images=size, val_images=len(val),
        seconds=round(time.perf_counter() - start, 1), checkpoint=str(run_dir / "last.pt"))
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")

    say("[4/4] drawing predictions")
    count = min(6, len(val))
    images, truths = zip(*(val.read_raw(i) for i in range(count)), strict=True)
    preds = [p.argmax(0) for p in predictor.predict_many(images)]
    prediction_grid(list(images), preds, list(truths), meta=val.meta,
                    path=out / "predictions.png")
    curves = (run_dir / "curves.png").read_bytes()
    atomic_write(out / "curves.png", lambda f: f.write(curves))
    return summary
