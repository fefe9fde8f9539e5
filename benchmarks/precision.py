"""fp32 against bf16 autocast on this CPU, per body and per pass: is ``--precision auto`` right?

For each backbone, FCN-8s with 11 classes, channels-last, in one process:

* inference: one 360 x 480 image at a time, BatchNorm folded, ``torch.inference_mode``;
* training: a step of 8 crops of 256 x 320 (cross entropy + Lovász-softmax with boundary
  weights, fused AdamW), the backbone frozen up to ``--freeze-stride`` and its depthwise
  filters fixed (the recipe's settings) as ``fcnseg train`` freezes a pretrained body.

fp32 and bf16 alternate over ``--rounds``; the best round of each is kept. Random weights:
speed only. Run it with ``PYTHONPATH=<another checkout>/src`` to time another version::

    python benchmarks/precision.py --json benchmarks/out/precision.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fcnseg.allocator import keep_freed_memory
from fcnseg.device import cpu_has_fast_bf16
from fcnseg.models import build_model, fold_batchnorm
from fcnseg.training.config import TrainConfig
from fcnseg.training.losses import build_loss
from report import write_report

CL = torch.channels_last


def _inference(backbone: str) -> tuple[Callable[[bool], None], int]:
    model = fold_batchnorm(build_model("fcn8s", 11, backbone=backbone)).to(memory_format=CL)
    x = torch.rand(1, 3, 360, 480).contiguous(memory_format=CL)

    def run(bf16: bool) -> None:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            model(x)
    return run, 1


def _training(backbone: str, freeze: int) -> tuple[Callable[[bool], None], int]:
    model = build_model("fcn8s", 11, backbone=backbone).to(memory_format=CL)
    if freeze and hasattr(model, "freeze_backbone"):  # versions before it train every layer
        if hasattr(model, "frozen_parameters"):  # versions with --freeze-depthwise
            model.freeze_backbone(freeze, TrainConfig().freeze_depthwise)
        else:
            model.freeze_backbone(freeze)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=1e-4, fused=True)
    loss_fn = build_loss("ce+lovasz", boundary_weight=4.0)
    x = torch.rand(8, 3, 256, 320).contiguous(memory_format=CL)
    y = torch.randint(0, 11, (8, 256 // 16, 320 // 16)).repeat_interleave(16, 1) \
        .repeat_interleave(16, 2)  # 16 x 16 blocks: label boundaries to weight

    def step(bf16: bool) -> None:  # as fcnseg train: autocast around the forward pass
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = model(x)["out"]
        loss_fn(out, y).backward()
        optimizer.step()
    return step, 8


def _images_per_s(run: Callable[[bool], None], images: int, bf16: bool, calls: int) -> float:
    run(bf16)  # warm-up: oneDNN picks and caches its kernels for this precision
    start = time.perf_counter()
    for _ in range(calls):
        run(bf16)
    return images * calls / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet18"])
    p.add_argument("--freeze-stride", type=int, default=TrainConfig().freeze_stride)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "out/precision.json")
    args = p.parse_args()
    keep_freed_memory()  # as the fcnseg command line does
    torch.manual_seed(0)
    rows = []
    for backbone in args.backbones:
        for mode, (run, images), calls in (("inference", _inference(backbone), 10),
                                           ("training", _training(backbone, args.freeze_stride),
                                            3)):
            best = {False: 0.0, True: 0.0}
            for _ in range(args.rounds):
                for bf16 in (False, True):
                    best[bf16] = max(best[bf16], _images_per_s(run, images, bf16, calls))
            rows.append({"backbone": backbone, "mode": mode, "fp32": best[False],
                         "bf16": best[True], "bf16_over_fp32": best[True] / best[False]})
            print(f"{backbone:<20} {mode:<10} fp32 {best[False]:6.2f} img/s  bf16 "
                  f"{best[True]:6.2f} img/s  ({best[True] / best[False]:.2f}x)")
    write_report(args.json, fast_bf16=cpu_has_fast_bf16(), torch=torch.__version__,
                 freeze_stride=args.freeze_stride, rows=rows)
    print(f"fast bf16 units: {cpu_has_fast_bf16()}; wrote {args.json}")


if __name__ == "__main__":
    main()
