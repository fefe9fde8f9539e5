"""Optimizer, learning-rate schedule and class weights (the losses are in losses.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.meta import IGNORE_INDEX
from ..errors import UnknownNameError
from .loader import class_pixel_counts

if TYPE_CHECKING:  # the config names these registries: no import at run time
    from .config import TrainConfig

CLASS_WEIGHTS = ("none", "median-frequency")


def _sgd(params: list[dict[str, Any]], config: TrainConfig, **fused: Any) -> Any:
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, **fused)


def _adamw(params: list[dict[str, Any]], config: TrainConfig, **fused: Any) -> Any:
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **fused)


# name -> builder: the one list of optimizers (the config's choices and --help read it)
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"sgd": _sgd, "adamw": _adamw}

# name -> the lr factor at progress t in [0, 1] after warm-up (``power``: poly's exponent)
SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "poly": lambda t, power: (1.0 - t) ** power,  # DeepLab's, standard for FCNs
    "cosine": lambda t, power: 0.5 * (1.0 + math.cos(math.pi * t)),
    "constant": lambda t, power: 1.0,  # the chapter's
}


def param_groups(model: torch.nn.Module, backbone_lr: float, lr: float) -> list[dict[str, Any]]:
    """The backbone's parameters at ``backbone_lr * lr``, the new layers at ``lr``.

    An ImageNet body only needs to adapt, while the score and upsampling layers start from
    scratch: a smaller step for the body keeps what ImageNet taught it. With
    ``backbone_lr == 1`` there is one group, as in runs written before the body had its own
    lr, so that those resume; the new layers' group is always the last.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if backbone_lr == 1:
        return [{"params": trainable, "lr": lr}]
    net = getattr(model, "module", model)  # DDP-wrapped or not
    body = {id(p) for p in net.backbone.parameters()}
    return [{"params": [p for p in trainable if id(p) in body], "lr": lr * backbone_lr},
            {"params": [p for p in trainable if id(p) not in body], "lr": lr}]


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (the chapter's; momentum 0 in the d2l recipe) or AdamW over all parameters, the
    backbone's at ``config.backbone_lr`` times the lr (:func:`param_groups`)."""
    params = param_groups(model, config.backbone_lr, config.lr)
    # The fused kernels update every parameter in one pass per tensor instead of a chain of
    # foreach ops, about half the time of an AdamW step on a CPU. Same arithmetic, same
    # state_dict layout.
    device = next(model.parameters()).device
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    if config.optimizer not in OPTIMIZERS:
        raise UnknownNameError("optimizer", config.optimizer, OPTIMIZERS)
    return OPTIMIZERS[config.optimizer](params, config, **fused)


def lr_factor(step: int, total: int, schedule: str, warmup: int, power: float = 0.9) -> float:
    """Multiplier of the base lr at optimizer step ``step`` of ``total``.

    A linear warm-up over ``warmup`` steps (from 1/warmup of the lr) protects the freshly
    initialised decoder from large early updates; then poly ``(1 - t)^power`` (DeepLab's
    schedule, standard for FCNs), a half cosine, or constant (the chapter).
    """
    if schedule not in SCHEDULES:
        raise UnknownNameError("schedule", schedule, SCHEDULES)
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    return SCHEDULES[schedule](t, power)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration LambdaLR; its state_dict is plain (the lambda itself is not saved)."""
    def factor(step: int) -> float:
        return lr_factor(step, total_steps, config.schedule, config.warmup_iters,
                         config.poly_power)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def median_frequency_weights(dataset: Any, num_classes: int, ignore_index: int = IGNORE_INDEX,
                             limit: int | None = None) -> torch.Tensor:
    """Median frequency balancing (Eigen & Fergus 2015; SegNet): ``median(f) / f_c``.

    ``f_c`` = pixels of class ``c`` / pixels of the training images that contain ``c``,
    counted on the raw (un-augmented) training masks. Classes absent from the training
    masks get weight 1 (they never occur as targets anyway).
    """
    per_image, sizes = class_pixel_counts(dataset, num_classes, ignore_index, limit)
    counts = per_image.sum(axis=0).astype(np.float64)
    image_pixels = ((per_image > 0) * sizes[:, None]).sum(axis=0).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes, dtype=np.float64)
    if present.any():
        freq = counts[present] / image_pixels[present]
        weights[present] = np.median(freq) / freq
    return torch.tensor(weights, dtype=torch.float32)
