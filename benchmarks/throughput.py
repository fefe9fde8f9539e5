"""Training and whole-image inference throughput: the D2L chapter's recipe against fcnseg.

The chapter's network is rebuilt here exactly as the book writes it (ResNet-18 without its
pooling and fc layers, a 1x1 conv, ``ConvTranspose2d(C, C, 64, padding=16, stride=32)``) and
run as the book runs it: fp32, NCHW. fcnseg runs its default recipe (FCN-8s on
EfficientNet-Lite0, channels-last,
the precision ``resolve_precision("auto")`` picks for this machine), with freed memory kept
for reuse as the ``fcnseg`` command does (:mod:`fcnseg.allocator`); ``fcnseg-glibc`` is the
same without that, to measure it. Every configuration runs
in its own subprocess (so its peak RSS is its own), and the configurations alternate over
several rounds so that a noisy, shared machine slows them alike; medians are reported.

    python benchmarks/throughput.py --json benchmarks/out/throughput.json
    python benchmarks/throughput.py --configs fcnseg-glibc fcnseg --rounds 4   # the allocator
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from report import write_report

NUM_CLASSES = 21  # VOC, as in the chapter
CONFIGS = ("d2l", "fcnseg", "fcnseg-glibc", "fcnseg-bf16")  # the first one listed is the base
SIZE = (320, 480)


def chapter_model() -> nn.Module:
    """The D2L chapter's FCN, line for line (random init: no ImageNet weights offline)."""
    from fcnseg import bilinear_kernel

    pretrained_net = torchvision.models.resnet18()
    net = nn.Sequential(*list(pretrained_net.children())[:-2])
    net.add_module("final_conv", nn.Conv2d(512, NUM_CLASSES, kernel_size=1))
    net.add_module("transpose_conv", nn.ConvTranspose2d(
        NUM_CLASSES, NUM_CLASSES, kernel_size=64, padding=16, stride=32))
    net.transpose_conv.weight.data.copy_(bilinear_kernel(NUM_CLASSES, NUM_CLASSES, 64))
    return net


def build(config: str) -> tuple[nn.Module, torch.dtype, bool]:
    """(model, autocast dtype, channels_last) for a configuration name."""
    from fcnseg import build_model
    from fcnseg.device import resolve_precision
    from fcnseg.training.config import resolve_config

    if config == "d2l":
        return chapter_model(), torch.float32, False
    recipe = resolve_config()  # fcnseg's recipe: its model, backbone and precision
    model = build_model(recipe.model, NUM_CLASSES, backbone=recipe.backbone)
    if config in ("fcnseg", "fcnseg-glibc"):
        dtype, _ = resolve_precision(torch.device("cpu"), recipe.precision)
    else:  # "fcnseg-bf16": bf16 forced, to show what it does on this CPU
        dtype = torch.bfloat16
    return model, dtype, recipe.channels_last


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out["out"] if isinstance(out, dict) else out


def measure(config: str, mode: str, batch: int, steps: int) -> dict:
    """Images per second of one configuration (runs in a worker subprocess)."""
    from fcnseg.allocator import keep_freed_memory
    from fcnseg.device import autocast

    if config not in ("d2l", "fcnseg-glibc"):  # what the fcnseg command line does
        keep_freed_memory()
    torch.manual_seed(0)
    model, dtype, channels_last = build(config)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x = torch.randn(batch, 3, *SIZE).contiguous(memory_format=memory_format)
    y = torch.randint(0, NUM_CLASSES, (batch, *SIZE))
    device = torch.device("cpu")
    if mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)

        def step() -> None:
            with autocast(device, dtype):
                logits = logits_of(model, x)
            loss = F.cross_entropy(logits.float(), y, ignore_index=255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        model.eval()
        if config != "d2l":  # what fcnseg evaluate / predict run: BatchNorm folded
            from fcnseg.models import fold_batchnorm

            model = fold_batchnorm(model).to(memory_format=memory_format)

        def step() -> None:
            with torch.inference_mode(), autocast(device, dtype):
                logits_of(model, x).argmax(1)

    step()  # warm-up: oneDNN primitive creation, allocator
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    return {
        "config": config, "mode": mode, "dtype": str(dtype).replace("torch.", ""),
        "channels_last": channels_last, "images_per_s": batch * steps / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def flops_per_image(config: str, mode: str) -> float:
    """FLOPs of one 320x480 image (forward, or forward + backward for training)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, _, _ = build(config)
    x = torch.randn(1, 3, *SIZE)
    counter = FlopCounterMode(display=False)
    with counter:
        if mode == "train":
            logits_of(model, x).sum().backward()
        else:
            with torch.no_grad():
                logits_of(model, x)
    return float(counter.get_total_flops())


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """Measured matrix-multiply GFLOP/s of this CPU for ``dtype``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def run_worker(config: str, mode: str, batch: int, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", config, "--mode", mode,
           "--batch", str(batch), "--steps", str(steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/throughput.json"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round, batch 2, 1 step")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS,
                        help="default: all; the first is the base of the speed-up column")
    parser.add_argument("--modes", nargs="+", choices=("train", "infer"),
                        default=["train", "infer"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="train", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.mode, args.batch, args.steps)))
        return
    if args.quick:
        args.rounds, args.batch, args.steps = 1, 2, 1

    from fcnseg.device import cpu_has_fast_bf16, resolve_precision

    configs = args.configs or [c for c in CONFIGS if c != "fcnseg-bf16"
                               or resolve_precision(torch.device("cpu"))[0] != torch.bfloat16]
    # (fcnseg-bf16 shows why auto did not pick bf16 here; where auto picks it, it is fcnseg.)
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for mode in args.modes:
            for config in configs:
                result = run_worker(config, mode, args.batch, args.steps)
                runs.setdefault((config, mode), []).append(result)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}

    rows = []
    for (config, mode), results in runs.items():
        ips = statistics.median(r["images_per_s"] for r in results)
        flops = flops_per_image(config, "train" if mode == "train" else "infer")
        achieved = flops * ips / 1e9
        rows.append({
            **results[0], "images_per_s": ips, "all_images_per_s": [r["images_per_s"]
                                                                   for r in results],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
            "gflops_per_image": flops / 1e9, "achieved_gflops": achieved,
            "fraction_of_bf16_peak": achieved / peaks["bf16"],
            "fraction_of_fp32_peak": achieved / peaks["fp32"],
        })
    for row in rows:
        base = next(r for r in rows if r["config"] == configs[0] and r["mode"] == row["mode"])
        row[f"speedup_vs_{configs[0]}"] = row["images_per_s"] / base["images_per_s"]

    print(f"{'config':<12} {'mode':<6} {'dtype':<9} {'img/s':>7} {'x ' + configs[0]:>8} "
          f"{'GFLOP/img':>9} {'GFLOP/s':>8} {'%bf16pk':>8} {'%fp32pk':>8} {'RSS MiB':>8}")
    for r in rows:
        print(f"{r['config']:<12} {r['mode']:<6} {r['dtype']:<9} {r['images_per_s']:7.2f} "
              f"{r[f'speedup_vs_{configs[0]}']:8.2f} {r['gflops_per_image']:9.1f} "
              f"{r['achieved_gflops']:8.1f} {100 * r['fraction_of_bf16_peak']:7.0f}% "
              f"{100 * r['fraction_of_fp32_peak']:7.0f}% {r['peak_rss_mib']:8.0f}")
    print(f"matmul peak GFLOP/s: fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f}; "
          f"fast bf16 (AMX/AVX512-BF16): {cpu_has_fast_bf16()}")
    write_report(
        args.json,
        machine={"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                 "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "fast_bf16": cpu_has_fast_bf16()},
        size=list(SIZE), batch=args.batch, steps=args.steps, rounds=args.rounds,
        matmul_peak_gflops=peaks, rows=rows,
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
