"""COCO annotations (instances: polygons and RLE; or panoptic: segment PNGs) as semantic
masks.

What annotation tools export (CVAT, Label Studio, Roboflow, labelme2coco) and the COCO
data sets themselves. Layout: ``--data-dir`` holds the JSON and the images::

    <root>/annotations/instances_<split>.json  with images in <root>/<split>/  (COCO)
    <root>/annotations/panoptic_<split>.json   its segment PNGs in annotations/panoptic_<split>/
    <root>/<split>/_annotations.coco.json      with its images beside it       (Roboflow)
    <root>/annotations.json (or the one *.json) with images in <root>/images/ or <root>/

or name them: ``--data-option annotations=FILE.json --data-option images=DIR`` (and
``segments=DIR`` for a panoptic JSON's PNGs: by default the folder named as the JSON). When
the split has no JSON of its own, the one JSON is split by a ratio with a fixed seed
(``val_fraction``, default 0.2; ``seed``): "train" and "val" never share an image; "all"
takes every image.

Classes: 0 is ``background``, then the categories by id with their names;
``categories=car,person`` keeps those (in that order) and maps the rest to background.
Instances: annotations are painted largest area first, so an object lying on another (a cup
on a table) keeps its pixels; crowd regions (``iscrowd``) are ignored (255) where no other
annotation covers them; pixels no annotation covers are background. Instance masks are
rendered once and cached as PNGs under ``cache_dir`` (default ``~/.cache/fcnseg/coco``) in a
folder keyed by the JSON's hash, the categories kept and this rule, so a second epoch or run
reads instead of rendering. Panoptic: each segment's pixels (id = R + 256 G + 256^2 B in
its PNG) get its category, crowd segments too (a semantic mask has no instances); pixels of
no segment (id 0) are void and ignored (255). Reading the PNG costs what reading a cached
mask would, so panoptic masks are not cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .base import SegmentationDataset, Transform
from .io import read_image, read_mask, write_mask
from .meta import IGNORE_INDEX, DatasetMeta, voc_colormap

RULE = "largest-first, crowd-ignored, v1"  # part of the cache key: a new rule renders anew
TOLERANCE = 1.0  # pixels a polygon may stray past the image's edge (rounding in tools)


def build_coco(root: str | Path, split: str = "train", transform: Transform | None = None,
               download: bool = False, annotations: str | None = None,
               images: str | None = None, segments: str | None = None,
               categories: str | None = None,
               val_fraction: float = 0.2, seed: int = 0, cache: bool = True,
               cache_dir: str | Path | None = None) -> SegmentationDataset:
    """A COCO-annotated data set (see the module docstring for layouts and rules)."""
    root = Path(root)
    ann_file, own = _annotation_file(root, split, annotations)
    raw, spec = _load(ann_file)
    image_dir = _image_dir(root, split, ann_file, images)
    cats = {int(c["id"]): str(c["name"]) for c in spec.get("categories", [])}
    kept = _kept_categories(ann_file, cats, categories)
    names = ["background"] + [cats[c] for c in kept]
    meta = DatasetMeta(ann_file.stem, names, voc_colormap(len(names)),
                       extra={"source": "coco", "annotations": str(ann_file)})
    by_image = _check(ann_file, spec, cats)
    entries = sorted(spec["images"], key=lambda im: int(im["id"]))
    if not own:
        entries = _split(entries, split, val_fraction, seed, ann_file)
    label = {c: i + 1 for i, c in enumerate(kept)}
    panoptic = any("segments_info" in a for a in spec.get("annotations", []))
    if panoptic:
        png_dir = _under(root, segments) if segments else ann_file.with_suffix("")
    else:  # rendered masks are cached by the JSON's bytes, the categories kept and the rule
        digest = hashlib.sha1(raw + repr((kept, RULE)).encode()).hexdigest()[:16]
        store = Path(cache_dir or _default_cache()) / digest
    files, records = [], {}
    for im in entries:
        path = image_dir / str(im["file_name"])
        if not path.is_file():
            raise DataError(f"{path}: image {im['id']} of {ann_file} not found (check "
                            "--data-dir or --data-option images=DIR)")
        anns = by_image.get(int(im["id"]), [])
        mask_path = _segments_png(ann_file, im, anns, png_dir) if panoptic else \
            store / f"{int(im['id'])}.png"
        files.append((path, mask_path))
        records[mask_path] = (im, anns)

    def render_or_read(mask_path: Path) -> np.ndarray:
        im, anns = records[mask_path]
        if panoptic:
            return render_panoptic(im, anns[0]["segments_info"], label, mask_path)
        if mask_path.is_file():
            return read_mask(mask_path)
        mask = render(im, anns, label, ann_file)
        write_mask(mask_path, mask, meta.palette)  # atomic: a reader never sees half
        return mask

    return SegmentationDataset(files, meta, transform, source=f"{ann_file} ({split})",
                               mask_reader=render_or_read, cache=cache, check_files=False)


def _segments_png(source: Path, image: dict[str, Any], anns: list[dict[str, Any]],
                  png_dir: Path) -> Path:
    """The segment PNG of an image's one panoptic annotation."""
    if len(anns) != 1 or "segments_info" not in anns[0] or "file_name" not in anns[0]:
        raise DataError(f"{source}: image {image['id']} has {len(anns)} annotations; a "
                        "panoptic file needs one per image, with file_name and segments_info")
    return png_dir / str(anns[0]["file_name"])


def render_panoptic(image: dict[str, Any], segments: list[dict[str, Any]],
                    label: dict[int, int], png: Path) -> np.ndarray:
    """The ``H x W`` uint8 class-id mask of one image from its panoptic PNG (module rule)."""
    rgb = read_image(png).astype(np.int64)  # a missing or corrupt PNG: one line naming it
    h, w = int(image["height"]), int(image["width"])
    if rgb.shape[:2] != (h, w):
        raise DataError(f"{png}: {rgb.shape[1]} x {rgb.shape[0]}, but image {image['id']} is "
                        f"{w} x {h}: it is not that image's segment PNG")
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    table = {0: IGNORE_INDEX, **{int(s["id"]): label.get(int(s["category_id"]), 0)
                                 for s in segments}}
    found, where = np.unique(ids, return_inverse=True)
    unknown = [int(i) for i in found if int(i) not in table]
    if unknown:
        raise DataError(f"{png}: segment id {unknown[0]} is not in the segments_info of image "
                        f"{image['id']}: fix the annotation")
    return np.array([table[int(i)] for i in found], np.uint8)[where].reshape(h, w)


def render(image: dict[str, Any], anns: list[dict[str, Any]], label: dict[int, int],
           source: Path) -> np.ndarray:
    """The ``H x W`` uint8 class-id mask of one image from its annotations (module rule)."""
    from pycocotools import mask as coco_mask

    h, w = int(image["height"]), int(image["width"])
    out = np.zeros((h, w), np.uint8)
    crowd = np.zeros((h, w), bool)
    covered = np.zeros((h, w), bool)
    for ann in sorted(anns, key=lambda a: -float(a.get("area", 0) or 0)):
        seg = ann.get("segmentation")
        try:
            rles = _rles(coco_mask, seg, h, w, ann, source)
            with warnings.catch_warnings():  # pycocotools' numpy 2 copy= notice
                warnings.simplefilter("ignore", DeprecationWarning)
                pixels = coco_mask.decode(coco_mask.merge(rles)).astype(bool)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise DataError(f"{source}: annotation {ann.get('id')} (image {image['id']}) has "
                            f"a segmentation pycocotools cannot read ({exc})") from exc
        if ann.get("iscrowd"):
            crowd |= pixels
            continue
        covered |= pixels
        out[pixels] = label.get(int(ann["category_id"]), 0)
    out[crowd & ~covered] = IGNORE_INDEX
    return out


def _rles(coco_mask: Any, seg: Any, h: int, w: int, ann: dict, source: Path) -> list:
    """The RLEs of a polygon list, an RLE or an uncompressed RLE, checked to fit the image."""
    if isinstance(seg, list):
        polygons = [p for p in seg if len(p) >= 6]
        if not polygons:
            raise DataError(f"{source}: annotation {ann.get('id')} has no polygon of 3 points")
        for poly in polygons:
            xs, ys = np.asarray(poly[0::2], float), np.asarray(poly[1::2], float)
            if xs.min() < -TOLERANCE or ys.min() < -TOLERANCE or xs.max() > w + TOLERANCE \
                    or ys.max() > h + TOLERANCE:
                raise DataError(f"{source}: annotation {ann.get('id')} has a polygon outside "
                                f"its image ({w} x {h}): fix the annotation")
        return coco_mask.frPyObjects(polygons, h, w)
    if isinstance(seg, dict) and "counts" in seg:
        if [int(v) for v in seg.get("size", [])] != [h, w]:
            raise DataError(f"{source}: annotation {ann.get('id')} is an RLE of size "
                            f"{seg.get('size')}, its image is {h} x {w}")
        if isinstance(seg["counts"], list):  # uncompressed RLE
            return [coco_mask.frPyObjects(seg, h, w)]
        return [{"size": [h, w], "counts": seg["counts"].encode()
                 if isinstance(seg["counts"], str) else seg["counts"]}]
    raise DataError(f"{source}: annotation {ann.get('id')} has no polygon or RLE "
                    "segmentation")


def _check(source: Path, spec: dict[str, Any], cats: dict[int, str]) -> dict[int, list]:
    """Annotations by image id; an unknown image or category is an error naming them."""
    images = {int(im["id"]) for im in spec["images"]}
    by_image: dict[int, list] = {}
    for ann in spec.get("annotations", []):
        if int(ann["image_id"]) not in images:
            raise DataError(f"{source}: annotation {ann.get('id')} refers to image id "
                            f"{ann['image_id']}, which the file does not declare")
        for part in ann.get("segments_info", [ann]):  # a panoptic image's segments
            if int(part["category_id"]) not in cats:
                what = (f"segment {part.get('id')} of image {ann['image_id']}"
                        if "segments_info" in ann else f"annotation {ann.get('id')}")
                raise DataError(f"{source}: {what} has category id {part['category_id']}, "
                                "which the file does not declare")
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    return by_image


def _load(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The JSON's bytes (read once: they key the mask cache) and what they hold, checked."""
    try:
        raw = path.read_bytes()
        spec = json.loads(raw)
        for im in spec["images"]:
            int(im["id"]), int(im["height"]), int(im["width"]), str(im["file_name"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a COCO annotation file ({exc}): it needs 'images' "
                        "(id, file_name, height, width), 'annotations' and 'categories'") \
            from exc
    return raw, spec


def _annotation_file(root: Path, split: str, given: str | None) -> tuple[Path, bool]:
    """The JSON to read and whether it is the split's own (else it is split by ratio)."""
    if given:
        path = _under(root, given)
        if not path.is_file():
            raise DataError(f"{path}: annotation file not found (--data-option annotations)")
        return path, False
    for path in (root / "annotations" / f"instances_{split}.json",
                 root / "annotations" / f"panoptic_{split}.json",
                 root / split / "_annotations.coco.json"):
        if path.is_file():
            return path, True
    found = [root / "annotations.json"] if (root / "annotations.json").is_file() else \
        sorted(root.glob("*.json"))
    if len(found) == 1:
        return found[0], False
    raise DataError(f"{root}: no COCO annotations for split {split!r}: expected "
                    f"annotations/instances_{split}.json, annotations/panoptic_{split}.json, "
                    f"{split}/_annotations.coco.json or one annotations.json, or give "
                    "--data-option annotations=FILE.json")


def _under(root: Path, given: str) -> Path:
    """A ``--data-option`` path: absolute, or under ``--data-dir``."""
    return Path(given) if Path(given).is_absolute() else root / given


def _image_dir(root: Path, split: str, ann_file: Path, given: str | None) -> Path:
    if given:
        return _under(root, given)
    for folder in (root / split, root / "images", ann_file.parent):
        if folder.is_dir() and folder != root / "annotations":
            return folder
    return root


def _kept_categories(source: Path, cats: dict[int, str], chosen: str | None) -> list[int]:
    """Category ids kept as classes, in class order."""
    if not cats:
        raise DataError(f"{source}: declares no categories")
    if not chosen:
        return sorted(cats)
    ids = {name: cid for cid, name in cats.items()}
    wanted = [n.strip() for n in str(chosen).split(",") if n.strip()]
    unknown = [n for n in wanted if n not in ids]
    if unknown:
        raise DataError(f"--data-option categories: {', '.join(unknown)} not in {source}; "
                        f"its categories: {', '.join(sorted(ids))}")
    return [ids[n] for n in wanted]


def _split(entries: list[dict], split: str, fraction: float, seed: int,
           source: Path) -> list[dict]:
    """``train`` / ``val`` by a seeded shuffle (``all``: every image)."""
    if split == "all":
        return entries
    if split not in ("train", "val") or not 0 < float(fraction) < 1:
        raise DataError(f"{source} has no split of its own: use split train, val or all, "
                        f"with 0 < val_fraction < 1 (got {split!r}, {fraction})")
    order = list(range(len(entries)))
    random.Random(int(seed)).shuffle(order)
    n_val = max(1, round(len(entries) * float(fraction)))
    chosen = set(order[:n_val]) if split == "val" else set(order[n_val:])
    return [e for i, e in enumerate(entries) if i in chosen]


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fcnseg" / "coco"
