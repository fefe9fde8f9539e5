"""CPU inference: the chapter's way against fcnseg's runtimes, on CamVid val at 360 x 480.

One CamVid checkpoint (fcnseg's recipe: FCN-8s / EfficientNet-Lite0) is exported once to
ONNX fp32 and int8 (a configuration whose file cannot be made is reported, not fatal); then
each configuration runs in its own process (its peak RSS is its own), configurations
alternating over ``--rounds`` so that a noisy shared host slows them alike (medians kept):

* ``d2l``: the chapter's network as the book writes it (ResNet-18 body, 1x1 conv, one
  64 x 64 transposed conv), fp32, eager, NCHW: speed only (random weights, so no mIoU);
* ``torch-fp32`` / ``torch-bf16``: fcnseg's PyTorch path (BatchNorm folded, channels-last);
* ``ort-fp32`` / ``ort-int8``: ONNX Runtime on the exported files;
* ``ov-fp32`` / ``ov-bf16`` / ``ov-int8``: OpenVINO on the same files.

Model-only images/s time the predictor's class ids (``predict_labels``) on decoded images
(decoding excluded) over the val images, one image at a time (``--streams 1``: latency) or
with ``--streams N`` images in flight from N threads (a folder's or a server's throughput);
mIoU is computed from those very predictions. GFLOPs per image (``torch.utils.flop_counter``
at the val size, a multiply-add counted as 2) times images/s gives the GFLOP/s achieved.
``--e2e`` also times ``fcnseg predict`` on the val folder (decode, predict, write mask +
overlay) for the chosen configs.

    python benchmarks/inference.py --checkpoint runs/camvid/best.pt \\
        --data-dir ../shared/data/camvid --json benchmarks/out/inference.json
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
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from report import write_report

CONFIGS = ("d2l", "torch-fp32", "torch-bf16", "ort-fp32", "ort-int8", "ov-fp32", "ov-bf16",
           "ov-int8")
# config -> (model file kind, runtime, precision)
PLAN = {"torch-fp32": ("pt", "torch", "fp32"), "torch-bf16": ("pt", "torch", "bf16"),
        "ort-fp32": ("fp32", "onnxruntime", "auto"), "ort-int8": ("int8", "onnxruntime", "auto"),
        "ov-fp32": ("fp32", "openvino", "fp32"), "ov-bf16": ("fp32", "openvino", "bf16"),
        "ov-int8": ("int8", "openvino", "auto")}


def chapter_model(num_classes: int) -> torch.nn.Module:
    """The D2L chapter's FCN, line for line (random init: speed only)."""
    import torchvision

    from fcnseg import bilinear_kernel

    net = torch.nn.Sequential(*list(torchvision.models.resnet18().children())[:-2])
    net.add_module("final_conv", torch.nn.Conv2d(512, num_classes, kernel_size=1))
    net.add_module("transpose_conv", torch.nn.ConvTranspose2d(
        num_classes, num_classes, kernel_size=64, padding=16, stride=32))
    net.transpose_conv.weight.data.copy_(bilinear_kernel(num_classes, num_classes, 64))
    return net.eval()


def load_val(data_dir: str, limit: int) -> tuple[list[np.ndarray], list[np.ndarray], object]:
    from fcnseg.data import build_dataset

    ds = build_dataset("camvid", data_dir, "val")
    pairs = [ds.read_raw(i) for i in range(min(limit, len(ds)))]
    return [p[0] for p in pairs], [p[1] for p in pairs], ds.meta


def gflops(config: str, checkpoint: str, size: tuple[int, int]) -> float:
    """GFLOPs of one ``size`` image through the config's network (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    from fcnseg.checkpoint import model_from_checkpoint

    if config == "d2l":
        model = chapter_model(11)
    else:
        model = model_from_checkpoint(checkpoint)[0].eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, *size))
    return counter.get_total_flops() / 1e9


def measure(config: str, files: dict[str, str], data_dir: str, limit: int, batch: int,
            streams: int = 1) -> dict:
    """Model-only images/s and mIoU of one configuration (in a worker process)."""
    from concurrent.futures import ThreadPoolExecutor

    from fcnseg import Predictor
    from fcnseg.allocator import keep_freed_memory
    from fcnseg.metrics import ConfusionMatrix

    keep_freed_memory()  # as the fcnseg command does
    images, masks, meta = load_val(data_dir, limit)
    batches = [images[i:i + batch] for i in range(0, len(images), batch)]
    if config == "d2l":
        model = chapter_model(meta.num_classes)
        mean = torch.tensor(meta.mean).view(1, 3, 1, 1) * 255
        std = torch.tensor(meta.std).view(1, 3, 1, 1) * 255

        def run(group: list[np.ndarray]) -> list[torch.Tensor] | None:
            x = torch.from_numpy(np.stack(group).transpose(0, 3, 1, 2).copy()).float()
            with torch.inference_mode():
                model((x - mean) / std).argmax(1)
            return None
    else:
        kind, runtime, precision = PLAN[config]
        predictor = Predictor.from_file(files[kind], runtime=runtime, device="cpu",
                                        precision=precision, streams=streams)
        streams = predictor.streams  # a .pt checkpoint: one

        def run(group: list[np.ndarray]) -> list[torch.Tensor] | None:
            return [torch.from_numpy(m) for m in predictor.predict_labels(group)]

    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(run, batches[:streams]))  # warm-up: primitive creation, allocator
        start = time.perf_counter()
        preds = [p for out in pool.map(run, batches) for p in out or []]
        seconds = time.perf_counter() - start
    miou = None
    if preds:
        cm = ConfusionMatrix(meta.num_classes, meta.ignore_index)
        for p, m in zip(preds, masks, strict=True):
            cm.update(p, torch.from_numpy(m))
        miou = float(cm.compute()["miou"])
    return {"config": config, "batch": batch, "streams": streams,
            "images_per_s": len(images) / seconds,
            "miou": miou, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def end_to_end(config: str, files: dict[str, str], data_dir: str, overlay: bool) -> dict:
    """``fcnseg predict`` on the val folder: decode + predict + write, images/s."""
    kind, runtime, precision = PLAN[config]
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "fcnseg", "predict", "--checkpoint", files[kind],
               "--runtime", runtime, "--precision", precision, str(Path(data_dir) / "val"),
               "--out", out, "--no-progress"] + ([] if overlay else ["--no-overlay"])
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - start
        count = sum(" -> " in line for line in done.stdout.splitlines())
        rate = float(done.stderr.rsplit("(", 1)[1].split(" img/s")[0])
    return {"config": config, "overlay": overlay, "images": count, "wall_s": seconds,
            "loop_images_per_s": rate}


def worker(args: list[str]) -> dict:
    """One measurement in its own process; a failure is reported as the row's ``error``."""
    cmd = [sys.executable, __file__, "--worker", *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        lines = (out.stderr.strip() or "no output").splitlines()
        return {"config": args[0], "batch": int(args[-1]), "error": lines[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def export_models(checkpoint: str, out: Path, calibration_size: int) -> tuple[dict, dict]:
    """``(files, errors)``: the checkpoint and its ONNX exports; an export that fails (e.g.
    an int8 file that does not keep fp32's mIoU) is left out with its one-line reason."""
    from fcnseg.errors import FcnsegError
    from fcnseg.inference.export import export_onnx

    files, errors = {"pt": checkpoint}, {}
    for kind, int8 in (("fp32", False), ("int8", True)):
        path = str(out / f"{'model' if kind == 'fp32' else kind}.onnx")
        try:
            report = export_onnx(checkpoint, path, int8=int8, calibration_size=calibration_size)
            files[kind] = path
            if report.quality:
                print(f"int8 export: {json.dumps(report.quality)}", flush=True)
        except FcnsegError as exc:
            errors[kind] = str(exc)
            print(f"export {kind} failed: {exc}", flush=True)
    return files, errors


def run_rounds(args: argparse.Namespace, files: dict, export_errors: dict
               ) -> tuple[dict[tuple, list[dict]], list[dict]]:
    """Every (config, batch, streams) once a round, alternating; a worker per measurement."""
    runs: dict[tuple, list[dict]] = {}
    failed: list[dict] = []
    for _ in range(args.rounds):
        for batch in args.batches:
            for config in args.configs:
                kind = PLAN.get(config, ("pt",))[0]
                if kind not in files:
                    failed.append({"config": config, "batch": batch,
                                   "error": f"no {kind} file: {export_errors[kind]}"})
                    continue
                for streams in args.streams if kind in ("fp32", "int8") else [1]:
                    r = worker([config, json.dumps(files), args.data_dir, str(args.limit),
                                str(batch), str(streams)])
                    if "error" in r:
                        failed.append(r)
                        print(f"  {config:<11} batch {batch}: failed: {r['error']}", flush=True)
                        continue
                    runs.setdefault((config, batch, streams), []).append(r)
                    print(f"  {config:<11} batch {batch} streams {streams}: "
                          f"{r['images_per_s']:6.2f} img/s", flush=True)
    return runs, failed


def table(args: argparse.Namespace, runs: dict[tuple, list[dict]],
          flops: dict[str, float]) -> list[dict]:
    """Medians over the rounds, against the first config (the chapter) at the same batch."""
    rows = []
    for results in runs.values():
        rows.append({**results[0], "images_per_s": statistics.median(
            r["images_per_s"] for r in results), "all_images_per_s":
            [r["images_per_s"] for r in results],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in results)})
    base = {r["batch"]: r["images_per_s"] for r in rows if r["config"] == args.configs[0]}
    rows = [r for r in rows if r["batch"] in base]  # the first config is the reference
    ref = {r["batch"]: r["miou"] for r in rows if r["config"] == "torch-fp32"}
    print(f"\n{'config':<11} {'batch':>5} {'str':>3} {'img/s':>7} {'x ' + args.configs[0]:>8} "
          f"{'GFLOP/s':>8} {'mIoU':>7} {'dmIoU':>7} {'RSS MiB':>8}")
    for r in rows:
        r["speedup"] = r["images_per_s"] / base[r["batch"]]
        r["gflop_per_s"] = r["images_per_s"] * flops["d2l" if r["config"] == "d2l"
                                                     else "torch-fp32"]
        d = None if r["miou"] is None or ref.get(r["batch"]) is None else \
            r["miou"] - ref[r["batch"]]
        r["miou_delta_vs_torch_fp32"] = d
        print(f"{r['config']:<11} {r['batch']:5d} {r['streams']:3d} {r['images_per_s']:7.2f} "
              f"{r['speedup']:8.2f} {r['gflop_per_s']:8.1f} "
              f"{r['miou'] if r['miou'] is not None else float('nan'):7.4f} "
              f"{d if d is not None else float('nan'):+7.4f} {r['peak_rss_mib']:8.0f}")
    print("GFLOPs per image: " + ", ".join(f"{k} {v:.2f}" for k, v in flops.items()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a CamVid best.pt (required)")
    parser.add_argument("--data-dir", default="../shared/data/camvid")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/inference"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/inference.json"))
    parser.add_argument("--configs", nargs="+", choices=CONFIGS,
                        help="default: all, the bf16 ones only where the CPU has bf16 units")
    parser.add_argument("--batches", nargs="+", type=int, default=[1])
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 2],
                        help="images in flight (1: one at a time; d2l and torch: always 1)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=101, help="val images (101: all)")
    parser.add_argument("--calibration-size", type=int, default=32)
    parser.add_argument("--e2e", nargs="*", choices=CONFIGS[1:], default=["torch-fp32"])
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        config, files, data_dir, limit, batch, streams = args.worker
        print(json.dumps(measure(config, json.loads(files), data_dir, int(limit), int(batch),
                                 int(streams))))
        return

    from fcnseg.device import cpu_has_fast_bf16

    if not args.checkpoint:
        parser.error("--checkpoint is required")
    if not args.configs:
        args.configs = [c for c in CONFIGS if cpu_has_fast_bf16() or not c.endswith("bf16")]
    args.out.mkdir(parents=True, exist_ok=True)
    files, export_errors = export_models(args.checkpoint, args.out, args.calibration_size)
    size = load_val(args.data_dir, 1)[0][0].shape[:2]
    flops = {c: gflops(c, args.checkpoint, size) for c in {"d2l", "torch-fp32"}}
    runs, failed = run_rounds(args, files, export_errors)
    rows = table(args, runs, flops)
    for f in {(f["config"], f["batch"]): f for f in failed}.values():
        print(f"{f['config']:<11} {f['batch']:5d} not measured: {f['error']}")
    e2e = []
    for config in [c for c in args.e2e if PLAN[c][0] in files]:
        for overlay in (True, False):
            r = end_to_end(config, files, args.data_dir, overlay)
            model_only = max(x["images_per_s"] for x in rows
                             if x["config"] == config and x["batch"] == 1)
            r["fraction_of_model_only"] = r["loop_images_per_s"] / model_only
            e2e.append(r)
            print(f"fcnseg predict {config}{'' if overlay else ' --no-overlay'}: "
                  f"{r['loop_images_per_s']:.2f} img/s over {r['images']} images "
                  f"({100 * r['fraction_of_model_only']:.0f} % of the best model-only "
                  f"batch 1), {r['wall_s']:.1f} s wall with start-up")
    flags = [f for f in open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split()
             if f.startswith(("avx512", "amx", "avx_vnni", "avx2"))] \
        if os.path.exists("/proc/cpuinfo") else []
    write_report(args.json, machine={"cpu": platform.processor() or platform.machine(),
                                     "cores": os.cpu_count(), "torch": torch.__version__,
                                     "fast_bf16": cpu_has_fast_bf16(), "flags": flags},
                 rows=rows, failed=failed, export_errors=export_errors, end_to_end=e2e,
                 gflops_per_image={"size": list(size), **flops})
    print(f"CPU flags: {' '.join(flags) or 'none of avx2/avx512/amx'}; "
          f"fast bf16: {cpu_has_fast_bf16()}\nwrote {args.json}")


if __name__ == "__main__":
    main()
