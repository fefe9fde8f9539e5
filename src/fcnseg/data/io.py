"""Reading images and label masks from disk, with errors that name the file.

Why not just ``np.array(Image.open(path).convert("RGB"))``:

* phone photos store their orientation in EXIF; without ``exif_transpose`` they come out
  rotated (and no longer line up with a mask drawn on the displayed image);
* 16-bit grayscale PNGs open in mode ``I;16``/``I`` and ``convert("RGB")`` *clips* values
  above 255 to white instead of scaling them;
* PIL decodes lazily, so a truncated file only fails later (or, with
  ``ImageFile.LOAD_TRUNCATED_IMAGES``, silently becomes grey): we force a full decode here;
* label masks stored as palette PNGs (VOC) must be read as their *indices*: looking colours
  up in an RGB palette turns the 255 boundary (or any unknown colour) into background.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import DataError
from ..fileio import atomic_write
from .meta import IGNORE_INDEX, voc_colormap

# A half-written image must be an error, never a partly grey picture with wrong labels.
# Another library may have switched this on process-wide; we check it at every read.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                    ".gif")
# Lossless formats a mask may be stored in (JPEG would blur the labels).
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".gif")


class NotAnImageError(DataError):
    """Bytes that no image decoder recognises."""


class ImageTooLargeError(DataError):
    """An image with more pixels than allowed (a decompression bomb, or over a limit)."""


# The raster formats fcnseg opens. Everything else is refused before a plugin parses it:
# Pillow's EPS/PS plugin, for one, writes the data to a file and runs Ghostscript on it.
RASTER_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


def _open(source: str | Path | bytes, name: str | None = None,
          max_pixels: int | None = None, decode: bool = True) -> Image.Image:
    """Open and fully decode a file or in-memory bytes, or raise DataError naming it.

    ``max_pixels`` refuses larger images from their header, before decoding a byte;
    ``decode=False`` reads the header only.
    """
    label = name or ("upload" if isinstance(source, bytes) else str(source))
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Re-disable: silently padding truncated files would mislabel pixels.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise DataError(f"{label}: file not found (check the path and the data set layout)")
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source,
                         formats=RASTER_FORMATS)
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ImageTooLargeError(f"{label}: {img.width} x {img.height} has more than "
                                     f"{max_pixels} pixels; resize it")
        if decode:  # now, so that truncated / corrupt data fails here, naming the file
            img.load()
    except UnidentifiedImageError as exc:
        raise NotAnImageError(f"{label}: not a {', '.join(RASTER_FORMATS)} image, or corrupt "
                              "(re-export it in one of those formats, or remove it)") from exc
    except Image.DecompressionBombError as exc:  # a header claiming billions of pixels
        raise ImageTooLargeError(f"{label}: too large to decode safely ({exc}); "
                                 "resize it or split it into tiles") from exc
    except PermissionError as exc:
        raise DataError(f"{label}: permission denied (make it readable)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{label}: corrupt or truncated image ({exc}); re-export or remove it") \
            from exc
    return img


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a 16-bit (or 32-bit integer / float) single-channel array to uint8 without clipping.

    Integer images above 8 bits are assumed to use the 16-bit range (PNG/TIFF 16-bit opens as
    ``I;16`` or ``I``); floats in [0, 1] are scaled by 255, other floats by their own maximum.
    """
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0)
        top = 1.0 if arr.max(initial=0.0) <= 1.0 else float(arr.max())
        return np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
    arr = arr.astype(np.int64)
    top = 65535 if arr.max(initial=0) <= 65535 else int(arr.max())
    # 65535 / 257 == 255 exactly: the rounding maps 16-bit values to the nearest 8-bit value.
    return np.clip((arr * 255 + top // 2) // top, 0, 255).astype(np.uint8)


def image_pixels(source: str | Path | bytes, name: str | None = None,
                 max_pixels: int | None = None) -> int:
    """Width x height of an image from its header alone (nothing decoded); the errors of
    :func:`read_image`."""
    img = _open(source, name, max_pixels, decode=False)
    return img.width * img.height


def read_image(path: str | Path | bytes, name: str | None = None,
               max_pixels: int | None = None) -> np.ndarray:
    """Read an image (a file, or the bytes of one) as a uint8 ``H x W x 3`` RGB array.

    EXIF orientation is applied; grayscale, LA, palette, CMYK and YCbCr become RGB; RGBA
    *drops* its alpha channel (the colour under transparent pixels is kept as stored, not
    composited onto a background); 16-bit images are scaled to 8 bits, not clipped.
    Missing, corrupt, truncated or non-image files raise :class:`DataError` naming the file
    (``name``, for bytes); more than ``max_pixels`` pixels raise :class:`ImageTooLargeError`.
    """
    img = _open(path, name, max_pixels)
    label = name or ("upload" if isinstance(path, bytes) else path)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # a broken EXIF block should not make the pixels unusable
        raise DataError(f"{label}: unreadable EXIF orientation ({exc}); strip EXIF") from exc
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        gray = _to_uint8(np.asarray(img))
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "RGBA":
        img = img.convert("RGBA")
        return np.ascontiguousarray(np.asarray(img)[:, :, :3])
    if mode == "P" and "transparency" in img.info:
        # Avoid PIL's warning; the alpha is dropped as for RGBA.
        return np.ascontiguousarray(np.asarray(img.convert("RGBA"))[:, :, :3])
    if mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:  # pragma: no cover
        raise DataError(f"{label}: unsupported image mode {mode!r}; convert it to 8-bit RGB")
    return np.ascontiguousarray(arr)


def read_mask(
    path: str | Path,
    colors: list[tuple[int, int, int]] | None = None,
    ignore_color: tuple[int, int, int] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Read a label mask as an ``H x W`` int64 array of raw label values.

    Palette (``P``) PNGs give their palette *indices* (VOC: 0-20 and 255 for boundaries),
    never a colour look-up; 8-bit and 16-bit grayscale masks give their values. RGB colour
    masks need ``colors`` (class ``i`` has colour ``colors[i]``; ``ignore_color`` maps to
    ``ignore_index``); an unknown colour raises :class:`DataError` naming the file and colour.
    An RGB mask whose three channels are equal is read as grayscale values.
    No EXIF rotation: masks are label maps written by tools, aligned with the stored image.
    """
    img = _open(path)
    mode = img.mode
    if mode in ("P", "L", "1", "I;16", "I;16B", "I;16L", "I;16N", "I"):
        return np.asarray(img).astype(np.int64)
    if mode == "LA":
        return np.asarray(img)[:, :, 0].astype(np.int64)
    if mode not in ("RGB", "RGBA", "PA"):
        raise DataError(f"{path}: unsupported mask mode {mode!r}; save masks as index or RGB PNGs")
    rgb = np.asarray(img.convert("RGB"))
    if colors is None:
        if (rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 0] == rgb[:, :, 2]).all():
            return rgb[:, :, 0].astype(np.int64)
        raise DataError(
            f"{path}: colour (RGB) mask but no class colours known; save it as an index PNG "
            "or give the classes' colours in the folder data set's classes.json"
        )
    return colors_to_labels(rgb, colors, ignore_color, ignore_index, path)


def colors_to_labels(
    rgb: np.ndarray,
    colors: list[tuple[int, int, int]],
    ignore_color: tuple[int, int, int] | None,
    ignore_index: int,
    path: str | Path,
) -> np.ndarray:
    """Map an ``H x W x 3`` colour mask to class indices; unknown colours are an error."""
    def code(c: np.ndarray) -> np.ndarray:
        c = c.astype(np.int64)
        return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]

    keys = list(colors) + ([ignore_color] if ignore_color is not None else [])
    values = list(range(len(colors))) + ([ignore_index] if ignore_color is not None else [])
    key_codes = code(np.asarray(keys, dtype=np.int64).reshape(-1, 3))
    order = np.argsort(key_codes)
    sorted_codes, sorted_values = key_codes[order], np.asarray(values, np.int64)[order]
    pix = code(rgb)
    pos = np.clip(np.searchsorted(sorted_codes, pix), 0, len(sorted_codes) - 1)
    bad = sorted_codes[pos] != pix
    if bad.any():
        y, x = np.argwhere(bad)[0]
        colour = tuple(int(v) for v in rgb[y, x])
        raise DataError(
            f"{path}: colour {colour} at (row {y}, col {x}) is not a class colour "
            "(add it to classes.json or fix the mask)"
        )
    return sorted_values[pos]


# zlib level 1 for masks and overlays: PIL's default (6) spent ~90 ms of a 360 x 480
# image's ~190 ms end-to-end prediction for files a few percent smaller.
PNG_LEVEL = 1


def palette_png_colours(palette: Sequence[Sequence[int]]) -> list[int]:
    """A flat 768-entry palette: the class colours, then VOC's colour map for the rest.

    So index 255 (ignore) is VOC's (224, 224, 192) and a VOC model's PNGs match the
    devkit's SegmentationClass files colour for colour.
    """
    colours = [tuple(c) for c in palette][:256] + voc_colormap(256)[len(palette):]
    return [int(v) for c in colours for v in c]


def mask_image(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A mode "P" image whose pixel values are the labels (VOC's SegmentationClass format)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {m.shape}")
    if m.size and (m.min() < 0 or m.max() > 255):
        raise ValueError("a palette PNG holds labels in [0, 255] only")
    u8 = np.ascontiguousarray(m, dtype=np.uint8)
    img = Image.frombytes("P", (u8.shape[1], u8.shape[0]), u8.tobytes())
    img.putpalette(palette_png_colours(palette))
    return img


def write_mask(path: str | Path, mask: np.ndarray, palette: Sequence[Sequence[int]]) -> Path:
    """Write ``mask`` as a palette PNG whose indices are the labels, atomically."""
    img = mask_image(mask, palette)
    return atomic_write(path, lambda f: img.save(f, format="PNG", compress_level=PNG_LEVEL))
