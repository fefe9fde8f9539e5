"""Training configuration: one typed dataclass, recipes, TOML files and validation.

Precedence, lowest first: dataclass defaults < recipe (``RECIPES``) < ``--config`` TOML file
< command-line flags. The resolved config is saved as ``RUN_DIR/config.toml`` so that
``fcnseg train --config RUN_DIR/config.toml`` repeats a run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import DATASETS
from ..device import PRECISIONS, available_memory
from ..errors import FcnsegError
from ..models import BACKBONES, MODELS, UPSAMPLE_INITS
from .losses import LOSSES
from .optim import CLASS_WEIGHTS, OPTIMIZERS, SCHEDULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# Valid values of the enumerated options, from the registries that own them; checked by
# TrainConfig.validate() and listed by `fcnseg train --help`.
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": tuple(DATASETS), "model": tuple(MODELS), "backbone": tuple(BACKBONES),
    "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "upsample_init": UPSAMPLE_INITS,
    "class_weights": CLASS_WEIGHTS, "loss": LOSSES, "precision": PRECISIONS,
}

# Recipes: named differences from the dataclass defaults, which *are* fcnseg's recipe.
RECIPES: dict[str, dict[str, Any]] = {
    "fcnseg": {},
    # The D2L chapter: ResNet-18 FCN-32s, bilinear-initialised transposed conv, plain SGD
    # (d2l.train_ch13 uses torch.optim.SGD without momentum) at one constant lr for the
    # whole net, random 320x480 crops only, cross entropy, run in fp32 with the default
    # NCHW memory layout.
    "d2l": {
        "model": "fcn32s", "backbone": "resnet18", "optimizer": "sgd", "lr": 0.001,
        "backbone_lr": 1.0, "weight_decay": 1e-3, "momentum": 0.0, "batch_size": 32,
        "epochs": 5, "crop": [320, 480], "scale": [1.0, 1.0], "flip": False,
        "color_jitter": 0.0, "schedule": "constant", "warmup_iters": 0, "loss": "ce",
        "boundary_weight": 0.0, "ema": 0.0, "channels_last": False, "precision": "fp32",
    },
}
DEFAULT_RECIPE = "fcnseg"
# Peak memory of a training step per pixel of a batch (FCN-8s at 320 x 480, batch 8: ~2.6
# GiB; benchmarks/RESULTS.md, "Training speed"), rounded up: bounds --crop x --batch-size.
TRAIN_BYTES_PER_PIXEL = 2500
# Settings added after the first release, with the value that runs saved before them used.
SINCE: dict[str, Any] = {"backbone_lr": 1.0}


@dataclass
class TrainConfig:
    """Every setting of a training run (see ``fcnseg train --help``).

    The defaults are fcnseg's recipe, each choice measured (benchmarks/RESULTS.md has the
    runs); ``RECIPES["d2l"]`` lists how the chapter differs.
    """

    # data
    dataset: str = "shapes"
    data_dir: str = "data"
    split: str = "train"
    val_split: str = "val"
    data_options: dict[str, Any] = field(default_factory=dict)  # extra build_dataset kwargs
    limit_train: int = 0  # use only the first N training images (0: all); for tests
    limit_val: int = 0
    # model: FCN-8s (the paper's best skip fusion) on an ImageNet EfficientNet-Lite0
    model: str = "fcn8s"
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    backbone_weights: str | None = None
    upsample_init: str = "bilinear"
    # optimisation: AdamW + poly after a linear warm-up; batch 8 gives twice the updates of
    # 16 at the same cost; CE + Lovasz-softmax with boundary pixels weighted lifts the thin
    # classes (benchmarks/RESULTS.md, "Accuracy").
    epochs: int = 30
    batch_size: int = 8  # global batch: each of N DDP processes gets batch_size / N
    lr: float = 2e-3
    backbone_lr: float = 1.0  # the backbone's lr as a multiple of lr (1: one lr for all)
    weight_decay: float = 1e-4
    momentum: float = 0.9
    optimizer: str = "adamw"
    schedule: str = "poly"
    poly_power: float = 0.9
    warmup_iters: int = 50
    class_weights: str = "none"
    loss: str = "ce+lovasz"  # "ce": cross entropy alone
    boundary_weight: float = 4.0  # extra CE weight of pixels within 2 px of a label boundary
    ema: float = 0.0  # decay of a weight average to validate and save instead (0: none)
    max_steps: int = 0  # stop after this many optimizer steps in total (0: no limit)
    time_budget: float = 0.0  # seconds: plan `epochs` to end within it (0: no budget)
    # augmentation: 256 x 320 crops give about twice the steps of 320 x 480 in a CPU budget
    # (the net still predicts whole images); mild scale jitter and flips; brightness,
    # contrast and saturation 0.4-1.6x, so that a model trained on daylight drives also
    # segments a dusk drive (benchmarks/RESULTS.md, "Accuracy")
    crop: list[int] = field(default_factory=lambda: [256, 320])
    scale: list[float] = field(default_factory=lambda: [0.75, 1.25])
    flip: bool = True
    color_jitter: float = 0.6
    class_balance: float = 0.0  # share of samples cropped around a class drawn uniformly
    # speed and runtime: bf16 only where the CPU is fast at it
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    workers: int = 2
    sync_bn: bool = False
    seed: int = 0
    # output
    out: str = "runs/train"
    log_every: int = 10  # progress-bar refresh, iterations
    checkpoint_every: int = 0  # also write last.pt every N iterations (0: once per epoch)
    val_every: int = 1  # validate every N epochs (0: never; the last epoch always)
    val_images: int = 4  # at each validation: image|truth|prediction PNGs of the first N
    recipe: str = DEFAULT_RECIPE

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), safe for ``weights_only`` checkpoints."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build and validate a config; unknown keys raise :class:`FcnsegError`."""
        return cls().updated(values)

    def updated(self, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """A copy with ``values`` applied (keys may use dashes), validated."""
        hints = typing.get_type_hints(TrainConfig)
        clean = {}
        for key, value in values.items():
            key = key.replace("-", "_")
            if key not in hints:
                raise FcnsegError(
                    f"unknown setting {key!r} in {source}: valid settings are "
                    + ", ".join(sorted(hints))
                )
            clean[key] = _typed(key, value, hints[key], source)
        new = dataclasses.replace(self, **clean)
        new.validate()
        return new

    def validate(self) -> None:
        """Raise :class:`FcnsegError` naming the bad value and the valid ones."""
        for key, valid in CHOICES.items():
            if getattr(self, key) not in valid:
                raise FcnsegError(
                    f"unknown {key.replace('_', '-')} {getattr(self, key)!r}: "
                    f"choose one of {', '.join(valid)}"
                )
        if self.recipe not in RECIPES:
            raise FcnsegError(
                f"unknown recipe {self.recipe!r}: choose one of {', '.join(RECIPES)}"
            )
        for key in ("epochs", "batch_size", "workers", "warmup_iters", "max_steps",
                    "checkpoint_every", "val_every", "val_images", "limit_train",
                    "limit_val"):
            low = 1 if key in ("epochs", "batch_size") else 0
            value = getattr(self, key)
            if not isinstance(value, int) or value < low:
                flag = "--" + key.replace("_", "-")
                raise FcnsegError(f"{flag} must be an integer >= {low}, got {value!r}")
        if self.log_every < 1:
            raise FcnsegError(f"--log-every must be >= 1, got {self.log_every}")
        if not (self.lr > 0):
            raise FcnsegError(f"--lr must be > 0, got {self.lr}")
        if not (0 <= self.backbone_lr <= 1):
            raise FcnsegError(f"--backbone-lr must be in [0, 1] (a multiple of --lr), got "
                              f"{self.backbone_lr}")
        if not (0 <= self.ema < 1):
            raise FcnsegError(f"--ema must be in [0, 1) (0: no weight average), got {self.ema}")
        if not (self.boundary_weight >= 0):
            raise FcnsegError(f"--boundary-weight must be >= 0, got {self.boundary_weight}")
        if self.weight_decay < 0 or not (0 <= self.momentum < 1):
            raise FcnsegError("--weight-decay must be >= 0 and --momentum in [0, 1)")
        if not (0 <= self.class_balance <= 1):
            raise FcnsegError(f"--class-balance must be in [0, 1], got {self.class_balance}")
        if self.time_budget < 0:
            raise FcnsegError(f"--time-budget must be >= 0 s, got {self.time_budget}")
        if not (self.poly_power > 0):
            raise FcnsegError(f"poly_power must be > 0, got {self.poly_power}")
        if not (0 <= self.color_jitter < 1):
            raise FcnsegError(f"--color-jitter must be in [0, 1) (brightness, contrast and "
                              f"saturation scaled by 1 +- it), got {self.color_jitter}")
        if not (0 <= self.seed < 2**32):
            raise FcnsegError(f"--seed must be an integer from 0 to 2**32 - 1, got {self.seed}")
        if len(self.crop) != 2 or min(self.crop) < 1:
            raise FcnsegError(f"--crop needs two positive sizes H W, got {self.crop}")
        need = self.batch_size * self.crop[0] * self.crop[1] * TRAIN_BYTES_PER_PIXEL
        if need > available_memory():
            raise FcnsegError(
                f"--crop {self.crop[0]} {self.crop[1]} with --batch-size {self.batch_size} "
                f"needs about {need / 2**30:.1f} GiB to train, more than the "
                f"{available_memory() / 2**30:.1f} GiB this process can use: use a smaller "
                "--crop or --batch-size")
        if len(self.scale) != 2 or not (0 < self.scale[0] <= self.scale[1]):
            raise FcnsegError(f"--scale needs MIN MAX with 0 < MIN <= MAX, got {self.scale}")


_KINDS = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string",
          dict: "a table of options"}


def _typed(key: str, value: Any, hint: Any, source: str) -> Any:
    """``value`` checked against the field's type (floats made float); else FcnsegError.

    TOML and JSON know these types, so nothing is guessed: ``"0.01"`` is not a number and
    ``"no"`` is not false.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    kind = origin or hint
    if kind in (types.UnionType, typing.Union):  # "str | None" with a value
        kind = next(a for a in args if a is not type(None))
    ok = _is_kind(value, list if kind is list else kind)
    if ok and kind is list:
        item = args[0] if args else Any
        ok = all(_is_kind(v, item) for v in value)
        value = [float(v) for v in value] if ok and item is float else value
    elif ok and kind is float:
        value = float(value)
    if not ok:
        want = (f"a list of {_KINDS.get(args[0], 'values').split(' ', 1)[1]}s"
                if kind is list else _KINDS.get(kind, str(kind)))
        if source == "command line":  # name what the user typed
            raise FcnsegError(f"--{key.replace('_', '-')} {value!r} must be {want}")
        raise FcnsegError(f"setting {key} = {value!r} in {source} must be {want}: "
                          f"fix it, e.g. {key} = {_example(key)}")
    return value


def _is_kind(value: Any, kind: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value)
    return kind is Any or isinstance(value, kind)


def _example(key: str) -> str:
    default = getattr(TrainConfig(), key)
    if isinstance(default, dict):
        return "{ size = 64 }"
    return '"FILE"' if default is None else _toml_value(default)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; errors name the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise FcnsegError(f"config file {path} does not exist: check the --config path") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FcnsegError(f"config file {path} is not valid TOML ({exc}): fix the file") from exc


def resolve_config(
    overrides: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    recipe: str | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Merge recipe < file < overrides (or ``base`` < overrides when resuming)."""
    overrides = {k.replace("-", "_"): v for k, v in (overrides or {}).items() if v is not None}
    file_values = load_toml(config_file) if config_file else {}
    file_values = {k.replace("-", "_"): v for k, v in file_values.items()}
    if base is not None:  # resuming: the saved config is the starting point
        # Settings added since a run was saved take the value that run trained with.
        base = {**SINCE, **base}
        return TrainConfig.from_dict(base).updated(file_values, str(config_file)).updated(
            overrides, "command line")
    name = recipe or overrides.get("recipe") or file_values.get("recipe") or DEFAULT_RECIPE
    if name not in RECIPES:
        raise FcnsegError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    config = TrainConfig().updated({**RECIPES[name], "recipe": name}, f"recipe {name}")
    config = config.updated(file_values, str(config_file))
    return config.updated(overrides, "command line")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(config: TrainConfig) -> str:
    """The config as TOML text (``None`` values are left out: TOML has no null)."""
    values = config.to_dict()
    tables = {k: v for k, v in values.items() if isinstance(v, dict)}
    lines = ["# fcnseg train: resolved config (use with --config)"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()
              if v is not None and k not in tables]
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"
