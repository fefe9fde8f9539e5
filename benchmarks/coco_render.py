"""COCO masks: the cost of rendering them, and of reading them back from the cache.

Writes ``--images`` synthetic 360 x 480 images with a COCO JSON of ``--objects`` polygon
annotations each (random convex-ish polygons, a few overlapping, one crowd RLE), then times
reading every (image, mask) pair: a first run (render with pycocotools, write the cache
PNG), a second run (a new data set object: masks read from the cache folder), and a second
epoch in one run (decoded arrays kept in memory).

    python benchmarks/coco_render.py --images 200 --objects 20
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fcnseg.data import build_dataset
from report import write_report


def make(root: Path, images: int, objects: int, h: int = 360, w: int = 480) -> None:
    from pycocotools import mask as mask_api

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    spec: dict = {"images": [], "annotations": [],
                  "categories": [{"id": i + 1, "name": f"class{i + 1}"} for i in range(10)]}
    for i in range(images):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "images" / f"{i}.jpg", quality=90)
        spec["images"].append({"id": i, "file_name": f"{i}.jpg", "height": h, "width": w})
        for _ in range(objects):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 80)
            angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
            xs = np.clip(cx + r * np.cos(angles), 0, w)
            ys = np.clip(cy + r * np.sin(angles), 0, h)
            poly = np.stack([xs, ys], 1).ravel().round(1).tolist()
            spec["annotations"].append({"id": len(spec["annotations"]) + 1, "image_id": i,
                                        "category_id": int(rng.integers(1, 11)), "iscrowd": 0,
                                        "area": float(np.pi * r * r), "segmentation": [poly]})
        crowd = np.zeros((h, w), np.uint8, order="F")
        crowd[:40, :60] = 1
        rle = mask_api.encode(crowd)
        spec["annotations"].append({"id": len(spec["annotations"]) + 1, "image_id": i,
                                    "category_id": 1, "iscrowd": 1, "area": 2400.0,
                                    "segmentation": {"size": [h, w],
                                                     "counts": rle["counts"].decode()}})
    (root / "annotations.json").write_text(json.dumps(spec))


def timed(ds) -> float:
    start = time.perf_counter()
    for i in range(len(ds)):
        ds.read_raw(i)
    return (time.perf_counter() - start) / len(ds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--objects", type=int, default=20)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/coco_render.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fcnseg-coco-"))
    make(work / "coco", args.images, args.objects)
    build = lambda: build_dataset("coco", work / "coco", "all",  # noqa: E731
                                  cache_dir=work / "cache")
    first = build()
    row = {"images": args.images, "objects_per_image": args.objects,
           "first_run_ms": 1000 * timed(first), "second_epoch_ms": 1000 * timed(first),
           "second_run_ms": 1000 * timed(build())}
    print(f"{args.images} images of 360 x 480, {args.objects} polygons + 1 crowd RLE each, "
          f"per image: first run {row['first_run_ms']:.1f} ms (decode + render + cache), "
          f"second run {row['second_run_ms']:.1f} ms (decode + cached mask), second epoch "
          f"{row['second_epoch_ms']:.3f} ms (in memory)")
    write_report(args.json, rows=[row])


if __name__ == "__main__":
    main()
