"""Pictures: colour masks, overlays, palette PNGs, legends, the chapter's figures.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, never
through ``pyplot``: importing fcnseg must not pick or switch a GUI backend, and figures
made in a long training run are freed as soon as they are saved (pyplot keeps them).
Every file is written atomically (temporary file in the same folder, then ``os.replace``)
so an interrupted run never leaves a half-written PNG behind.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .data.io import PNG_LEVEL
from .data.meta import IGNORE_INDEX, voc_colormap
from .fileio import atomic_write

IGNORE_COLOR = voc_colormap()[IGNORE_INDEX]  # VOC's (224, 224, 192), as the mask PNGs
Palette = Sequence[Sequence[int]]


def _np(a: Any) -> np.ndarray:
    """A numpy array of ``a`` (an array, or a tensor on any device: no PyTorch import)."""
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _lut(palette: Palette, ignore_index: int, ignore_color: Sequence[int]) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    lut[: len(pal)] = pal
    if 0 <= ignore_index < 256 and ignore_index >= len(pal):
        lut[ignore_index] = ignore_color
    return lut


def colorize(mask: Any, palette: Palette, ignore_index: int = IGNORE_INDEX,
             ignore_color: Sequence[int] = IGNORE_COLOR) -> np.ndarray:
    """Colour an ``H x W`` label mask: class ``i`` gets ``palette[i]`` -> uint8 ``H x W x 3``."""
    m = _np(mask)
    if m.dtype != np.uint8:  # class ids in a byte index the table as they are
        m = m.astype(np.int64)
    n = len(palette)
    bad = ((m >= n) & (m != ignore_index)) if m.dtype == np.uint8 else \
        (m < 0) | ((m >= n) & (m != ignore_index))
    if bad.any():
        raise ValueError(f"label {int(m[bad][0])} has no colour: palette has {n} classes "
                         f"and ignore index {ignore_index}")
    if not 0 <= ignore_index < 256:
        return np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[m]
    return _lut(palette, ignore_index, ignore_color)[m]


# Overlays are pictures for people: JPEG at this quality looks the same, encodes ~20x faster
# than PNG and is ~5x smaller (benchmarks/RESULTS.md); masks stay lossless PNG.
JPEG_QUALITY = 90
OVERLAY_FORMATS = ("jpg", "png")
OVERLAY_BLOCK = 2**18  # pixels blended at a time: the index copies stay small and in cache


def overlay(image: Any, mask: Any, palette: Palette, alpha: float = 0.5,
            ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Blend the colour mask over a uint8 ``H x W x 3`` image; ignored pixels stay as they are.
    Blended a band of rows at a time: beyond the result, memory does not grow with the image."""
    img = _np(image)
    m = _np(mask)
    if img.shape[:2] != m.shape:
        raise ValueError(f"image {img.shape[:2]} and mask {m.shape} sizes differ")
    if m.dtype != np.uint8 or not 0 <= ignore_index < 256:  # the general, slower path
        colour = colorize(m, palette, ignore_index).astype(np.float32)
        blend = img.astype(np.float32) * (1 - alpha) + colour * alpha
        keep = m == ignore_index
        blend[keep] = img[keep]
        return np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    if m.size and int(m.max()) >= len(palette):
        bad = (m >= len(palette)) & (m != ignore_index)
        if bad.any():
            raise ValueError(f"label {int(m[bad][0])} has no colour: palette has "
                             f"{len(palette)} classes and ignore index {ignore_index}")
    table = _blend_table(tuple(map(tuple, palette)), ignore_index, float(alpha))
    out = np.empty(img.shape, np.uint8)
    rows = max(1, OVERLAY_BLOCK // max(1, img.shape[1]))
    for y in range(0, img.shape[0], rows):
        key = m[y:y + rows].astype(np.intp) << 8  # label * 256 + the pixel's value
        for c in range(3):
            np.take(table[c], key + img[y:y + rows, :, c], out=out[y:y + rows, :, c],
                    mode="clip")  # in range by construction: no checks, no buffer
    return out


@functools.lru_cache(maxsize=16)
def _blend_table(palette: tuple, ignore_index: int, alpha: float) -> np.ndarray:
    """``3 x (256 labels * 256 values)``: each channel's blended value, the same float32
    products and rounding as blending the arrays, looked up (one gather a channel) instead
    of computed; the ignore label's rows give the pixel back unchanged."""
    base = np.arange(256, dtype=np.float32) * (1 - alpha)
    tint = _lut(palette, ignore_index, IGNORE_COLOR).astype(np.float32) * alpha
    table = np.rint(base[None, :, None] + tint[:, None, :]).astype(np.uint8)
    table[ignore_index] = np.arange(256, dtype=np.uint8)[:, None]
    return np.ascontiguousarray(table.transpose(2, 0, 1)).reshape(3, -1)


def denormalize(image: Any, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the normalisation of a ``3 x H x W`` image -> uint8 ``H x W x 3`` for display."""
    t = _np(image).astype(np.float32)
    t = t * np.float32(std).reshape(3, 1, 1) + np.float32(mean).reshape(3, 1, 1)
    return np.rint(np.clip(t, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """The PNG encoding of a PIL image or a uint8 array, in memory."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def save_image(image: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 ``H x W x 3`` array as an image (format from the suffix), atomically."""
    img = Image.fromarray(np.ascontiguousarray(image))
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    options = {"PNG": {"compress_level": PNG_LEVEL}, "JPEG": {"quality": JPEG_QUALITY}}.get(
        fmt, {})
    return atomic_write(path, lambda f: img.save(f, format=fmt, **options))


def new_figure(width: float, height: float):
    """A matplotlib figure on the Agg canvas, without pyplot or a global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # the Agg canvas, set on this figure only (no global backend)
    return fig


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically (format from the suffix)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi,
                                                    bbox_inches="tight"))


def legend_handles(class_names: Sequence[str], palette: Palette) -> list:
    """Matplotlib patches, one per class, for ``ax.legend(handles=...)``."""
    from matplotlib.patches import Patch

    return [Patch(facecolor=np.asarray(c) / 255.0, edgecolor="black", label=name)
            for name, c in zip(class_names, palette, strict=False)]


def legend_figure(class_names: Sequence[str], palette: Palette,
                  path: str | Path | None = None, ncol: int = 4):
    """A figure holding only the legend of class colours; saved when ``path`` is given."""
    rows = math.ceil(len(class_names) / ncol)
    fig = new_figure(2.2 * ncol, 0.35 * rows + 0.3)
    fig.legend(handles=legend_handles(class_names, palette), loc="center", ncol=ncol,
               frameon=False)
    if path is not None:
        save_figure(fig, path)
    return fig


def prediction_grid(images: Sequence[Any], preds: Sequence[Any],
                    truths: Sequence[Any] | None = None, *, meta: Any,
                    path: str | Path | None = None, scale: float = 2.0):
    """The chapter's figure: a column per image; rows image, prediction, ground truth.

    ``images`` are uint8 ``H x W x 3`` arrays, ``preds``/``truths`` label masks, ``meta`` a
    :class:`~fcnseg.data.DatasetMeta` (palette, names, ignore index). A legend is added.
    """
    n = len(images)
    if n == 0 or len(preds) != n or (truths is not None and len(truths) != n):
        raise ValueError("prediction_grid needs as many predictions (and truths) as images")
    rows = [("image", list(images)), ("prediction", list(preds))]
    if truths is not None:
        rows.append(("ground truth", list(truths)))
    fig = new_figure(max(scale * n * 1.4, 6.0), scale * len(rows))
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (label, items) in enumerate(rows):
        for c, item in enumerate(items):
            ax = axes[r][c]
            shown = item if r == 0 else colorize(item, meta.palette, meta.ignore_index)
            ax.imshow(_np(shown))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label)
    # Below the axes; bbox_inches="tight" when saving grows the picture to include it.
    fig.legend(handles=legend_handles(meta.class_names, meta.palette), loc="upper center",
               ncol=min(6, meta.num_classes), frameon=False, fontsize="small",
               bbox_to_anchor=(0.5, 0.02))
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_training_curves(history: Sequence[dict], path: str | Path):
    """Loss and validation pixel accuracy / mIoU by epoch, like the chapter's plots.

    ``history`` rows have ``epoch``, ``train_loss`` and, when validation ran,
    ``val_pixel_accuracy`` and ``val_miou`` (``train_pixel_accuracy`` is plotted if present).
    """
    if not history:
        raise ValueError("no history to plot")
    fig = new_figure(10, 3.5)
    ax_loss, ax_acc = fig.subplots(1, 2)

    def series(key: str) -> tuple[list, list]:
        rows = [r for r in history if r.get(key) is not None and not _isnan(r[key])]
        return [r["epoch"] for r in rows], [r[key] for r in rows]

    ax_loss.plot(*series("train_loss"), marker="o", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    for key, label in (("train_pixel_accuracy", "train pixel acc"),
                       ("val_pixel_accuracy", "val pixel acc"), ("val_miou", "val mIoU")):
        x, y = series(key)
        if x:
            ax_acc.plot(x, y, marker="o", label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylim(0, 1)
    if ax_acc.lines:
        ax_acc.legend()
    ax_loss.grid(alpha=0.3)
    ax_acc.grid(alpha=0.3)
    save_figure(fig, path)
    return fig


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def confusion_matrix_figure(mat: Any, class_names: Sequence[str], path: str | Path | None = None):
    """A row-normalised confusion matrix (rows = truth: each row shows a class's recall)."""
    m = _np(mat).astype(np.float64)
    n = len(class_names)
    if m.shape != (n, n):
        raise ValueError(f"matrix of shape {m.shape} for {n} class names")
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * n + 2)
    fig = new_figure(size + 1, size)
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), class_names, rotation=90)
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if n <= 25:  # numbers stay readable up to about VOC's 21 classes
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    if path is not None:
        save_figure(fig, path)
    return fig
