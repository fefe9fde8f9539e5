"""One run of the demo recipe search: the demo's settings with some of them changed.

Trains FCN-8s / ResNet-18 from scratch on a ``shapes`` variant and prints the final whole-image
validation mIoU as JSON. The search in benchmarks/RESULTS.md ran pairs of these side by side,
one core each, e.g. (r1, then a2 on generator v2's 16-30 px shapes)::

    OMP_NUM_THREADS=1 python benchmarks/demo_recipe.py --lr 0.02 --epochs 10
    OMP_NUM_THREADS=1 python benchmarks/demo_recipe.py --lr 0.02 --radius 16 30

``--radius`` / ``--shapes-per-image`` patch the generator's constants, so each variant gets
its own data folder (``benchmarks/out/demo_recipe/data-...``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import fcnseg.data.shapes as shapes
from fcnseg.commands.demo import DEMO_SETTINGS
from fcnseg.engine.config import resolve_config
from fcnseg.engine.train import fit

OUT = Path(__file__).resolve().parent / "out" / "demo_recipe"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=DEMO_SETTINGS["lr"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=DEMO_SETTINGS["batch_size"])
    p.add_argument("--optimizer", default=DEMO_SETTINGS["optimizer"])
    p.add_argument("--size", type=int, default=1024, help="training images")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--radius", type=float, nargs=2, default=shapes.RADIUS)
    p.add_argument("--shapes-per-image", type=int, nargs=2, default=shapes.SHAPES_PER_IMAGE)
    args = p.parse_args()

    shapes.RADIUS, shapes.SHAPES_PER_IMAGE = tuple(args.radius), tuple(args.shapes_per_image)
    variant = (f"r{args.radius[0]:g}-{args.radius[1]:g}_n{args.shapes_per_image[0]}-"
               f"{args.shapes_per_image[1]}_{args.size}x{args.image_size}")
    data_options = {"size": args.size, "image_size": args.image_size, "seed": 0, "val_size": 128}
    config = resolve_config({
        **DEMO_SETTINGS, "lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size,
        "optimizer": args.optimizer, "crop": [args.crop] * 2, "val_every": args.epochs,
        "data_dir": str(OUT / f"data-{variant}"), "data_options": data_options,
        "out": str(OUT / f"run-{variant}_lr{args.lr:g}_e{args.epochs}_b{args.batch_size}"),
    })
    start = time.perf_counter()
    metrics = fit(config)["val_metrics"]
    print(json.dumps({"variant": variant, "lr": args.lr, "epochs": args.epochs,
                      "batch_size": args.batch_size, "miou": round(metrics["miou"], 4),
                      "per_class_iou": [round(v, 3) for v in metrics["per_class_iou"]],
                      "seconds": round(time.perf_counter() - start)}))


if __name__ == "__main__":
    main()
