"""``fcnseg train``: train an FCN; also the entry point of ``torchrun -m fcnseg train``.

The settings' flags are generated from ``TrainConfig``'s fields (type, help, range and
choices are declared there, once). Every flag defaults to "not given" (None) so that only
the flags a user types override the recipe and the ``--config`` file.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from ..training.config import CHOICES, RECIPES, TrainConfig
from ..training.settings import rule_of

GROUPS = ("data", "model", "optimisation", "augmentation", "runtime", "output")


def _duration(text: str) -> float:
    from ..errors import FcnsegError
    from ..training.budget import parse_duration

    try:
        return parse_duration(text)
    except FcnsegError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _help(f: dataclasses.Field) -> str:
    """A setting's help: its text, then its choices or range and its default (per recipe
    where the recipes differ)."""
    rule = rule_of(f)
    notes = [f"one of {', '.join(map(str, CHOICES[rule.choices]))}"] if rule.choices else []
    notes += [rule.describe()] if rule.describe() else []
    default = f.default_factory() if callable(f.default_factory) else f.default
    shown = {name: _show(recipe.get(f.name, default)) for name, recipe in RECIPES.items()}
    if f.name != "recipe" and default is not None:
        same = len(set(shown.values())) == 1
        notes.append(f"default {next(iter(shown.values()))}" if same else
                     "default: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    text = f"{rule.help} ({'; '.join(notes)})" if rule.help and notes else \
        rule.help or "; ".join(notes)
    return text.strip().replace("%", "%%")


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return " x ".join(map(str, value)) if isinstance(value, list) else str(value)


def add_setting(group: Any, f: dataclasses.Field, hint: Any) -> None:
    """The flag of one ``TrainConfig`` field, from its type and rule."""
    rule, flag = rule_of(f), "--" + f.name.replace("_", "-")
    kind = typing.get_origin(hint) or hint
    options: dict[str, Any] = {"help": _help(f), "dest": f.name}
    if rule.metavar is not None:
        options["metavar"] = rule.metavar
    if hint is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif kind is list:
        options.update(nargs=rule.length or "+", type=typing.get_args(hint)[0])
    elif rule.parse == "duration":
        options["type"] = _duration
    elif hint in (int, float):
        options["type"] = hint
    group.add_argument(flag, **options)


def add_parser(subparsers: Any, help_text: str) -> None:
    p = subparsers.add_parser("train", help=help_text, description=help_text)
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if rule_of(f).flag:
            add_setting(groups[rule_of(f).group], f, hints[f.name])
    groups["data"].add_argument(
        "--data-option", action="append", metavar="KEY=VALUE", dest="data_option",
        help="extra data set option, e.g. size=64 (repeatable)")
    groups["optimisation"].add_argument("--config", metavar="FILE.toml",
                                        help="TOML file with any of these settings")
    out = groups["output"]
    out.add_argument("--resume", nargs="?", const="last", metavar="CHECKPOINT",
                     help="continue a run: bare = RUN_DIR/last.pt, or a checkpoint path")
    out.add_argument("--overwrite", action="store_true", default=None,
                     help="replace the run already in --out: its checkpoints, event files and "
                          "pictures are removed (without it such a folder is refused: "
                          "nothing a typo can destroy)")
    p.set_defaults(func=run, keep_freed_memory=True)  # steps re-allocate their activations


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user gave as flags, as TrainConfig fields."""
    from .options import parse_data_options

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if getattr(args, f.name, None) is not None}
    if args.data_option:
        values["data_options"] = parse_data_options(args.data_option)
    return values


def run(args: argparse.Namespace) -> int:
    from ..training.train import train

    train(_overrides(args), args.config, recipe=args.recipe, resume=args.resume,
          overwrite=bool(args.overwrite))
    return 0
