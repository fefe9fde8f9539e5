"""``fcnseg predict``: palette-PNG masks and overlays for images of any size.

For each input ``DIR/<stem>.png`` holds the class indices (a VOC-style palette PNG of
exactly the input's size), ``DIR/<stem>_overlay.png`` the image with the colour mask
blended in, and with ``--probs`` ``DIR/<stem>_probs.npy`` the class probabilities
(C x H x W, float16). A file that cannot be read is reported and skipped; the exit status
is then 1. Every file is written atomically.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path
from typing import Any

from .evaluate import add_inference_options, inference_kwargs, load_for_inference

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif")


def add_parser(subparsers: Any, help_text: str) -> None:
    p = subparsers.add_parser("predict", help=help_text, description=help_text)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a best.pt / last.pt")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    p.add_argument("--probs", action="store_true",
                   help="also write <stem>_probs.npy: class probabilities, float16 C x H x W")
    p.add_argument("--grid", default=None, metavar="FIG.png",
                   help="write the chapter's figure (image / prediction / truth rows)")
    p.add_argument("--grid-max", type=int, default=6, metavar="N",
                   help="images in the --grid figure (default: the first 6)")
    p.add_argument("--masks", default=None, metavar="DIR",
                   help="ground-truth index masks (<stem>.png) for the --grid truth row")
    add_inference_options(p)
    p.set_defaults(func=run)


def collect_inputs(patterns: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders (their images) and globs; returns ``(files, failures)``."""
    from ..data.io import IMAGE_EXTENSIONS

    files: list[Path] = []
    failures: list[tuple[str, str]] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(f for f in path.iterdir()
                           if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                failures.append((pattern, "folder has no images"))
            files.extend(found)
        elif path.exists():
            files.append(path)
        elif glob.has_magic(pattern):
            found = sorted(Path(f) for f in glob.glob(pattern) if Path(f).is_file())
            if not found:
                failures.append((pattern, "no file matches this pattern"))
            files.extend(found)
        else:
            failures.append((pattern, "file not found"))
    unique = list(dict.fromkeys(f.resolve() for f in files))  # a file named twice: once
    return unique, failures


def output_names(files: list[Path], probs: bool) -> dict[Path, list[str]]:
    """The output file names of each input; two inputs writing one name is an error."""
    from ..errors import FcnsegError

    names: dict[Path, list[str]] = {}
    owner: dict[str, Path] = {}
    for f in files:
        mine = [f"{f.stem}.png", f"{f.stem}_overlay.png"] + ([f"{f.stem}_probs.npy"] * probs)
        for name in mine:
            if name in owner:
                raise FcnsegError(f"{owner[name]} and {f} would both write {name}: "
                                  "rename one or predict them into different --out folders")
            owner[name] = f
        names[f] = mine
    return names


def _truth(masks_dir: Path, stem: str, shape: tuple[int, int], meta: Any) -> Any:
    """The ground-truth mask of ``stem`` (labels outside the classes -> ignore), or None."""
    import numpy as np

    from ..data.io import read_mask

    for suffix in MASK_SUFFIXES:
        path = masks_dir / f"{stem}{suffix}"
        if path.is_file():
            mask = read_mask(path)
            if mask.shape != shape:
                print(f"fcnseg: warning: {path} is {mask.shape}, the image {shape}: not shown",
                      file=sys.stderr)
                return None
            return np.where((mask >= 0) & (mask < meta.num_classes), mask, meta.ignore_index)
    print(f"fcnseg: warning: no mask for {stem} in {masks_dir}", file=sys.stderr)
    return None


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from ..data.io import read_image
    from ..data.transforms import Normalize
    from ..errors import FcnsegError
    from ..fileio import atomic_write, ensure_writable_dir
    from ..inference import predict_logits
    from ..viz import (
        overlay,
        prediction_grid,
        save_image,
        save_palette_png,
    )

    options = inference_kwargs(args)
    if not 0.0 <= args.alpha <= 1.0:
        raise FcnsegError(f"--alpha {args.alpha} must be between 0 and 1")
    # Fail on an unwritable output before loading anything.
    out = ensure_writable_dir(args.out)
    if args.grid is not None:
        ensure_writable_dir(Path(args.grid).parent)
    if args.masks is not None and not Path(args.masks).is_dir():
        raise FcnsegError(f"--masks {args.masks} is not a folder of ground-truth masks")
    files, failures = collect_inputs(args.inputs)
    names = output_names(files, args.probs)
    for pattern, why in failures:
        print(f"fcnseg: skipped {pattern}: {why}", file=sys.stderr)
    failed = len(failures)
    model, meta, _, _, dtype = load_for_inference(args)
    normalize = Normalize(meta.mean, meta.std)
    grid: list[tuple[Any, Any, Any]] = []
    written = 0
    for start in range(0, len(files), args.batch_size):
        batch: list[tuple[Path, np.ndarray]] = []
        for f in files[start:start + args.batch_size]:
            try:
                batch.append((f, read_image(f)))
            except (FcnsegError, Image.DecompressionBombError) as exc:
                msg = str(exc) if str(exc).startswith(str(f)) else f"{f}: {exc}"
                print(f"fcnseg: skipped {msg}", file=sys.stderr)
                failed += 1
        if not batch:
            continue
        tensors = [normalize.image(img) for _, img in batch]
        probs = predict_logits(model, tensors, dtype=dtype, **options)
        for (f, img), p in zip(batch, probs, strict=True):
            mask = p.argmax(0).to(torch.uint8).cpu().numpy()
            mask_name, overlay_name, *rest = names[f]
            save_palette_png(mask, meta.palette, out / mask_name)
            save_image(overlay(img, mask, meta.palette, args.alpha, meta.ignore_index),
                       out / overlay_name)
            if args.probs:
                arr = p.cpu().numpy().astype(np.float16)
                atomic_write(out / rest[0], lambda fh, a=arr: np.save(fh, a))
            written += 1
            print(f"{f} -> {out / mask_name} ({img.shape[0]} x {img.shape[1]})")
            if args.grid is not None and len(grid) < args.grid_max:
                truth = None
                if args.masks is not None:
                    truth = _truth(Path(args.masks), f.stem, mask.shape, meta)
                grid.append((img, mask, truth))
    if args.grid is not None and grid:
        truths = [t for _, _, t in grid]
        if any(t is None for t in truths):
            truths = None  # the truth row needs every image's mask
        prediction_grid([g[0] for g in grid], [g[1] for g in grid], truths, meta=meta,
                        path=args.grid)
        print(f"fcnseg: wrote {args.grid}", file=sys.stderr)
    total = written + failed
    print(f"fcnseg: predicted {written} of {total} inputs; {failed} failed", file=sys.stderr)
    return 1 if failed else 0
