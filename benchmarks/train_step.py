"""Training steps of fcnseg's recipe against another version of it, interleaved in one process.

A step of the recipe: FCN-8s / Lite0 (random weights: speed only), channels-last, fp32,
8 crops of 256 x 320 with 11 classes, cross entropy + Lovász-softmax with boundary weights,
fused AdamW. Each variant freezes the backbone up to a stride and takes its loss from this
checkout or from another checkout's ``training/losses.py``; ``+dw`` after the stride also
keeps the depthwise filters fixed (``--freeze-depthwise``). The variants' steps alternate,
so a host whose speed drifts (a shared one) slows them alike; medians over ``--steps``::

    python benchmarks/train_step.py \\
        --variant before:0:<checkout of the version before>/src/fcnseg/training/losses.py \\
        --variant now:4 --variant now-dw:4+dw

Run it with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` to time an AVX2 CPU's path
on a CPU with AVX-512.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fcnseg.allocator import keep_freed_memory
from fcnseg.models import build_model
from fcnseg.training import losses
from report import write_report

CL = torch.channels_last


def _losses_module(path: str | None) -> object:
    """This checkout's losses, or another checkout's ``losses.py`` loaded as a sibling module
    (its relative imports resolve to this checkout's ``fcnseg``)."""
    if path is None:
        return losses
    spec = importlib.util.spec_from_file_location("fcnseg.training._other_losses", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _step(freeze: str, losses_path: str | None) -> Callable[[], None]:
    model = build_model("fcn8s", 11, backbone="efficientnet_lite0").to(memory_format=CL)
    stride, depthwise = int(freeze.removesuffix("+dw")), freeze.endswith("+dw")
    if stride or depthwise:
        model.freeze_backbone(stride, depthwise)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=1e-4, fused=True)
    loss_fn = _losses_module(losses_path).build_loss("ce+lovasz", boundary_weight=4.0)
    x = torch.rand(8, 3, 256, 320).contiguous(memory_format=CL)
    y = torch.randint(0, 11, (8, 256 // 16, 320 // 16)).repeat_interleave(16, 1) \
        .repeat_interleave(16, 2)  # 16 x 16 blocks: label boundaries to weight
    y[:, :25] = 255  # a band of ignored pixels, as CamVid's void

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x)["out"], y).backward()
        optimizer.step()
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", action="append", required=True,
                   help="NAME:FREEZE_STRIDE[+dw][:PATH to another checkout's losses.py]")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "out/train_step.json")
    args = p.parse_args()
    keep_freed_memory()  # as the fcnseg command line does
    torch.manual_seed(0)
    variants = {}
    for spec in args.variant:
        name, freeze, *path = spec.split(":", 2)
        variants[name] = _step(freeze, path[0] if path else None)
    for step in variants.values():  # warm-up: oneDNN picks its kernels
        step(), step()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.steps):
        for name, step in variants.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
    first = next(iter(variants))
    rows = []
    for name, times in seconds.items():
        median = statistics.median(times)
        rows.append({"variant": name, "median_s": median, "images_per_s": 8 / median,
                     "speedup_over_" + first: statistics.median(seconds[first]) / median})
        print(f"{name:<12} {median * 1000:7.1f} ms a step  {8 / median:6.2f} img/s  "
              f"{rows[-1]['speedup_over_' + first]:.2f}x {first}")
    write_report(args.json, variants=args.variant, steps=args.steps, rows=rows)


if __name__ == "__main__":
    main()
