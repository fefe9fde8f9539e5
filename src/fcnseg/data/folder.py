"""Image/mask folders paired by file stem, with a small ``classes.json``.

Layout (``images``/``masks`` names can be changed with options)::

    <root>/classes.json
    <root>/images/<split>/*.jpg|png...   and  <root>/masks/<split>/*.png    (split sub-folders)
    or <root>/images/*, <root>/masks/* with <root>/<split>.txt listing stems  (list files)
    or <root>/images/*, <root>/masks/* and split "all"                      (everything)

``classes.json``::

    {"classes": [{"name": "background", "color": [0, 0, 0]},
                 {"name": "cat", "color": [128, 0, 0]}],
     "ignore_index": 255,            # raw label value ignored in index masks (default 255)
     "ignore_color": [255, 255, 255], # optional: colour ignored in RGB masks
     "mean": [...], "std": [...]}    # optional normalisation (default ImageNet)

Masks are index PNGs (values = class ids or ``ignore_index``) or RGB colour PNGs mapped
through the class colours; an unknown colour is an error naming the file and the colour.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ..errors import DataError
from .base import SegmentationDataset, Transform
from .io import IMAGE_EXTENSIONS, MASK_EXTENSIONS, read_mask
from .meta import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, DatasetMeta

CLASSES_EXAMPLE = '{"classes": [{"name": "background", "color": [0, 0, 0]}, ...]}'


def load_classes(path: Path) -> tuple[DatasetMeta, int, tuple[int, int, int] | None]:
    """Parse ``classes.json`` -> (meta, raw ignore index, ignore colour)."""
    if not path.is_file():
        raise DataError(f"{path}: class file not found; write one like {CLASSES_EXAMPLE}")
    try:
        spec = json.loads(path.read_text())
        classes = spec["classes"]
        names = [str(c["name"]) for c in classes]
        colors = [tuple(int(v) for v in c["color"]) for c in classes]
        ignore = int(spec.get("ignore_index", IGNORE_INDEX))
        ic = spec.get("ignore_color")
        ignore_color = tuple(int(v) for v in ic) if ic is not None else None
        mean = tuple(float(v) for v in spec.get("mean", IMAGENET_MEAN))
        std = tuple(float(v) for v in spec.get("std", IMAGENET_STD))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: invalid class file ({exc}); expected {CLASSES_EXAMPLE}") \
            from exc
    if not names or any(len(c) != 3 for c in colors):
        raise DataError(f"{path}: needs at least one class, each with a 3-value colour")
    if not 0 <= ignore <= 65535:
        raise DataError(f"{path}: ignore_index {ignore} must be in 0-65535 (a mask value)")
    if 0 <= ignore < len(names):
        raise DataError(f"{path}: ignore_index {ignore} is also a class id; use e.g. 255")
    if len(set(colors)) != len(colors) or (ignore_color in colors):
        raise DataError(f"{path}: class colours (and ignore_color) must all differ")
    meta = DatasetMeta(path.parent.name or "folder", names, colors, IGNORE_INDEX, mean, std,
                       extra={"source": "folder"})
    return meta, ignore, ignore_color  # type: ignore[return-value]


def _by_stem(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder ({exc})") from exc
    out: dict[str, Path] = {}
    for p in entries:
        if p.is_file() and p.suffix.lower() in exts:
            if p.stem in out:
                raise DataError(f"{p}: two files with stem {p.stem!r} ({out[p.stem].name}); "
                                "keep one")
            out[p.stem] = p
    return out


def build_folder(
    root: str | Path,
    split: str = "all",
    transform: Transform | None = None,
    download: bool = False,
    images: str = "images",
    masks: str = "masks",
    classes: str = "classes.json",
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> SegmentationDataset:
    """An image/mask folder data set (see the module docstring for the layout)."""
    root = Path(root)
    meta, raw_ignore, ignore_color = load_classes(root / classes)
    img_dir, mask_dir, stems, source = _split_folders(root, split, root / images, root / masks)
    files = _pairs(img_dir, mask_dir, stems, source)
    reader = functools.partial(read_mask, colors=meta.palette, ignore_color=ignore_color,
                               ignore_index=IGNORE_INDEX)
    label_map = {raw_ignore: IGNORE_INDEX} if raw_ignore != IGNORE_INDEX else None
    return SegmentationDataset(files, meta, transform, source=source, label_map=label_map,
                               mask_reader=reader, cache=cache, cache_dir=cache_dir)


def _split_folders(root: Path, split: str, img_dir: Path, mask_dir: Path
                   ) -> tuple[Path, Path, list[str] | None, str]:
    """Where ``split``'s files are: ``(image folder, mask folder, listed stems or None for
    every image, what to name as its source)``."""
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"{d}: folder not found; expected {img_dir} and {mask_dir}")
    list_file = root / f"{split}.txt"
    if (img_dir / split).is_dir():
        return img_dir / split, mask_dir / split, None, str(img_dir / split)
    if list_file.is_file():
        stems = [ln.strip() for ln in list_file.read_text().splitlines() if ln.strip()]
        return img_dir, mask_dir, stems, str(list_file)
    if split == "all":
        return img_dir, mask_dir, None, str(img_dir)
    raise DataError(
        f"{root}: no split {split!r}: expected {img_dir / split}/ (and "
        f"{mask_dir / split}/), or a list file {list_file}, or use split 'all'"
    )


def _pairs(img_dir: Path, mask_dir: Path, stems: list[str] | None, source: str
           ) -> list[tuple[Path, Path]]:
    """(image, mask) files paired by stem; every image, mask or stem without its partner
    is an error naming it."""
    image_files = _by_stem(img_dir, IMAGE_EXTENSIONS)
    mask_files = _by_stem(mask_dir, MASK_EXTENSIONS)
    lossy = [p.name for p in mask_dir.glob("*") if p.suffix.lower() in (".jpg", ".jpeg")]
    if lossy:
        raise DataError(f"{mask_dir}: JPEG masks ({', '.join(lossy[:3])}) blur labels; "
                        "save masks as PNG")
    if stems is None:
        stems = sorted(image_files)
        extra = sorted(set(mask_files) - set(image_files))
        if extra:
            raise DataError(f"{mask_dir}: masks without images: {', '.join(extra[:5])}"
                            f"{' ...' if len(extra) > 5 else ''} (in {img_dir})")
    if not stems:
        raise DataError(f"{source}: no images (the split is empty)")
    missing_img = [s for s in stems if s not in image_files]
    if missing_img:
        raise DataError(f"{img_dir}: no image for {', '.join(missing_img[:5])} (listed in "
                        f"{source})")
    unpaired = [s for s in stems if s not in mask_files]
    if unpaired:
        raise DataError(f"{mask_dir}: no mask for images {', '.join(unpaired[:5])}"
                        f"{' ...' if len(unpaired) > 5 else ''} ({len(unpaired)} of "
                        f"{len(stems)}); masks are paired with images by file stem")
    return [(image_files[s], mask_files[s]) for s in stems]
