"""Whole-image inference: pad-and-crop (exact) or overlapping tiles, with optional TTA.

The D2L chapter predicts a 320 x 480 crop and leaves whole images as an exercise. Two ways:

* ``"pad"`` (default, exact): an FCN pads its input to a multiple of its backbone stride
  (32) and crops the output back, so a whole image of any size is one forward pass.
  Equal-sized images are batched; images of different sizes are grouped by size.
* ``"slide"``: overlapping tiles, batched ``tile_batch`` at a time. Class *probabilities*
  (softmax, fp32) are summed where tiles overlap and divided by a count map before the
  argmax, as the chapter suggests; averaging labels would throw away how sure each tile is.
  Only the image-sized sum/count maps are kept, so memory stays bounded for huge images.

Both return softmax probabilities (fp32), which is what test-time augmentation averages:
horizontal flips and rescaled copies are predicted, mapped back to the image (flip back,
bilinear resize of the probabilities) and averaged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..device import autocast
from ..errors import OptionError, UnknownNameError

MODES = ("pad", "slide")
DEFAULT_TILE = (320, 480)  # 320 x 480, the training crop of the d2l recipe
DEFAULT_TILE_BATCH = 4  # tiles per forward pass


Forward = Callable[[torch.Tensor], torch.Tensor]  # N x 3 x H x W -> N x C x H x W probs


@dataclass(frozen=True)
class InferenceOptions:
    """How whole images are predicted; checked once, here, for every caller.

    ``mode`` "pad" or "slide"; ``tile``/``stride`` (H, W) of the sliding window (stride
    default: 2/3 of the tile); ``tile_batch`` tiles per forward; ``flip`` and ``scales``
    test-time augmentation. A bad value raises :class:`FcnsegError` naming it.
    """

    mode: str = "pad"
    tile: tuple[int, int] = DEFAULT_TILE
    stride: tuple[int, int] | None = None
    tile_batch: int = DEFAULT_TILE_BATCH
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UnknownNameError("inference mode", self.mode, MODES)
        object.__setattr__(self, "tile", (int(self.tile[0]), int(self.tile[1])))
        if self.stride is not None:
            object.__setattr__(self, "stride", (int(self.stride[0]), int(self.stride[1])))
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        tile, stride = self.tile, self.window_stride
        if min(tile) < 1 or min(stride) < 1:
            raise OptionError(f"tile {list(tile)} and stride {list(stride)} must be positive")
        if stride[0] > tile[0] or stride[1] > tile[1]:
            raise OptionError(f"stride {list(stride)} is larger than tile {list(tile)}: pixels "
                              "between tiles would get no prediction; use a smaller stride")
        if self.tile_batch < 1:
            raise OptionError(f"tile batch {self.tile_batch} must be at least 1")
        if not self.scales or min(self.scales) <= 0:
            raise OptionError(f"scales {list(self.scales)} must all be positive, "
                              "e.g. 0.75 1 1.25")

    @property
    def window_stride(self) -> tuple[int, int]:
        """The sliding stride: as given, else two thirds of the tile (so every pixel away
        from the border is seen by at least two tiles in each direction it can be)."""
        if self.stride is not None:
            return self.stride
        return max(1, self.tile[0] * 2 // 3), max(1, self.tile[1] * 2 // 3)


def model_forward(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> Forward:
    """The :data:`Forward` of a PyTorch segmentation model: softmax probabilities, fp32.

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
        return out.softmax(1)
    return forward


def _positions(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering ``[0, size)``; the last tile is flush with the far edge."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _slide(forward: Forward, x: torch.Tensor, opts: InferenceOptions,
           fill: torch.Tensor | None) -> torch.Tensor:
    """Sliding-window probabilities of a batch of equal-sized images ``x`` (N x 3 x H x W)."""
    n, _, h, w = x.shape
    th, tw = opts.tile
    sh, sw = opts.window_stride
    # Images smaller than a tile are padded with the mean colour (``fill``; zero for
    # normalised inputs), the least surprising filler. The padding is cropped off at the end.
    ph, pw = max(h, th), max(w, tw)
    if (ph, pw) != (h, w):
        x = F.pad(x if fill is None else x - fill, (0, pw - w, 0, ph - h))
        x = x if fill is None else x + fill
    ys, xs = _positions(ph, th, sh), _positions(pw, tw, sw)
    jobs = [(i, y, xx) for i in range(n) for y in ys for xx in xs]
    total: torch.Tensor | None = None
    count = torch.zeros((1, 1, ph, pw), device=x.device)
    for y in ys:
        for xx in xs:
            count[..., y:y + th, xx:xx + tw] += 1
    for start in range(0, len(jobs), opts.tile_batch):
        chunk = jobs[start:start + opts.tile_batch]
        tiles = torch.stack([x[i, :, y:y + th, xx:xx + tw] for i, y, xx in chunk])
        probs = forward(tiles)
        if total is None:  # the class count is only known after the first forward
            total = torch.zeros((n, probs.shape[1], ph, pw), device=probs.device)
        for (i, y, xx), p in zip(chunk, probs, strict=True):
            total[i, :, y:y + th, xx:xx + tw] += p
    assert total is not None
    return (total / count.to(total.device))[:, :, :h, :w]


def predict_batch(forward: Forward, x: torch.Tensor, opts: InferenceOptions,
                  fill: torch.Tensor | None = None) -> torch.Tensor:
    """Probabilities (N x C x H x W, fp32) of equal-sized images ``x`` under ``opts``.

    ``forward`` maps image batches to probabilities; ``fill`` (3 x 1 x 1) is the value that
    pads images smaller than a sliding tile (None: zero, the mean of normalised inputs).
    Flipped and rescaled views are mapped back to the image and averaged as probabilities.
    """
    h, w = x.shape[-2:]
    total: torch.Tensor | None = None
    views = 0
    for scale in opts.scales:
        xs = x
        if scale != 1.0:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if opts.flip else (False,):
            xv = xs.flip(-1) if flipped else xs
            p = forward(xv) if opts.mode == "pad" else _slide(forward, xv, opts, fill)
            if flipped:
                p = p.flip(-1)
            if p.shape[-2:] != (h, w):
                p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
            total = p if total is None else total.add_(p)
            views += 1
    assert total is not None
    return total / views if views > 1 else total


def predict_grouped(forward: Forward, images: Sequence[torch.Tensor], opts: InferenceOptions,
                    device: torch.device | str = "cpu",
                    fill: torch.Tensor | None = None) -> list[torch.Tensor]:
    """:func:`predict_batch` over ``3 x H x W`` images of any sizes, equal sizes batched."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"expected 3 x H x W images, got {tuple(img.shape)}")
        groups[tuple(img.shape)].append(i)
    results: list[torch.Tensor | None] = [None] * len(images)
    for idx in groups.values():
        batch = torch.stack([images[i] for i in idx]).to(device).float()
        for i, p in zip(idx, predict_batch(forward, batch, opts, fill), strict=True):
            results[i] = p
    return results  # type: ignore[return-value]


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


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
    device = _model_device(model)
    forward = model_forward(model, dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if isinstance(images, torch.Tensor):
                if images.dim() != 4 or images.shape[1] != 3:
                    raise ValueError(f"expected N x 3 x H x W images, got {tuple(images.shape)}")
                return predict_batch(forward, images.to(device).float(), opts)
            return predict_grouped(forward, images, opts, device)
    finally:
        model.train(was_training)


def predict_mask(model: torch.nn.Module, images: torch.Tensor | Sequence[torch.Tensor],
                 **options) -> torch.Tensor | list[torch.Tensor]:
    """Class indices (int64) of whole images: ``N x H x W``, or a list of ``H x W``.

    Takes the same options as :func:`predict_probabilities`.
    """
    probs = predict_probabilities(model, images, **options)
    if isinstance(probs, torch.Tensor):
        return probs.argmax(1)
    return [p.argmax(0) for p in probs]
