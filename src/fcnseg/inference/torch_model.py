"""PyTorch models on the inference path: a checkpoint's runtime and the functional API.

The only inference module that imports PyTorch; :mod:`.runtimes` loads it for ``.pt``
checkpoints and :meth:`Predictor.from_model`, so that exported models predict without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import model_from_checkpoint
from ..data.meta import DatasetMeta
from ..data.transforms import Normalize
from ..device import autocast, resolve_precision, select_device
from ..models.batchnorm import fold_batchnorm
from .tiling import (
    DEFAULT_TILE,
    DEFAULT_TILE_BATCH,
    InferenceOptions,
    predict_batch,
    predict_grouped,
)


def model_forward(model: torch.nn.Module, dtype: torch.dtype = torch.float32,
                  labels: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """Softmax probabilities (fp32) of a PyTorch segmentation model, from normalised images;
    with ``labels`` their argmax instead (uint8 class ids, no softmax).

    ``dtype`` bf16/fp16 runs the model under autocast. Outputs smaller than the input
    (models that do not crop back themselves) are upsampled bilinearly.
    """
    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device, dtype):
            out = model(x)
        if isinstance(out, dict):
            out = out["out"]
        out = out.float()
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out.argmax(1).to(torch.uint8) if labels else out.softmax(1)
    return forward


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s weights live (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _numpy_forward(model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                   prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
                   labels: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """``model_forward`` between numpy arrays: the form :mod:`.functional` calls."""
    forward = model_forward(model, dtype, labels)

    def run(x: np.ndarray) -> np.ndarray:
        was_training = model.training  # validation during training: restore it after
        model.eval()
        try:
            with torch.inference_mode():
                return forward(prepare(torch.from_numpy(x).to(device))).cpu().numpy()
        finally:
            model.train(was_training)
    return run


class TorchRuntime:
    """A PyTorch model with its normalisation, on ``device`` under ``dtype`` autocast."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, meta: DatasetMeta, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
        normalize = Normalize(meta.mean, meta.std)  # the training transform's x * a - b
        a, b = normalize.a.to(device), normalize.b.to(device)
        self._run = _numpy_forward(model, device, dtype, lambda x: x.mul(a).sub_(b))
        self._labels = _numpy_forward(model, device, dtype, lambda x: x.mul(a).sub_(b), True)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._run(x)

    def labels(self, x: np.ndarray) -> np.ndarray:
        """Class ids ``N x H x W`` uint8, the argmax taken on the model's device."""
        return self._labels(x)


def load_torch_runtime(path: Path, device: str, precision: str
                       ) -> tuple[TorchRuntime, DatasetMeta, dict[str, Any], str]:
    """A checkpoint's model, BatchNorm folded, channels-last: ``(runtime, meta, info, why)``."""
    dev = select_device(device)
    dtype, reason = resolve_precision(dev, precision)
    model, meta, checkpoint = model_from_checkpoint(path, dev)
    # BatchNorm folded into the convs (same outputs, fewer passes); channels-last is
    # the fast layout for convolutions on CPUs (oneDNN) and tensor cores.
    model = fold_batchnorm(model).to(memory_format=torch.channels_last)
    info = {"model_args": checkpoint["model_args"], "config": checkpoint.get("config") or {}}
    return TorchRuntime(model, meta, dev, dtype), meta, info, f"torch on {dev}, {reason}"


def predict_probabilities(
    model: torch.nn.Module, images: torch.Tensor | Sequence[torch.Tensor], mode: str = "pad",
    tile: Sequence[int] = DEFAULT_TILE, stride: Sequence[int] | None = None,
    tile_batch: int = DEFAULT_TILE_BATCH,
    flip: bool = False, scales: Sequence[float] = (1.0,), dtype: torch.dtype = torch.float32,
) -> torch.Tensor | list[torch.Tensor]:
    """Class scores of whole *normalised* images: softmax probabilities, fp32, each image's size.

    The functional form of :class:`fcnseg.Predictor` for a PyTorch model. ``images`` is a
    normalised ``N x 3 x H x W`` tensor (returns ``N x C x H x W``) or a list of
    ``3 x H x W`` tensors of any sizes (returns a list of ``C x H x W``; equal sizes are
    batched together). Scores live on the model's device. ``dtype`` bf16/fp16 runs the
    model under autocast; the scores are averaged in fp32 either way.
    """
    opts = InferenceOptions(mode, tuple(tile), None if stride is None else tuple(stride),
                            tile_batch, flip, tuple(scales))
    device = model_device(model)
    forward = _numpy_forward(model, device, dtype)

    def tensor(p: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(p)).to(device)

    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected N x 3 x H x W images, got {tuple(images.shape)}")
        return tensor(predict_batch(forward, images.detach().float().cpu().numpy(), opts))
    arrays = [img.detach().float().cpu().numpy() for img in images]
    return [tensor(p) for p in predict_grouped(forward, arrays, opts)]


def predict_mask(model: torch.nn.Module, images: torch.Tensor | Sequence[torch.Tensor],
                 **options: Any) -> torch.Tensor | list[torch.Tensor]:
    """Class indices (int64) of whole images: ``N x H x W``, or a list of ``H x W``.

    Takes the same options as :func:`predict_probabilities`.
    """
    probs = predict_probabilities(model, images, **options)
    if isinstance(probs, torch.Tensor):
        return probs.argmax(1)
    return [p.argmax(0) for p in probs]
