"""Training-step speed at the demo's size: memory layout x loss, measured in one run.

FCN-8s / ResNet-18, batch 8 of 96 x 96 crops, 5 classes, fused AdamW, fp32 on the CPU. Each
configuration runs warm-up steps, then the best of ``--rounds`` timings of ``--steps`` steps;
configurations alternate round by round, so that a busy host slows them alike::

    python benchmarks/demo_step.py --json benchmarks/out/demo_step.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fcnseg.allocator import keep_freed_memory
from fcnseg.models import build_model
from fcnseg.training.losses import build_loss

CONFIGS = [  # (layout, loss, boundary weight)
    ("channels_last", "ce", 0.0),
    ("NCHW", "ce", 0.0),
    ("NCHW", "ce+lovasz", 0.0),
    ("NCHW", "ce+lovasz", 4.0),
]


def _stepper(layout: str, loss: str, boundary_weight: float, batch: int, size: int):
    torch.manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = build_model("fcn8s", num_classes=5, backbone="resnet18").to(memory_format=fmt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    loss_fn = build_loss(loss, boundary_weight=boundary_weight)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    masks = torch.zeros(batch, size, size, dtype=torch.long)
    masks[:, size // 4: size // 2, size // 4: size // 2] = 1  # some boundaries to weight

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images)["out"], masks).backward()
        optimizer.step()
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    keep_freed_memory()  # as the fcnseg command line does
    steppers = [_stepper(*c, args.batch_size, args.size) for c in CONFIGS]
    for step in steppers:
        for _ in range(3):
            step()
    best = [float("inf")] * len(CONFIGS)
    for _ in range(args.rounds):
        for i, step in enumerate(steppers):
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            best[i] = min(best[i], (time.perf_counter() - start) / args.steps)
    rows = []
    print(f"{'layout':<14} {'loss':<10} {'boundary w':>10} {'ms/step':>8} {'img/s':>7} "
          f"{'vs first':>8}")
    for (layout, loss, bw), seconds in zip(CONFIGS, best, strict=True):
        rows.append({"layout": layout, "loss": loss, "boundary_weight": bw,
                     "ms_per_step": round(seconds * 1000, 1),
                     "images_per_s": round(args.batch_size / seconds, 1),
                     "speedup_vs_first": round(best[0] / seconds, 3)})
        r = rows[-1]
        print(f"{layout:<14} {loss:<10} {bw:>10g} {r['ms_per_step']:>8} {r['images_per_s']:>7} "
              f"{r['speedup_vs_first']:>8}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "threads": torch.get_num_threads(), "rows": rows},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
