"""Inference-time BatchNorm folding: each ``conv -> BatchNorm`` pair becomes one conv.

In eval mode a BatchNorm is a per-channel affine map ``y = a * x + b`` with fixed ``a, b``
(from its running statistics), so it can be folded into the convolution before it:
``w' = a * w``, ``bias' = a * bias + b``. The result computes the same function (to float
rounding) with one pass over each feature map instead of two. Training needs the real
BatchNorm (batch statistics), so only evaluation, prediction and export fold.

Pairs are a ``Conv2d`` child registered directly before a ``BatchNorm2d`` child of the same
width, which is how every body in :data:`fcnseg.models.backbones.BACKBONES` is written:
torchvision's ResNets (``convK`` / ``bnK``, ``Sequential(conv, bn)`` in the downsample path)
and timm's EfficientNet-Lite (``conv_stem`` / ``bn1``, ``conv_pw`` / ``bn1``, ``conv_dw`` /
``bn2``, ``conv_pwl`` / ``bn3``; both modules call ``bn(conv(x))``). timm's
``BatchNormAct2d`` carries its activation: folding keeps the activation in the
BatchNorm's place.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names of ``(conv, bn)`` children of ``module``: a BatchNorm registered right after a
    conv of its width."""
    children = list(module.named_children())
    return [
        (conv_name, bn_name)
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:], strict=False)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        and bn.num_features == conv.out_channels
    ]


def _after_bn(bn: nn.BatchNorm2d) -> nn.Module:
    """What stays in a folded BatchNorm's place: nothing, or the activation (and drop
    path) that timm's ``BatchNormAct2d`` applies after normalising."""
    rest = [m for name in ("drop", "act") if isinstance(m := getattr(bn, name, None), nn.Module)
            and not isinstance(m, nn.Identity)]
    if not rest:
        return nn.Identity()
    return rest[0] if len(rest) == 1 else nn.Sequential(*rest)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every ``conv -> BatchNorm2d`` pair folded.

    The folded BatchNorm becomes ``nn.Identity`` (or its activation, for timm's
    ``BatchNormAct2d``); ``model`` itself is left unchanged. Returns the copy, in eval mode
    on the same device (callers set the memory format).
    """
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        for conv_name, bn_name in _pairs(module):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(module, bn_name, _after_bn(bn))
    return folded
