"""Option parsing shared by several sub-commands."""

from __future__ import annotations

import argparse
from typing import Any

from ..device import PRECISIONS
from ..errors import FcnsegError
from ..inference import DEFAULT_TILE, MODES, RUNTIMES, Predictor
from ..inference.tiling import DEFAULT_TILE_BATCH


def add_inference_options(p: argparse.ArgumentParser) -> None:
    """Options of whole-image inference, shared by ``evaluate``, ``predict`` and ``serve``."""
    g = p.add_argument_group("inference")
    g.add_argument("--runtime", choices=("auto", *RUNTIMES), default="auto",
                   help="auto (default): torch for a .pt checkpoint; for an .onnx export "
                        "openvino where it is installed (the faster one on x86 CPUs), else "
                        "onnxruntime")
    g.add_argument("--mode", choices=MODES, default="pad",
                   help="pad: whole image padded to a multiple of 32 (exact, default); "
                        "slide: overlapping tiles with averaged class scores")
    g.add_argument("--tile", nargs=2, type=int, metavar=("H", "W"), default=DEFAULT_TILE,
                   help="tile size for --mode slide (default: {} {})".format(*DEFAULT_TILE))
    g.add_argument("--stride", nargs=2, type=int, metavar=("H", "W"), default=None,
                   help="tile stride for --mode slide (default: 2/3 of the tile)")
    g.add_argument("--tile-batch", type=int, default=DEFAULT_TILE_BATCH, metavar="N",
                   help="tiles per forward pass in --mode slide (default: %(default)s)")
    g.add_argument("--flip", action="store_true",
                   help="test-time augmentation: average with the mirrored image")
    g.add_argument("--scales", nargs="+", type=float, default=[1.0], metavar="S",
                   help="test-time augmentation: average over these scales (e.g. 0.75 1 1.25)")
    g.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="whole images per forward pass (equal sizes are batched; default 1)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--streams", type=int, default=0, metavar="N",
                   help="images an exported model predicts at once, each on its share of "
                        "the cores (0: one per core for folders, one for a single image; "
                        "a .pt checkpoint: always one)")
    g.add_argument("--precision", choices=tuple(PRECISIONS), default="auto",
                   help=f"auto: {PRECISIONS['auto']}; an exported model computes in its own "
                        "precision (int8 if exported so)")


def load_predictor(args: argparse.Namespace, streams: int = 1) -> Predictor:
    """The :class:`Predictor` of ``--checkpoint`` with the inference options given;
    ``streams`` is the command's own default for ``--streams 0``."""
    if args.batch_size < 1:
        raise FcnsegError(f"--batch-size {args.batch_size} must be at least 1")
    if args.streams < 0:
        raise FcnsegError(f"--streams {args.streams} must be 0 (auto) or more")
    return Predictor.from_file(args.checkpoint, runtime=args.runtime, device=args.device,
                               precision=args.precision, streams=args.streams or streams,
                               mode=args.mode, tile=tuple(args.tile),
                               stride=tuple(args.stride) if args.stride else None,
                               tile_batch=args.tile_batch, flip=args.flip,
                               scales=tuple(args.scales))


def parse_data_options(items: list[str] | None) -> dict[str, Any]:
    """``["size=64", "image-size=96"]`` -> ``{"size": 64, "image_size": 96}``
    (the repeatable ``--data-option KEY=VALUE`` flag, passed on to ``build_dataset``)."""
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise FcnsegError(f"--data-option {item!r} must look like KEY=VALUE")
        options[key.replace("-", "_")] = parse_value(raw)
    return options


def parse_value(raw: str) -> Any:
    """'64' -> 64, '0.5' -> 0.5, 'true' -> True, anything else stays a string.

    Digits after a leading zero ('0016E5', a CamVid drive; '007') name things: strings.
    """
    if len(raw) > 1 and raw[0] == "0" and raw[1].isdigit():
        return raw
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)
