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

Written in numpy, so that an exported model predicts with no PyTorch installed; a runtime
is any callable from ``float32 N x 3 x H x W`` pixels to ``N x C x H x W`` probabilities.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import OptionError, UnknownNameError

MODES = ("pad", "slide")
# The chapter's training crop (the d2l recipe trains on it: training/config.py reads it here):
# a tile the size of what the network saw in training.
DEFAULT_TILE = (320, 480)
DEFAULT_TILE_BATCH = 4  # tiles per forward pass


Forward = Callable[[np.ndarray], np.ndarray]  # N x 3 x H x W -> N x C x H x W probs


@dataclass(frozen=True)
class InferenceOptions:
    """How whole images are predicted; checked once, here, for every caller.

    ``mode`` "pad" or "slide"; ``tile``/``stride`` (H, W) of the sliding window (stride
    default: 2/3 of the tile); ``tile_batch`` tiles per forward; ``flip`` and ``scales``
    test-time augmentation; ``max_whole_pixels`` sends larger images to tiles whatever
    memory is free (a service's bound per request; 0: the free memory decides). A bad value
    raises :class:`FcnsegError` naming it.
    """

    mode: str = "pad"
    tile: tuple[int, int] = DEFAULT_TILE
    stride: tuple[int, int] | None = None
    tile_batch: int = DEFAULT_TILE_BATCH
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    max_whole_pixels: int = 0  # larger images go by tiles, whatever memory is free (0: none)

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
        if self.max_whole_pixels < 0:
            raise OptionError(f"max whole pixels {self.max_whole_pixels} must be >= 0")
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


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``N x C x H x W`` float32 to ``size`` (half-pixel centres, no
    antialias: PyTorch's ``interpolate(mode="bilinear", align_corners=False)``)."""
    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0)
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float32)

    top, bottom, wy = axis(x.shape[-2], size[0])
    left, right, wx = axis(x.shape[-1], size[1])
    wy = wy[:, None]
    rows = x[..., top, :] * (1 - wy) + x[..., bottom, :] * wy
    return rows[..., left] * (1 - wx) + rows[..., right] * wx


def _positions(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering ``[0, size)``; the last tile is flush with the far edge."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _slide(forward: Forward, x: np.ndarray, opts: InferenceOptions,
           fill: np.ndarray | None) -> np.ndarray:
    """Sliding-window probabilities of a batch of equal-sized images ``x`` (N x 3 x H x W)."""
    n, _, h, w = x.shape
    th, tw = opts.tile
    sh, sw = opts.window_stride
    # Images smaller than a tile are padded with the mean colour (``fill``; zero for
    # normalised inputs), the least surprising filler. The padding is cropped off at the end.
    ph, pw = max(h, th), max(w, tw)
    if (ph, pw) != (h, w):
        padded = np.empty((n, 3, ph, pw), np.float32)
        padded[...] = 0 if fill is None else fill
        padded[:, :, :h, :w] = x
        x = padded
    ys, xs = _positions(ph, th, sh), _positions(pw, tw, sw)
    jobs = [(i, y, xx) for i in range(n) for y in ys for xx in xs]
    total: np.ndarray | None = None
    count = np.zeros((ph, pw), np.float32)
    for y in ys:
        for xx in xs:
            count[y:y + th, xx:xx + tw] += 1
    for start in range(0, len(jobs), opts.tile_batch):
        chunk = jobs[start:start + opts.tile_batch]
        probs = forward(np.stack([x[i, :, y:y + th, xx:xx + tw] for i, y, xx in chunk]))
        if total is None:  # the class count is only known after the first forward
            total = np.zeros((n, probs.shape[1], ph, pw), np.float32)
        for (i, y, xx), p in zip(chunk, probs, strict=True):
            total[i, :, y:y + th, xx:xx + tw] += p
    assert total is not None
    total /= count
    return total[:, :, :h, :w]


def slide_labels(forward: Forward, image: np.ndarray, opts: InferenceOptions,
                 fill: np.ndarray | None = None) -> np.ndarray:
    """Class ids (``H x W`` uint8) of one ``H x W x 3`` uint8 image by sliding tiles, one row
    of tiles at a time: the probabilities of :func:`predict_batch`'s ``"slide"``, but only a
    band one tile high is kept as floats, so memory beyond the image itself is bounded by
    the tile and the width, not the image. ``opts.flip`` averages each tile with its mirror.
    """
    h, w = image.shape[:2]
    th, tw = opts.tile
    sh, sw = opts.window_stride
    ph, pw = max(h, th), max(w, tw)
    ys, xs = _positions(ph, th, sh), _positions(pw, tw, sw)
    out = np.empty((h, w), np.uint8)
    total: np.ndarray | None = None  # C x th x pw: rows [y, y + th) of the running sums
    count = np.zeros((th, pw), np.float32)
    for row, y in enumerate(ys):
        for start in range(0, len(xs), opts.tile_batch):
            cols = xs[start:start + opts.tile_batch]
            tiles = np.stack([_tile(image, y, x, opts.tile, fill) for x in cols])
            probs = forward(np.concatenate([tiles, tiles[..., ::-1]]) if opts.flip else tiles)
            if opts.flip:
                probs = (probs[:len(cols)] + probs[len(cols):, :, :, ::-1]) / 2
            if total is None:  # the class count is only known after the first forward
                total = np.zeros((probs.shape[1], th, pw), np.float32)
            for x, p in zip(cols, probs, strict=True):
                total[:, :, x:x + tw] += p
                count[:, x:x + tw] += 1
        assert total is not None
        done = (ys[row + 1] if row + 1 < len(ys) else ph) - y  # rows no later tile reaches
        rows = min(done, h - y)
        if rows > 0:
            out[y:y + rows] = (total[:, :rows, :w] / count[:rows, :w]).argmax(0)
        total = np.concatenate([total[:, done:], np.zeros_like(total[:, :done])], axis=1)
        count = np.concatenate([count[done:], np.zeros_like(count[:done])])
    return out


def _tile(image: np.ndarray, y: int, x: int, size: tuple[int, int],
          fill: np.ndarray | None) -> np.ndarray:
    """The ``3 x th x tw`` float32 tile of an ``H x W x 3`` uint8 image at (y, x), padded
    with ``fill`` (3 x 1 x 1; None: zero) where the image is smaller than the tile."""
    th, tw = size
    part = image[y:y + th, x:x + tw].transpose(2, 0, 1)
    if part.shape[1:] == (th, tw):
        return part.astype(np.float32)
    tile = np.empty((3, th, tw), np.float32)
    tile[...] = 0 if fill is None else fill
    tile[:, :part.shape[1], :part.shape[2]] = part
    return tile


def predict_batch(forward: Forward, x: np.ndarray, opts: InferenceOptions,
                  fill: np.ndarray | None = None) -> np.ndarray:
    """Probabilities (N x C x H x W, float32) of equal-sized images ``x`` under ``opts``.

    ``forward`` maps image batches to probabilities; ``fill`` (3 x 1 x 1) is the value that
    pads images smaller than a sliding tile (None: zero, the mean of normalised inputs).
    Flipped and rescaled views are mapped back to the image and averaged as probabilities.
    """
    h, w = x.shape[-2:]
    total: np.ndarray | None = None
    views = 0
    for scale in opts.scales:
        xs = x
        if scale != 1.0:
            xs = resize_bilinear(x, (max(1, round(h * scale)), max(1, round(w * scale))))
        for flipped in (False, True) if opts.flip else (False,):
            # A copy, not ascontiguousarray: numpy calls a one-pixel-wide flipped view
            # contiguous and returns it as is, negative stride and all (PyTorch refuses it).
            xv = xs[..., ::-1].copy() if flipped else xs
            p = forward(xv) if opts.mode == "pad" else _slide(forward, xv, opts, fill)
            if flipped:
                p = p[..., ::-1]
            if p.shape[-2:] != (h, w):
                p = resize_bilinear(p, (h, w))
            total = p if total is None else total + p
            views += 1
    assert total is not None
    return total / views if views > 1 else total


def predict_grouped(forward: Forward, images: Sequence[np.ndarray], opts: InferenceOptions,
                    fill: np.ndarray | None = None) -> list[np.ndarray]:
    """:func:`predict_batch` over ``3 x H x W`` images of any sizes, equal sizes batched."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"expected 3 x H x W images, got {tuple(img.shape)}")
        groups[tuple(img.shape)].append(i)
    results: list[np.ndarray | None] = [None] * len(images)
    for idx in groups.values():
        batch = np.stack([images[i] for i in idx]).astype(np.float32, copy=False)
        for i, p in zip(idx, predict_batch(forward, batch, opts, fill), strict=True):
            results[i] = p
    return results  # type: ignore[return-value]
