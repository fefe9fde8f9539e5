"""``fcnseg demo``: the whole pipeline offline in a few minutes on a CPU (fcnseg/demo.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..demo import DEMO_DATA, DEMO_SETTINGS


def add_parser(subparsers: Any, help_text: str) -> None:
    p = subparsers.add_parser("demo", help=help_text, description=help_text)
    p.add_argument("--out", default="fcnseg-demo", metavar="DIR",
                   help="output folder (default: fcnseg-demo)")
    p.add_argument("--epochs", type=int, default=DEMO_SETTINGS["epochs"])
    p.add_argument("--size", type=int, default=DEMO_DATA["size"],
                   help="number of synthetic training images (validation: a quarter, "
                        "at most 128)")
    p.add_argument("--image-size", type=int, default=DEMO_DATA["image_size"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.set_defaults(func=run, keep_freed_memory=True)  # it trains


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    summary = run_demo(args.out, args.epochs, args.size, args.image_size, args.seed,
                       args.device)
    out = Path(args.out)
    print(f"\nvalidation mIoU {summary['miou']:.3f} with test-time flip "
          f"({summary['single_pass']['miou']:.3f} in a single pass), pixel accuracy "
          f"{summary['pixel_accuracy']:.3f} ({summary['seconds']:.0f} s in all)")
    print(f"outputs in {out}/: metrics.json, curves.png, predictions.png, run/last.pt")
    print(f"next: fcnseg predict --checkpoint {out / 'run' / 'last.pt'} IMAGE... --out DIR")
    return 0
