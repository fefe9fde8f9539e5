"""One run of the demo recipe search: the demo's settings with some of them changed.

Trains FCN-8s / ResNet-18 from scratch on a ``shapes`` variant and prints, as JSON, the
whole-image validation mIoU (also with flip test-time augmentation), per-class IoU and the
loss / mIoU history. The demo's recipe search ran pairs of these side by side, one core
each. Flags default to the demo's current recipe; a cross-entropy baseline and the recipe,
for example::

    OMP_NUM_THREADS=1 python benchmarks/demo_recipe.py --epochs 8 --loss ce \\
        --boundary-weight 0 --weight-decay 1e-4
    OMP_NUM_THREADS=1 python benchmarks/demo_recipe.py --epochs 8

``--radius`` / ``--shapes-per-image`` patch the generator's constants, so each variant gets
its own data folder (``benchmarks/out/demo_recipe/data-...``); ``--fixed-upsample`` and
``--beta2`` patch the model and the optimizer, which the config does not expose.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

import fcnseg.data.shapes as shapes
import fcnseg.models as models
import fcnseg.models.backbones as backbones
import fcnseg.training.train as train_module
from fcnseg.allocator import keep_freed_memory
from fcnseg.data import build_dataset
from fcnseg.demo import DEMO_SETTINGS
from fcnseg.inference import Predictor
from fcnseg.inference.evaluate import evaluate
from fcnseg.training.config import CHOICES, resolve_config
from fcnseg.training.train import fit

DEMO = resolve_config(DEMO_SETTINGS)  # the demo's recipe: its differences on fcnseg's
OUT = Path(__file__).resolve().parent / "out" / "demo_recipe"


def _patch(args: argparse.Namespace) -> None:
    """Apply the changes that have no config setting (model and optimizer internals)."""
    if args.fixed_upsample:
        build_model = models.build_model
        models.build_model = lambda *a, **kw: build_model(*a, **kw, learnable_upsample=False)
    if args.widths:
        widths = tuple(args.widths)
        args.backbone = "tiny-" + "-".join(map(str, widths))
        channels = {"s8": widths[1], "s16": widths[2], "s32": widths[3]}
        backbones.BACKBONES[args.backbone] = backbones.BackboneSpec(
            functools.partial(backbones.tiny_resnet, widths=widths), None, channels)
        CHOICES["backbone"] += (args.backbone,)
    if args.beta2 is not None:
        build_optimizer = train_module.build_optimizer

        def with_beta2(model: torch.nn.Module, config: object) -> torch.optim.Optimizer:
            optimizer = build_optimizer(model, config)
            for group in optimizer.param_groups:
                group["betas"] = (group["betas"][0], args.beta2)
            return optimizer
        train_module.build_optimizer = with_beta2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", default="", help="run folder name (default: from the flags)")
    p.add_argument("--lr", type=float, default=DEMO.lr)
    p.add_argument("--epochs", type=int, default=DEMO.epochs)
    p.add_argument("--batch-size", type=int, default=DEMO.batch_size)
    p.add_argument("--optimizer", default=DEMO.optimizer)
    p.add_argument("--weight-decay", type=float, default=DEMO.weight_decay)
    p.add_argument("--loss", default=DEMO.loss)
    p.add_argument("--boundary-weight", type=float, default=DEMO.boundary_weight)
    p.add_argument("--beta2", type=float, help="AdamW's beta2 (default: torch's 0.999)")
    p.add_argument("--fixed-upsample", action="store_true",
                   help="freeze the bilinear transposed convolutions")
    p.add_argument("--backbone", default=DEMO.backbone)
    p.add_argument("--widths", type=int, nargs=4,
                   help="a one-block-per-stage ResNet of these widths as the backbone "
                        "(registered as 'tiny-W1-W2-W3-W4')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default=DEMO.precision,
                   help="fp32 to time an AVX2 CPU's path on a bf16 CPU (with "
                        "ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2)")
    p.add_argument("--size", type=int, default=1024, help="training images")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--radius", type=float, nargs=2, default=shapes.RADIUS)
    p.add_argument("--shapes-per-image", type=int, nargs=2, default=shapes.SHAPES_PER_IMAGE)
    args = p.parse_args()
    keep_freed_memory()  # as the fcnseg command line does
    _patch(args)

    shapes.RADIUS, shapes.SHAPES_PER_IMAGE = tuple(args.radius), tuple(args.shapes_per_image)
    variant = (f"r{args.radius[0]:g}-{args.radius[1]:g}_n{args.shapes_per_image[0]}-"
               f"{args.shapes_per_image[1]}_{args.size}x{args.image_size}")
    name = args.name or (f"{variant}_{args.backbone}_c{args.crop}_lr{args.lr:g}_e{args.epochs}_"
                         f"b{args.batch_size}_{args.loss}_bw{args.boundary_weight:g}_wd{args.weight_decay:g}")
    data_options = {"size": args.size, "image_size": args.image_size, "seed": 0, "val_size": 128}
    config = resolve_config({
        **DEMO_SETTINGS, "lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size,
        "optimizer": args.optimizer, "weight_decay": args.weight_decay, "loss": args.loss,
        "backbone": args.backbone,
        "boundary_weight": args.boundary_weight, "seed": args.seed,
        "precision": args.precision,
        "crop": [args.crop] * 2, "val_every": max(1, args.epochs // 2),
        "data_dir": str(OUT / f"data-{variant}"), "data_options": data_options,
        "out": str(OUT / f"run-{name}"),
    })
    start = time.perf_counter()
    result = fit(config, overwrite=True)  # a re-run of a variant replaces its run folder
    seconds = time.perf_counter() - start
    metrics = result.val_metrics
    # Only the validation split: rebuilding the training set would decode its images again.
    val = build_dataset("shapes", config.data_dir, "val", **data_options)
    flipped = evaluate(Predictor.from_model(result.model.eval(), val.meta, flip=True), val,
                       progress=False).compute()
    history = [[row["epoch"], round(row["train_loss"], 4), round(row.get("val_miou", -1), 4)]
               for row in result.history]
    print(json.dumps({"name": name, "args": vars(args), "miou": round(metrics["miou"], 4),
                      "miou_flip_tta": round(flipped["miou"], 4),
                      "per_class_iou": [round(v, 3) for v in metrics["per_class_iou"]],
                      "history [epoch, train loss, val mIoU]": history,
                      "seconds": round(seconds)}))


if __name__ == "__main__":
    main()
