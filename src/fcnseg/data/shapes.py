"""``shapes``: a synthetic segmentation data set that fcnseg generates itself (offline default).

Each image shows 1-3 shapes (disk, square/rectangle, triangle, ring) on a cluttered
background (colour gradient, noise, distractor lines and small blobs, all labelled
background). Colours are drawn independently of the class and fills may be striped or noisy,
so colour alone does not tell the classes apart: a model needs shape (corners, holes) and
context. Later shapes occlude earlier ones and the mask follows the occlusion exactly (no
anti-aliasing: every pixel is either inside a shape or not). Placements that would hide
more than 30 % of an earlier shape are redrawn, so every shape stays recognisable.

Written in VOC layout (PNG images, so lossless and byte-identical for a seed)::

    <root>/JPEGImages/*.png  SegmentationClass/*.png  ImageSets/Segmentation/{train,val}.txt
    <root>/classes.json      (the folder data set's format)   <root>/shapes.json  (parameters)

Generated on first use, into a temporary folder renamed into place when complete, so an
interrupted run is never reused; a different ``size``/``image_size``/``seed`` regenerates.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .base import SegmentationDataset, Transform
from .io import write_mask
from .meta import IGNORE_INDEX, DatasetMeta
from .voc import build_voc

SHAPES_CLASSES = ["background", "disk", "square", "triangle", "ring"]
SHAPES_PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200)]
GENERATOR_VERSION = 3
# Shape radius range, in pixels of a 128-pixel image (scaled with the image size): larger
# shapes are learnt more slowly from scratch, smaller ones lose more at their boundaries
# (the stride-8 scores are 8 px apart); benchmarks/RESULTS.md, demo recipe search.
RADIUS = (12.0, 22.0)
SHAPES_PER_IMAGE = (1, 3)  # inclusive range
_SPLIT_CODES = {"train": 1, "val": 2}


def shapes_meta() -> DatasetMeta:
    """Metadata of the synthetic shapes data set (5 classes incl. background)."""
    return DatasetMeta("shapes", SHAPES_CLASSES, SHAPES_PALETTE)


def _shape_mask(cls: int, yy: np.ndarray, xx: np.ndarray, p: dict) -> np.ndarray:
    """Pixels inside shape ``cls`` with parameters ``p`` (centre cy, cx; size r; angle t)."""
    dy, dx = yy - p["cy"], xx - p["cx"]
    r, t = p["r"], p["angle"]
    if cls == 1:  # disk
        return dy * dy + dx * dx <= r * r
    if cls == 4:  # ring: a hole of 45-65 % of the radius shows what is underneath
        d2 = dy * dy + dx * dx
        return (d2 <= r * r) & (d2 >= (r * p["inner"]) ** 2)
    cos, sin = np.cos(t), np.sin(t)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    if cls == 2:  # square / mildly oblong rectangle, rotated
        return (np.abs(u) <= r * 0.85) & (np.abs(v) <= r * 0.85 * p["aspect"])
    # triangle: equilateral with circumradius 1.15 r, rotated; inside all three edges
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
        a = 2 * np.pi * k / 3
        inside &= u * np.cos(a) + v * np.sin(a) <= 0.5 * 1.15 * r
    return inside


def _background(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = rng.uniform(0, 2 * np.pi)
    ramp = ((np.cos(t) * xx + np.sin(t) * yy) / (n * 1.42) + 0.5)[..., None]
    img = c1 * (1 - ramp) + c2 * ramp
    for _ in range(rng.integers(1, 5)):  # distractor lines (background, drawn under shapes)
        a, off, w = rng.uniform(0, np.pi), rng.uniform(-0.5, 0.5) * n, rng.uniform(0.6, 1.6)
        d = np.abs(np.cos(a) * (xx - n / 2) + np.sin(a) * (yy - n / 2) - off)
        img[d <= w] = rng.uniform(0, 255, 3)
    for _ in range(rng.integers(0, 5)):  # small blobs, far smaller than any shape
        cy, cx, r = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(2, 4.5) * n / 128
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.uniform(0, 255, 3)
    return img


def _fill(rng: np.random.Generator, bg_colour: np.ndarray, yy: np.ndarray,
          xx: np.ndarray) -> np.ndarray:
    """Fill colours for the pixels at ``yy, xx``: solid, striped or noisy, contrasting with
    ``bg_colour`` (computed only for the shape's own pixels: cheap)."""
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - bg_colour) >= 90:
            break
    kind = rng.choice(3, p=[0.4, 0.3, 0.3])
    tex = np.broadcast_to(colour, (len(yy), 3)).copy()
    if kind == 1:  # stripes of a second, nearby colour
        other = np.clip(colour + rng.uniform(-80, 80, 3), 0, 255)
        a, period = rng.uniform(0, np.pi), rng.uniform(5, 10)
        stripe = ((np.cos(a) * xx + np.sin(a) * yy) // (period / 2)) % 2 == 1
        tex[stripe] = other
    elif kind == 2:
        tex += rng.normal(0, 22, tex.shape)
    return tex


def render_sample(
    rng: np.random.Generator, n: int = 128
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One ``n x n`` image (uint8 RGB), its mask (uint8 labels) and the drawn shapes.

    Each shape dict holds ``cls``, ``cy``, ``cx``, ``r``, ``angle``, ``aspect``, ``inner``
    ``area`` (its pixel count) and ``visible`` (pixels left after later shapes were drawn).
    """
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    img = _background(rng, n, yy, xx)
    mask = np.zeros((n, n), dtype=np.uint8)
    owner = np.full((n, n), -1, dtype=np.int16)  # index of the shape owning each pixel
    shapes: list[dict] = []
    s = n / 128
    for _ in range(rng.integers(SHAPES_PER_IMAGE[0], SHAPES_PER_IMAGE[1] + 1)):
        cls = int(rng.integers(1, len(SHAPES_CLASSES)))
        for _attempt in range(12):
            r = rng.uniform(*RADIUS) * s
            p = {"cls": cls, "r": float(r), "cy": float(rng.uniform(r, n - r)),
                 "cx": float(rng.uniform(r, n - r)), "angle": float(rng.uniform(0, 2 * np.pi)),
                 "aspect": float(rng.uniform(0.7, 1.0)), "inner": float(rng.uniform(0.45, 0.65))}
            inside = _shape_mask(cls, yy, xx, p)
            # Keep 70 % of every earlier shape visible, so it stays recognisable.
            hidden = np.bincount(owner[inside & (owner >= 0)], minlength=len(shapes))
            if all(sh["visible"] - hidden[k] >= 0.7 * sh["area"] for k, sh in enumerate(shapes)):
                break
        else:
            continue
        bg_colour = img[inside].mean(axis=0)
        img[inside] = _fill(rng, bg_colour, yy[inside], xx[inside])
        mask[inside] = cls
        for k, count in enumerate(hidden):
            shapes[k]["visible"] -= int(count)
        owner[inside] = len(shapes)
        p["visible"] = p["area"] = int(inside.sum())
        shapes.append(p)
    img += rng.normal(0, 6, img.shape)  # sensor-like noise over everything
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask, shapes


def _params(size: int, image_size: int, seed: int, val_size: int) -> dict:
    return {"generator": "fcnseg.shapes", "version": GENERATOR_VERSION, "seed": int(seed),
            "size": int(size), "val_size": int(val_size), "image_size": int(image_size)}


def generate_shapes(root: Path, size: int = 512, image_size: int = 128, seed: int = 0,
                    val_size: int | None = None) -> Path:
    """Write the data set into ``root`` (VOC layout) unless it is already there; returns root."""
    if size < 1 or image_size < 32:
        raise DataError(f"shapes: size must be >= 1 and image_size >= 32 (got {size}, "
                        f"{image_size})")
    val_size = max(1, size // 4) if val_size is None else int(val_size)
    params = _params(size, image_size, seed, val_size)
    marker = root / "shapes.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == params:
                return root
        except (OSError, ValueError):
            pass
    elif root.exists() and any(root.iterdir()):
        raise DataError(f"{root}: directory is not empty and holds no shapes data set; "
                        "give a new or empty --data-dir for the generated data")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write(tmp, params)
        if root.exists():  # a shapes set with other parameters: replace it
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            os.rename(root, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:  # another process (e.g. a DDP rank) finished first
            if not (marker.is_file() and json.loads(marker.read_text()) == params):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write(out: Path, params: dict) -> None:
    sets = out / "ImageSets" / "Segmentation"
    for d in (out / "JPEGImages", out / "SegmentationClass", sets):
        d.mkdir(parents=True)
    meta = shapes_meta()
    n = params["image_size"]
    jobs = [(split, i) for split, count in (("train", params["size"]), ("val",
            params["val_size"])) for i in range(count)]

    def one(job: tuple[str, int]) -> None:
        split, i = job
        # One RNG per image: the same seed gives the same files whatever the counts or order.
        rng = np.random.default_rng([params["seed"], _SPLIT_CODES[split], i])
        img, mask, _ = render_sample(rng, n)
        name = f"{split}_{i:05d}"
        Image.fromarray(img).save(out / "JPEGImages" / f"{name}.png", compress_level=1)
        write_mask(out / "SegmentationClass" / f"{name}.png", mask, meta.palette)

    # numpy and zlib release the GIL for much of the work: threads use both cores.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(one, jobs))
    for split in _SPLIT_CODES:
        ids = [f"{sp}_{i:05d}" for sp, i in jobs if sp == split]
        (sets / f"{split}.txt").write_text("\n".join(ids) + "\n")
    classes = [{"name": nm, "color": list(c)} for nm, c in zip(meta.class_names, meta.palette,
                                                                strict=True)]
    spec = {"classes": classes, "ignore_index": IGNORE_INDEX}
    (out / "classes.json").write_text(json.dumps(spec))
    (out / "shapes.json").write_text(json.dumps(params))  # written last: marks completion


def build_shapes(
    root: str | Path,
    split: str = "train",
    transform: Transform | None = None,
    download: bool = False,
    size: int = 512,
    image_size: int = 128,
    seed: int = 0,
    val_size: int | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> SegmentationDataset:
    """The shapes ``split`` (train or val), generated into ``root`` on first use.

    ``size`` is the number of training images (validation: ``val_size``, default size // 4).
    """
    if split not in _SPLIT_CODES:
        raise DataError(f"shapes has splits train and val, not {split!r}")
    root = generate_shapes(Path(root), size, image_size, seed, val_size)
    return build_voc(root, split, transform, image_ext=".png", meta=shapes_meta(), cache=cache,
                     cache_dir=cache_dir)
