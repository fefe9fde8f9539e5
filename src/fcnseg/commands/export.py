"""``fcnseg export``: a checkpoint as an ONNX model that runs without fcnseg or PyTorch."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..inference.quantize import INT8_MAX_MIOU_DROP


def add_parser(subparsers: Any, help_text: str) -> None:
    p = subparsers.add_parser("export", help=help_text, description=help_text)
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a best.pt / last.pt")
    p.add_argument("--out", required=True, metavar="MODEL.onnx", help="the ONNX file to write")
    p.add_argument("--int8", action="store_true",
                   help="static int8 quantization (NNCF, QDQ), calibrated on training images "
                        "and written only if it keeps the mIoU of fp32 on validation images")
    p.add_argument("--calibration", default=None, metavar="DIR",
                   help="images to calibrate --int8 on (default: the checkpoint's training "
                        "split)")
    p.add_argument("--calibration-size", type=int, default=32, metavar="N",
                   help="calibration images (default 32)")
    p.add_argument("--check-size", type=int, default=24, metavar="N",
                   help="--int8: validation images of the checkpoint's data, at their own "
                        "size, on which int8 must match fp32's mIoU (default 24)")
    p.add_argument("--max-miou-drop", type=float, default=INT8_MAX_MIOU_DROP, metavar="D",
                   help="--int8: how far int8's mIoU on those images may fall below fp32's, "
                        "on each runtime that runs it (ONNX Runtime, OpenVINO) (default "
                        f"{INT8_MAX_MIOU_DROP})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.export import export_onnx

    if args.calibration is not None and not args.int8:
        print("fcnseg: warning: --calibration is only used with --int8", file=sys.stderr)
    report = export_onnx(args.checkpoint, args.out, int8=args.int8,
                         calibration=args.calibration, calibration_size=args.calibration_size,
                         check_size=args.check_size, max_miou_drop=args.max_miou_drop,
                         progress=lambda line: print(line, file=sys.stderr))
    if report.quality is not None:
        q = report.quality
        miou = (f"; mIoU {q['miou_int8']:.4f}, fp32 {q['miou_fp32']:.4f}"
                if "miou_int8" in q else "")
        print(f"fcnseg: wrote {report.path} (int8; {100 * q['agreement']:.2f} % of pixels as "
              f"fp32 labels them on {q['images']} images{miou})")
    else:
        worst = min(c["agreement"] for c in report.checks)
        print(f"fcnseg: wrote {report.path} (fp32; agrees with PyTorch on "
              f"{100 * worst:.2f} % of pixels or more at {len(report.checks)} sizes)")
    print(f"use it: fcnseg predict --checkpoint {report.path} IMAGE... --out DIR")
    return 0
