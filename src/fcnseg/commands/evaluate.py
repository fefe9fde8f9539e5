"""``fcnseg evaluate``: whole-image metrics of a checkpoint or exported model on a split."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..data import DATASETS
from .options import add_inference_options, load_predictor, parse_data_options


def add_parser(subparsers: Any, help_text: str) -> None:
    p = subparsers.add_parser("evaluate", help=help_text, description=help_text)
    p.add_argument("--checkpoint", required=True, metavar="MODEL",
                   help="a best.pt / last.pt, or an exported model.onnx")
    p.add_argument("--dataset", required=True, choices=list(DATASETS))
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
    from ..data.meta import class_mismatch
    from ..errors import CheckpointError

    detail = class_mismatch(ckpt_meta.class_names, data_meta.class_names)
    if not detail:
        return
    raise CheckpointError(f"checkpoint {checkpoint} does not match the {dataset} data set: "
                          f"{detail}; evaluate it on the data set it was trained for")


def data_source(args: argparse.Namespace, config: dict) -> tuple[str, dict[str, Any]]:
    """The data root and build_dataset options: the command line's, else the checkpoint's.

    A checkpoint remembers where (and with which options, e.g. the synthetic shapes' size)
    its data set was read; they are reused when ``--dataset`` is that same data set.
    """
    from ..errors import FcnsegError

    same = config.get("dataset") == args.dataset
    options: dict[str, Any] = dict(config.get("data_options") or {}) if same else {}
    options.update(parse_data_options(args.data_option))
    root = args.data_dir if args.data_dir is not None else (config.get("data_dir") if same
                                                            else None)
    if root is None:
        raise FcnsegError(f"--dataset {args.dataset} needs --data-dir DIR (the data set root)")
    return str(root), options


def run(args: argparse.Namespace) -> int:
    import json

    from ..data import build_dataset
    from ..errors import FcnsegError
    from ..fileio import atomic_write, check_output_file
    from ..inference.evaluate import evaluate
    from ..metrics import format_table, metrics_report
    from ..viz import confusion_matrix_figure

    if args.limit is not None and args.limit < 1:
        raise FcnsegError(f"--limit {args.limit} must be at least 1")
    # Check every output location before spending minutes on the evaluation.
    for flag, out in (("--json", args.json), ("--confusion", args.confusion)):
        if out is not None:
            check_output_file(out, flag)
    predictor = load_predictor(args)
    meta = predictor.meta
    print(f"fcnseg: {args.checkpoint}: {meta.num_classes} classes ({meta.name}); "
          f"{predictor.reason}", file=sys.stderr)
    root, data_options = data_source(args, predictor.info["config"])
    dataset = build_dataset(args.dataset, root, args.split, **data_options)
    check_classes(meta, dataset.meta, args.checkpoint, args.dataset)
    num_images = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    print(f"fcnseg: evaluating {num_images} {args.split} images of {args.dataset}",
          file=sys.stderr)
    cm = evaluate(predictor, dataset, batch_size=args.batch_size,
                  progress=not args.no_progress, save_predictions=args.save_predictions,
                  max_images=args.max_images, limit=args.limit, num_workers=args.workers)
    result = cm.compute()
    report = metrics_report(result, meta.class_names, checkpoint=str(args.checkpoint),
                            dataset=args.dataset, split=args.split, num_images=num_images,
                            mode=args.mode, flip=args.flip, scales=list(args.scales),
                            runtime=predictor.runtime, precision=predictor.precision)
    print(format_table(report))
    if args.json is not None:
        text = json.dumps(report, indent=2, allow_nan=False) + "\n"
        atomic_write(args.json, lambda f: f.write(text.encode()))
        print(f"fcnseg: wrote {args.json}", file=sys.stderr)
    if args.confusion is not None:
        confusion_matrix_figure(result["mat"], meta.class_names, args.confusion)
        print(f"fcnseg: wrote {args.confusion}", file=sys.stderr)
    return 0
