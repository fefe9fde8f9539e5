"""FCN models: the registry, :func:`build_model` and the upsampling building blocks."""

from __future__ import annotations

from pathlib import Path

from ..errors import UnknownNameError
from .backbones import BACKBONES, FREEZE_STRIDES, build_backbone
from .batchnorm import fold_batchnorm
from .fcn import FCN
from .upsampling import (
    UPSAMPLE_INITS,
    bilinear_kernel,
    bilinear_upsample,
    bilinear_upsampler,
    conv2d_matrix,
    upsampler,
)

# Model name -> output stride (the fusion depth of the skip architecture).
MODELS: dict[str, int] = {"fcn32s": 32, "fcn16s": 16, "fcn8s": 8}


def build_model(
    name: str,
    num_classes: int,
    backbone: str = "resnet18",
    pretrained: bool = False,
    backbone_weights: str | Path | None = None,
    upsample_init: str = "bilinear",
    learnable_upsample: bool = True,
) -> FCN:
    """Build ``name`` ("fcn32s", "fcn16s" or "fcn8s") for ``num_classes`` classes.

    Unknown model, backbone or ``upsample_init`` names raise :class:`UnknownNameError`
    listing the valid ones; ``num_classes < 1`` raises :class:`FcnsegError`. Weights
    that were asked for (``pretrained`` / ``backbone_weights``) but cannot be loaded raise
    :class:`WeightsError`.
    """
    if name not in MODELS:
        raise UnknownNameError("model", name, list(MODELS))
    if backbone not in BACKBONES:
        raise UnknownNameError("backbone", backbone, list(BACKBONES))
    if upsample_init not in UPSAMPLE_INITS:
        raise UnknownNameError("upsample init", upsample_init, UPSAMPLE_INITS)
    return FCN(
        num_classes,
        output_stride=MODELS[name],
        backbone=backbone,
        pretrained=pretrained,
        backbone_weights=backbone_weights,
        upsample_init=upsample_init,
        learnable_upsample=learnable_upsample,
    )


__all__ = [
    "BACKBONES",
    "FREEZE_STRIDES",
    "FCN",
    "MODELS",
    "fold_batchnorm",
    "UPSAMPLE_INITS",
    "bilinear_kernel",
    "bilinear_upsample",
    "bilinear_upsampler",
    "build_backbone",
    "build_model",
    "conv2d_matrix",
    "upsampler",
]
