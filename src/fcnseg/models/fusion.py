"""Inference-time BatchNorm folding: each ``conv -> BatchNorm`` pair becomes one conv.

In eval mode a BatchNorm is a per-channel affine map ``y = a * x + b`` with fixed ``a, b``
(from its running statistics), so it can be folded into the convolution before it:
``w' = a * w``, ``bias' = a * bias + b``. The result computes the same function (to float
rounding) with one pass over each feature map instead of two: FCN-8s / ResNet-18 inference
at 320 x 480 ran ~5 % faster on this project's 2-core CPU (benchmarks/RESULTS.md). Training
needs the real BatchNorm (batch statistics), so only evaluation and prediction fold.

Pairs are found by torchvision's ResNet naming, which is what every backbone in
:data:`fcnseg.models.backbones.BACKBONES` uses: siblings ``convK`` / ``bnK`` (the stem and
every block call ``bnK(convK(x))``) and ``Sequential(conv, bn, ...)`` (the downsample path).
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names of ``(conv, bn)`` children of ``module`` whose BatchNorm directly follows the conv."""
    children = dict(module.named_children())
    found = []
    if isinstance(module, nn.Sequential):
        names = list(children)
        found += list(zip(names, names[1:], strict=False))
    else:
        found += [(name, "bn" + name[4:]) for name in children if name.startswith("conv")]
    return [
        (conv, bn) for conv, bn in found
        if isinstance(children.get(conv), nn.Conv2d)
        and isinstance(children.get(bn), nn.BatchNorm2d)
        and children[bn].num_features == children[conv].out_channels
    ]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every ``conv -> BatchNorm2d`` pair folded.

    The folded BatchNorm becomes ``nn.Identity``; ``model`` itself is left unchanged.
    Returns the copy, in eval mode on the same device (callers set the memory format).
    """
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        for conv_name, bn_name in _pairs(module):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(module, bn_name, nn.Identity())
    return folded
