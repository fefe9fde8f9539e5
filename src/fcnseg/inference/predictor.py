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
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..device import autocast

MODES = ("pad", "slide")
DEFAULT_TILE = (320, 480)  # the chapter's crop size


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _forward(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Softmax probabilities (fp32) of ``model`` on ``x``, at ``x``'s size."""
    x = x.contiguous(memory_format=torch.channels_last)
    with autocast(x.device, dtype):
        out = model(x)
    if isinstance(out, dict):
        out = out["out"]
    out = out.float()
    if out.shape[-2:] != x.shape[-2:]:
        # Models that do not crop back themselves (e.g. stride-8 logits): upsample here.
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out.softmax(1)


def _positions(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering ``[0, size)``; the last tile is flush with the far edge."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _slide(model: torch.nn.Module, x: torch.Tensor, tile: tuple[int, int],
           stride: tuple[int, int], tile_batch: int, dtype: torch.dtype) -> torch.Tensor:
    """Sliding-window probabilities of a batch of equal-sized images ``x`` (N x 3 x H x W)."""
    n, _, h, w = x.shape
    th, tw = tile
    # Images smaller than a tile are zero-padded: after normalisation zero is the mean
    # colour, the least surprising filler. The padding is cropped off at the end.
    ph, pw = max(h, th), max(w, tw)
    if (ph, pw) != (h, w):
        x = F.pad(x, (0, pw - w, 0, ph - h))
    ys, xs = _positions(ph, th, stride[0]), _positions(pw, tw, stride[1])
    jobs = [(i, y, xx) for i in range(n) for y in ys for xx in xs]
    total: torch.Tensor | None = None
    count = torch.zeros((1, 1, ph, pw), device=x.device)
    for y in ys:
        for xx in xs:
            count[..., y:y + th, xx:xx + tw] += 1
    for start in range(0, len(jobs), tile_batch):
        chunk = jobs[start:start + tile_batch]
        tiles = torch.stack([x[i, :, y:y + th, xx:xx + tw] for i, y, xx in chunk])
        probs = _forward(model, tiles, dtype)
        if total is None:  # the class count is only known after the first forward
            total = torch.zeros((n, probs.shape[1], ph, pw), device=x.device)
        for (i, y, xx), p in zip(chunk, probs, strict=True):
            total[i, :, y:y + th, xx:xx + tw] += p
    assert total is not None
    return (total / count)[:, :, :h, :w]


def _predict_same_size(model: torch.nn.Module, x: torch.Tensor, mode: str,
                       tile: tuple[int, int], stride: tuple[int, int], tile_batch: int,
                       flip: bool, scales: Sequence[float], dtype: torch.dtype) -> torch.Tensor:
    h, w = x.shape[-2:]
    total: torch.Tensor | None = None
    views = 0
    for scale in scales:
        xs = x
        if scale != 1.0:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            xv = xs.flip(-1) if flipped else xs
            if mode == "pad":
                p = _forward(model, xv, dtype)
            else:
                p = _slide(model, xv, tile, stride, tile_batch, dtype)
            if flipped:
                p = p.flip(-1)
            if p.shape[-2:] != (h, w):
                p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
            total = p if total is None else total.add_(p)
            views += 1
    assert total is not None
    return total / views if views > 1 else total


def _check_options(mode: str, tile: Sequence[int], stride: Sequence[int] | None,
                   tile_batch: int, scales: Sequence[float]) -> tuple[tuple[int, int],
                                                                  tuple[int, int]]:
    if mode not in MODES:
        raise ValueError(f"unknown inference mode {mode!r}: choose one of {', '.join(MODES)}")
    t = (int(tile[0]), int(tile[1]))
    # Default stride: two thirds of the tile, so every pixel away from the border is
    # seen by at least two tiles in each direction it can be.
    s = (max(1, t[0] * 2 // 3), max(1, t[1] * 2 // 3)) if stride is None else (
        int(stride[0]), int(stride[1]))
    if min(t) < 1 or min(s) < 1:
        raise ValueError(f"tile {t} and stride {s} must be positive")
    if s[0] > t[0] or s[1] > t[1]:
        raise ValueError(f"stride {s} larger than tile {t} would leave pixels unpredicted")
    if tile_batch < 1:
        raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive, got {list(scales)}")
    return t, s


def predict_logits(model: torch.nn.Module, images: torch.Tensor | Sequence[torch.Tensor],
                   mode: str = "pad", tile: Sequence[int] = DEFAULT_TILE,
                   stride: Sequence[int] | None = None, tile_batch: int = 4,
                   flip: bool = False, scales: Sequence[float] = (1.0,),
                   dtype: torch.dtype = torch.float32) -> torch.Tensor | list[torch.Tensor]:
    """Class scores of whole images: softmax probabilities, fp32, at each image's size.

    ``images`` is a normalised ``N x 3 x H x W`` tensor (returns ``N x C x H x W``) or a
    list of ``3 x H x W`` tensors of any sizes (returns a list of ``C x H x W``; equal
    sizes are batched together). Scores live on the model's device. ``dtype`` bf16/fp16
    runs the model under autocast; the scores are averaged in fp32 either way.
    """
    t, s = _check_options(mode, tile, stride, tile_batch, scales)
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if isinstance(images, torch.Tensor):
                if images.dim() != 4 or images.shape[1] != 3:
                    raise ValueError(f"expected N x 3 x H x W images, got {tuple(images.shape)}")
                return _predict_same_size(model, images.to(device).float(), mode, t, s,
                                          tile_batch, flip, scales, dtype)
            groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
            for i, img in enumerate(images):
                if img.dim() != 3 or img.shape[0] != 3:
                    raise ValueError(f"expected 3 x H x W images, got {tuple(img.shape)}")
                groups[tuple(img.shape)].append(i)
            results: list[torch.Tensor | None] = [None] * len(images)
            for idx in groups.values():
                batch = torch.stack([images[i] for i in idx]).to(device).float()
                probs = _predict_same_size(model, batch, mode, t, s, tile_batch, flip,
                                           scales, dtype)
                for i, p in zip(idx, probs, strict=True):
                    results[i] = p
            return results  # type: ignore[return-value]
    finally:
        model.train(was_training)


def predict_mask(model: torch.nn.Module, images: torch.Tensor | Sequence[torch.Tensor],
                 **options) -> torch.Tensor | list[torch.Tensor]:
    """Class indices (int64) of whole images: ``N x H x W``, or a list of ``H x W``.

    Takes the same options as :func:`predict_logits`.
    """
    probs = predict_logits(model, images, **options)
    if isinstance(probs, torch.Tensor):
        return probs.argmax(1)
    return [p.argmax(0) for p in probs]
