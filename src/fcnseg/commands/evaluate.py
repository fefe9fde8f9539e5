"""``fcnseg evaluate``: whole-image metrics of a checkpoint on a data set split.

Also home of the inference options shared with ``fcnseg predict`` (mode, tiles, TTA,
device, precision), so that both commands spell them the same way.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

DATASETS = ("voc", "camvid", "folder", "shapes")


def add_inference_options(p: argparse.ArgumentParser) -> None:
    """Options of whole-image inference, shared by ``evaluate`` and ``predict``."""
    g = p.add_argument_group("inference")
    g.add_argument("--mode", choices=("pad", "slide"), default="pad",
                   help="pad: whole image padded to a multiple of 32 (exact, default); "
                        "slide: overlapping tiles with averaged class scores")
    g.add_argument("--tile", nargs=2, type=int, metavar=("H", "W"), default=(320, 480),
                   help="tile size for --mode slide (default: 320 480, the chapter's crop)")
    g.add_argument("--stride", nargs=2, type=int, metavar=("H", "W"), default=None,
                   help="tile stride for --mode slide (default: 2/3 of the tile)")
    g.add_argument("--tile-batch", type=int, default=4, metavar="N",
                   help="tiles per forward pass in --mode slide (default: 4)")
    g.add_argument("--flip", action="store_true",
                   help="test-time augmentation: average with the mirrored image")
    g.add_argument("--scales", nargs="+", type=float, default=[1.0], metavar="S",
                   help="test-time augmentation: average over these scales (e.g. 0.75 1 1.25)")
    g.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="whole images per forward pass (equal sizes are batched; default 1)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: bf16 on CUDA and on CPUs with AMX/AVX512-BF16, else fp32")


def inference_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`fcnseg.inference.predict_logits` options given on the command line."""
    from ..errors import FcnsegError

    if args.tile_batch < 1 or args.batch_size < 1:
        raise FcnsegError("--tile-batch and --batch-size must be at least 1")
    if min(args.tile) < 1 or (args.stride is not None and min(args.stride) < 1):
        raise FcnsegError(f"--tile {args.tile} and --stride {args.stride} must be positive")
    if args.stride is not None and (args.stride[0] > args.tile[0] or args.stride[1] > args.tile[1]):
        raise FcnsegError(f"--stride {args.stride} is larger than --tile {args.tile}: "
                          "pixels between tiles would get no prediction; use a smaller stride")
    if min(args.scales) <= 0:
        raise FcnsegError(f"--scales {args.scales} must all be positive, e.g. 0.75 1 1.25")
    return {"mode": args.mode, "tile": tuple(args.tile),
            "stride": tuple(args.stride) if args.stride else None,
            "tile_batch": args.tile_batch, "flip": args.flip, "scales": tuple(args.scales)}


def load_for_inference(args: argparse.Namespace) -> tuple[Any, Any, dict, Any, Any]:
    """``(model, meta, checkpoint, device, dtype)`` from ``--checkpoint``, ``--device``..."""
    import torch

    from ..device import resolve_precision, select_device
    from ..engine.checkpoint import model_from_checkpoint
    from ..models.fusion import fold_batchnorm

    device = select_device(args.device)
    dtype, reason = resolve_precision(device, args.precision)
    model, meta, checkpoint = model_from_checkpoint(args.checkpoint, device)
    # BatchNorm folded into the convs (same outputs, ~5 % faster); channels-last is the
    # fast layout for convolutions on CPUs (oneDNN) and tensor cores.
    model = fold_batchnorm(model).to(memory_format=torch.channels_last)
    print(f"fcnseg: {args.checkpoint}: {meta.num_classes} classes ({meta.name}); "
          f"device {device}, {reason}", file=sys.stderr)
    return model, meta, checkpoint, device, dtype


def add_parser(subparsers: Any, help_text: str) -> None:
    p = subparsers.add_parser("evaluate", help=help_text, description=help_text)
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a best.pt / last.pt")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="data set root (e.g. ../shared/data/camvid; default: the one the "
                        "checkpoint was trained on, for the same --dataset)")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE", default=[],
                   help="extra data set option, as for fcnseg train (repeatable)")
    p.add_argument("--split", default="val", help="split to evaluate (default: val)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="evaluate only the first N images (quick checks)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write the metrics here")
    p.add_argument("--confusion", default=None, metavar="FIG.png",
                   help="write a row-normalised confusion-matrix figure here")
    p.add_argument("--save-predictions", default=None, metavar="DIR",
                   help="write image | truth | prediction strips of the first images here")
    p.add_argument("--max-images", type=int, default=8, metavar="N",
                   help="how many strips --save-predictions writes (default: 8)")
    p.add_argument("--workers", type=int, default=0, help="data loading processes (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_inference_options(p)
    p.set_defaults(func=run)


def check_classes(ckpt_meta: Any, data_meta: Any, checkpoint: str, dataset: str) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint's classes are the data set's."""
    from ..errors import CheckpointError

    a, b = list(ckpt_meta.class_names), list(data_meta.class_names)
    if a == b:
        return
    if len(a) != len(b):
        detail = f"{len(a)} classes in the checkpoint vs {len(b)} in the data set"
    else:
        diffs = [f"#{i} {x!r} vs {y!r}" for i, (x, y) in enumerate(zip(a, b, strict=True))
                 if x != y]
        more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        detail = "class names differ: " + ", ".join(diffs[:3]) + more
    raise CheckpointError(f"checkpoint {checkpoint} does not match the {dataset} data set: "
                          f"{detail}; evaluate it on the data set it was trained for")


def data_source(args: argparse.Namespace, checkpoint: dict) -> tuple[str, dict[str, Any]]:
    """The data root and build_dataset options: the command line's, else the checkpoint's.

    A checkpoint remembers where (and with which options, e.g. the synthetic shapes' size)
    its data set was read; they are reused when ``--dataset`` is that same data set.
    """
    from ..errors import FcnsegError
    from .options import parse_data_options

    config = checkpoint.get("config") or {}
    same = config.get("dataset") == args.dataset
    options: dict[str, Any] = dict(config.get("data_options") or {}) if same else {}
    options.update(parse_data_options(args.data_option))
    root = args.data_dir if args.data_dir is not None else (config.get("data_dir") if same
                                                            else None)
    if root is None:
        raise FcnsegError(f"--dataset {args.dataset} needs --data-dir DIR (the data set root)")
    return str(root), options


def metrics_report(result: dict, class_names: list[str], **info: Any) -> dict[str, Any]:
    """A JSON-ready dict: summary figures, per-class IoU/accuracy by name (NaN -> None)."""
    def clean(v: float) -> float | None:
        return None if v is None or math.isnan(v) else float(v)

    report: dict[str, Any] = {k: clean(result[k]) for k in
                              ("pixel_accuracy", "mean_accuracy", "miou", "fwiou")}
    report["per_class_iou"] = {n: clean(v) for n, v in zip(class_names, result["per_class_iou"],
                                                         strict=True)}
    report["per_class_accuracy"] = {n: clean(v) for n, v in
                                    zip(class_names, result["per_class_accuracy"], strict=True)}
    report.update(info)
    return report


def format_table(report: dict[str, Any]) -> str:
    """Per-class IoU and accuracy, then the summary figures; '-' marks an absent class."""
    def f(v: float | None) -> str:
        return "     -" if v is None else f"{v:6.4f}"

    names = list(report["per_class_iou"])
    width = max([len(n) for n in names] + [22])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'acc':>6}"]
    for n in names:
        lines.append(f"{n:<{width}}  {f(report['per_class_iou'][n])}  "
                     f"{f(report['per_class_accuracy'][n])}")
    lines.append("-" * (width + 16))
    for key, label in (("pixel_accuracy", "pixel accuracy"), ("mean_accuracy", "mean accuracy"),
                       ("miou", "mean IoU"), ("fwiou", "frequency-weighted IoU")):
        lines.append(f"{label:<{width}}  {f(report[key])}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    from ..data import build_dataset
    from ..data.transforms import eval_transform
    from ..engine.evaluate import evaluate
    from ..errors import FcnsegError
    from ..fileio import atomic_write, ensure_writable_dir
    from ..viz import confusion_matrix_figure

    options = inference_kwargs(args)
    if args.limit is not None and args.limit < 1:
        raise FcnsegError(f"--limit {args.limit} must be at least 1")
    # Check every output location before spending minutes on the evaluation.
    for out in (args.json, args.confusion):
        if out is not None:
            ensure_writable_dir(Path(out).parent)
    model, meta, checkpoint, device, dtype = load_for_inference(args)
    root, data_options = data_source(args, checkpoint)
    # Normalise with the checkpoint's mean/std: those the model was trained with.
    dataset = build_dataset(args.dataset, root, args.split, transform=eval_transform(meta),
                            **data_options)
    check_classes(meta, dataset.meta, args.checkpoint, args.dataset)
    num_images = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    print(f"fcnseg: evaluating {num_images} {args.split} images of {args.dataset}",
          file=sys.stderr)
    cm = evaluate(model, dataset, device, dtype=dtype, batch_size=args.batch_size,
                  progress=not args.no_progress, save_predictions=args.save_predictions,
                  max_images=args.max_images, limit=args.limit, num_workers=args.workers,
                  **options)
    result = cm.compute()
    report = metrics_report(result, meta.class_names, checkpoint=str(args.checkpoint),
                            dataset=args.dataset, split=args.split, num_images=num_images,
                            mode=args.mode, flip=args.flip, scales=list(args.scales),
                            precision=str(dtype).replace("torch.", ""))
    print(format_table(report))
    if args.json is not None:
        text = json.dumps(report, indent=2, allow_nan=False) + "\n"
        atomic_write(args.json, lambda f: f.write(text.encode()))
        print(f"fcnseg: wrote {args.json}", file=sys.stderr)
    if args.confusion is not None:
        confusion_matrix_figure(result["mat"], meta.class_names, args.confusion)
        print(f"fcnseg: wrote {args.confusion}", file=sys.stderr)
    return 0
