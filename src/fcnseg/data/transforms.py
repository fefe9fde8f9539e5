"""Joint image/mask transforms: random scale, crop (with ignore padding), flip, jitter, normalise.

Inputs are ``(uint8 H x W x 3 ndarray, integer H x W ndarray)``; outputs are
``(float32 Tensor 3 x h x w, int64 Tensor h x w)``. Written with PIL + numpy instead of
torchvision.transforms.v2 because on a 2-core CPU the cheapest plan matters more than
generality: we pick the crop window in *scaled* coordinates first and then resize only the
source region that lands in it (``PIL.Image.resize(box=...)``), so a 2x up-scale of a
375 x 500 VOC image never materialises the 750 x 1000 intermediate. All geometry happens on
uint8 data; the float conversion, jitter and normalisation run once on the final crop.

Alignment: the image (bilinear) and the mask (nearest) use the same pixel-centre mapping
``src = (dst + offset + 0.5) / scale``, so label ``i`` stays on the pixels it labelled.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .meta import DatasetMeta


class Normalize:
    """uint8 HWC -> normalised float CHW; the mask becomes an int64 tensor (no resizing)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        # (x / 255 - mean) / std == x * a - b: one multiply-add per element.
        self.a = torch.tensor([1.0 / (255.0 * s) for s in std]).view(3, 1, 1)
        self.b = torch.tensor([m / s for m, s in zip(mean, std, strict=True)]).view(3, 1, 1)

    def image(self, img: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Normalise a uint8 HWC array (or a float CHW tensor in 0-255) to float CHW."""
        if isinstance(img, np.ndarray):
            img = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
        return img.mul_(self.a).sub_(self.b) if img.dtype == torch.float32 else img

    def __call__(self, img: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(img, mask)
        return self.image(img), torch.from_numpy(np.asarray(mask, dtype=np.int64))


def _check_pair(img: np.ndarray, mask: np.ndarray) -> None:
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 image, got {img.dtype} {img.shape}")
    if mask.shape != img.shape[:2]:
        raise ValueError(f"image {img.shape[:2]} and mask {mask.shape} sizes differ")


def _axis_window(size: int, scale: float, crop: int | None,
                 focus: int | None = None) -> tuple[int, int, int, int]:
    """Pick a crop window along one axis of the *scaled* image.

    Returns ``(scaled_size, offset, valid_start, valid_stop)``: output pixel ``d`` shows scaled
    pixel ``offset + d``; only ``valid_start <= d < valid_stop`` lie inside the image (the rest
    is padding). A window larger than the image is placed at a random offset so the padding
    is not always on the same side. ``focus`` (a source pixel) lands at a random place inside
    the window.
    """
    scaled = max(1, int(round(size * scale)))
    out = scaled if crop is None else crop
    lo, hi = min(0, scaled - out), max(0, scaled - out)
    if focus is not None:
        at = min(int((focus + 0.5) * scaled / size), scaled - 1)  # the focus, scaled
        lo, hi = max(lo, at - out + 1), min(hi, at)
    offset = random.randint(lo, hi)
    return scaled, offset, max(0, -offset), min(out, scaled - offset)


class TrainTransform:
    """Random scale -> random crop (pad image with the mean, mask with ignore) -> flip ->
    colour jitter -> normalise. ``crop=None`` keeps the whole (scaled) image. The defaults
    change nothing; a recipe's values come from its TrainConfig (fcnseg.training.config)."""

    def __init__(
        self,
        meta: DatasetMeta,
        crop: tuple[int, int] | None = None,
        scale: tuple[float, float] | None = None,
        flip: bool = False,
        color_jitter: float = 0.0,
    ) -> None:
        if crop is not None and (len(crop) != 2 or min(crop) < 1):
            raise ValueError(f"crop must be (height, width) >= 1, got {crop}")
        if scale is not None and not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
        if not 0.0 <= color_jitter < 1.0:
            raise ValueError(f"color_jitter must be in [0, 1), got {color_jitter}")
        self.crop = None if crop is None else (int(crop[0]), int(crop[1]))
        self.scale, self.flip, self.color_jitter = scale, flip, float(color_jitter)
        self.ignore_index = meta.ignore_index
        self.norm = Normalize(meta.mean, meta.std)

    def __repr__(self) -> str:
        return (f"TrainTransform(crop={self.crop}, scale={self.scale}, flip={self.flip}, "
                f"color_jitter={self.color_jitter})")

    def __call__(self, img: np.ndarray, mask: np.ndarray, focus: tuple[int, int] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """One augmented pair; the crop contains source pixel ``focus = (y, x)`` if given."""
        _check_pair(img, mask)
        h, w = mask.shape
        s = random.uniform(*self.scale) if self.scale is not None else 1.0
        ch, cw = self.crop if self.crop is not None else (None, None)
        focus_y, focus_x = (None, None) if focus is None else focus
        sh, oy, y0, y1 = _axis_window(h, s, ch, focus_y)
        sw, ox, x0, x1 = _axis_window(w, s, cw, focus_x)
        out_h, out_w = (sh, sw) if self.crop is None else self.crop
        fy, fx = sh / h, sw / w  # exact per-axis factors after rounding the scaled size

        # A flip mirrors the window: reverse the source columns and the valid span, so the
        # flip costs nothing (no extra pass over the output).
        flip = self.flip and random.random() < 0.5
        if flip:
            x0, x1 = out_w - x1, out_w - x0

        # Mask: nearest neighbour by direct gathering (no intermediate image at all).
        ys = np.minimum(((np.arange(y0, y1) + oy + 0.5) / fy).astype(np.int64), h - 1)
        cols = np.arange(out_w - x1, out_w - x0)[::-1] if flip else np.arange(x0, x1)
        xs = np.minimum(((cols + ox + 0.5) / fx).astype(np.int64), w - 1)
        out_mask = np.full((out_h, out_w), self.ignore_index, dtype=np.int64)
        out_mask[y0:y1, x0:x1] = mask[ys[:, None], xs[None, :]]

        # Image: resize only the source box that lands in the window (same centre mapping).
        c0, c1 = (out_w - x1, out_w - x0) if flip else (x0, x1)
        box = ((c0 + ox) / fx, (y0 + oy) / fy, (c1 + ox) / fx, (y1 + oy) / fy)
        if (y1 - y0, x1 - x0) == (h, w) and box == (0.0, 0.0, float(w), float(h)):
            part = img
        else:
            part = np.asarray(
                Image.fromarray(img).resize((x1 - x0, y1 - y0), Image.BILINEAR, box=box)
            )
        if flip:
            part = part[:, ::-1]  # copied by the transpose below
        part_t = torch.from_numpy(np.ascontiguousarray(part.transpose(2, 0, 1))).float()
        if self.color_jitter > 0:
            part_t = _jitter(part_t, self.color_jitter)
        part_t = self.norm.image(part_t)
        if (y1 - y0, x1 - x0) == (out_h, out_w):
            return part_t, torch.from_numpy(out_mask)
        # Zero after normalisation == the mean colour: the padding adds no fake colours.
        out_img = torch.zeros((3, out_h, out_w), dtype=torch.float32)
        out_img[:, y0:y1, x0:x1] = part_t
        return out_img, torch.from_numpy(out_mask)


def _jitter(img: torch.Tensor, amount: float) -> torch.Tensor:
    """Random brightness, contrast and saturation (factors in [1-amount, 1+amount])."""
    b, c, s = (random.uniform(1 - amount, 1 + amount) for _ in range(3))
    img = img * b
    gray = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).unsqueeze(0)
    img = gray.mean() + c * (img - gray.mean())
    gray = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).unsqueeze(0)
    img = gray + s * (img - gray)
    return img.clamp_(0.0, 255.0)


def train_transform(
    meta: DatasetMeta,
    crop: tuple[int, int] | None = None,
    scale: tuple[float, float] | None = None,
    flip: bool = False,
    color_jitter: float = 0.0,
) -> TrainTransform:
    """The training transform: random scale, crop, flip and colour jitter, as given (the
    defaults change nothing: a run's values are its TrainConfig's)."""
    return TrainTransform(meta, crop=crop, scale=scale, flip=flip, color_jitter=color_jitter)


def eval_transform(meta: DatasetMeta) -> Normalize:
    """The evaluation transform: whole image, normalisation only."""
    return Normalize(meta.mean, meta.std)
