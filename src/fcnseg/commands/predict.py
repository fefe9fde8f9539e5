"""``fcnseg predict``: palette-PNG masks and overlays for images of any size, any number.

For each input ``DIR/<stem>.png`` holds the class indices (a VOC-style palette PNG of
exactly the input's size), ``DIR/<stem>_overlay.jpg`` the image with the colour mask
blended in (``--overlay-format png`` for a lossless one; none with ``--no-overlay``), and
with ``--probs`` ``DIR/<stem>_probs.npy`` the class probabilities (C x H x W, float16). A
file that cannot be read is reported and skipped; the exit status is then 1 (2 when nothing
could be predicted). Every file is written atomically; under ``torchrun`` each process
predicts its own share of the inputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..viz import OVERLAY_FORMATS
from .options import add_inference_options, load_predictor


def add_parser(subparsers: Any, help_text: str) -> None:
    p = subparsers.add_parser("predict", help=help_text, description=help_text)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders or globs, and video files (drive.mp4: an "
                        "overlay video <stem>_overlay.mp4 of the same size and frame rate)")
    p.add_argument("--checkpoint", required=True, metavar="MODEL",
                   help="a best.pt / last.pt, or an exported model.onnx")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    p.add_argument("--no-overlay", action="store_true",
                   help="write the masks only (no <stem>_overlay.*): faster on big folders")
    p.add_argument("--overlay-format", choices=OVERLAY_FORMATS, default=OVERLAY_FORMATS[0],
                   help="jpg (default: quality 90, ~20x faster to write than PNG and ~5x "
                        "smaller) or png (lossless); the masks are always PNG")
    p.add_argument("--video-masks", action="store_true",
                   help="for a video, also write each frame's mask: <stem>_masks/000000.png...")
    p.add_argument("--probs", action="store_true",
                   help="also write <stem>_probs.npy: class probabilities, float16 C x H x W")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip inputs whose outputs are all in --out already (resume a job)")
    p.add_argument("--threads", type=int, default=2, metavar="N",
                   help="threads decoding and encoding images beside the model (default 2)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar; print a line per image instead")
    p.add_argument("--grid", default=None, metavar="FIG.png",
                   help="write a grid figure: a column per image, rows image / prediction / "
                        "truth")
    p.add_argument("--grid-max", type=int, default=6, metavar="N",
                   help="images in the --grid figure (default: the first 6)")
    p.add_argument("--masks", default=None, metavar="DIR",
                   help="ground-truth index masks (<stem>.png) for the --grid truth row")
    add_inference_options(p)
    p.set_defaults(func=run)


def _truth(masks_dir: Path, stem: str, shape: tuple[int, int], meta: Any) -> Any:
    """The ground-truth mask of ``stem`` (labels outside the classes -> ignore), or None."""
    import numpy as np

    from ..data.io import MASK_EXTENSIONS, read_mask
    from ..errors import FcnsegError

    for suffix in MASK_EXTENSIONS:
        path = masks_dir / f"{stem}{suffix}"
        if path.is_file():
            try:
                mask = read_mask(path)
            except FcnsegError as exc:
                print(f"fcnseg: warning: {exc}: not shown", file=sys.stderr)
                return None
            if mask.shape != shape:
                print(f"fcnseg: warning: {path} is {mask.shape}, the image {shape}: not shown",
                      file=sys.stderr)
                return None
            return np.where((mask >= 0) & (mask < meta.num_classes), mask, meta.ignore_index)
    print(f"fcnseg: warning: no mask for {stem} in {masks_dir}", file=sys.stderr)
    return None


def _write_grid(grid: list[tuple[Any, Any, Any]], meta: Any, path: str) -> None:
    from ..viz import prediction_grid

    truths = [t for _, _, t in grid]
    if any(t is None for t in truths):
        truths = None  # the truth row needs every image's mask
    prediction_grid([g[0] for g in grid], [g[1] for g in grid], truths, meta=meta, path=path)
    print(f"fcnseg: wrote {path}", file=sys.stderr)


def _video(predictor: Any, path: Path, out: Path, args: argparse.Namespace) -> int:
    """Predict one video (its overlay video, and with --video-masks its frames' masks);
    1 if it failed (said in one line), else 0."""
    from tqdm import tqdm

    from ..errors import FcnsegError
    from ..inference.video import predict_video_file, video_outputs

    outputs = video_outputs(path, out, not args.no_overlay, args.video_masks or
                            args.no_overlay)
    if args.skip_existing and all(p.exists() for p in outputs.values()):
        print(f"fcnseg: {path}: skipped, its outputs exist", file=sys.stderr)
        return 0
    bar = tqdm(unit="frame", desc=path.name, disable=args.no_progress or None,
               dynamic_ncols=True)

    def advance(done: int, total: int) -> None:
        bar.total = total or None
        bar.update(1)

    start = time.perf_counter()
    try:
        count = predict_video_file(predictor, path, out, alpha=args.alpha,
                                   overlay_video="overlay" in outputs,
                                   masks="masks" in outputs, on_frame=advance)
    except FcnsegError as exc:
        bar.close()
        print(f"fcnseg: skipped {exc}", file=sys.stderr)
        return 1
    bar.close()
    seconds = time.perf_counter() - start
    print(f"fcnseg: {path} -> {', '.join(str(p) for p in outputs.values())} ({count} frames, "
          f"{count / max(seconds, 1e-9):.1f} frames/s)", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> Path:
    """Refuse bad flags and an unwritable output before anything is loaded; the output
    folder."""
    from ..errors import FcnsegError
    from ..fileio import check_output_file, ensure_writable_dir

    if not 0.0 <= args.alpha <= 1.0:
        raise FcnsegError(f"--alpha {args.alpha} must be between 0 and 1")
    if args.threads < 1:
        raise FcnsegError(f"--threads {args.threads} must be at least 1")
    out = ensure_writable_dir(args.out)
    if args.grid is not None:
        check_output_file(args.grid, "--grid")
    if args.masks is not None and not Path(args.masks).is_dir():
        raise FcnsegError(f"--masks {args.masks} is not a folder of ground-truth masks")
    return out


def _images(predictor: Any, files: list[Path], out: Path, args: argparse.Namespace,
            rank: int, world: int) -> dict[str, int]:
    """Predict this process's share of ``files``: counts of written, skipped, failed."""
    from tqdm import tqdm

    from ..inference.batch import predict_files

    counts = {"written": 0, "skipped": 0, "failed": 0}
    grid: list[tuple[Any, Any, Any]] = []
    bar = tqdm(total=len(range(rank, len(files), world)), unit="img",
               disable=args.no_progress or None, dynamic_ncols=True)
    say = print if args.no_progress else tqdm.write
    for o in predict_files(predictor, files, out, alpha=args.alpha,
                           overlay=None if args.no_overlay else args.overlay_format,
                           probs=args.probs,
                           skip_existing=args.skip_existing, batch_size=args.batch_size,
                           threads=args.threads, rank=rank, world=world):
        if o.status == "notice":
            say(f"fcnseg: {o.message}")
            continue
        counts[o.status] += 1
        bar.update(1)
        if o.status == "failed":
            print(f"fcnseg: skipped {o.message}", file=sys.stderr)
        elif o.status == "written":
            if args.no_progress:
                say(f"{o.path} -> {out / (o.path.stem + '.png')} "
                    f"({o.mask.shape[0]} x {o.mask.shape[1]})")
            if args.grid is not None and len(grid) < args.grid_max:
                truth = None if args.masks is None else \
                    _truth(Path(args.masks), o.path.stem, o.mask.shape, predictor.meta)
                grid.append((o.image, o.mask, truth))
    bar.close()
    if args.grid is not None and grid:
        _write_grid(grid, predictor.meta, args.grid)
    return counts


def run(args: argparse.Namespace) -> int:
    from ..distributed import rank_and_world
    from ..inference.batch import collect_inputs
    from ..inference.runtimes import cpu_threads
    from ..inference.video import is_video

    out = _check(args)
    files, failures = collect_inputs(args.inputs)
    videos = [f for f in files if is_video(f)]
    files = [f for f in files if not is_video(f)]
    rank, world = rank_and_world(env=True)
    for pattern, why in failures if rank == 0 else ():
        print(f"fcnseg: skipped {pattern}: {why}", file=sys.stderr)
    predictor = load_predictor(args, streams=cpu_threads() if len(files) > 1 or videos else 1)
    who = f"rank {rank}/{world}: " if world > 1 else ""
    mine = len(range(rank, len(files), world))
    what = " and ".join(([f"{mine} of {len(files)} images"] if files or not videos else [])
                        + ([f"{len(videos[rank::world])} of {len(videos)} videos"] if videos
                           else []))
    print(f"fcnseg: {who}{what} with {args.checkpoint} "
          f"({predictor.meta.num_classes} classes; {predictor.reason})", file=sys.stderr)
    video_failures = sum(_video(predictor, v, out, args) for v in videos[rank::world])
    start = time.perf_counter()
    counts = _images(predictor, files, out, args, rank, world)
    counts["failed"] += (len(failures) if rank == 0 else 0) + video_failures
    if not files and videos:  # 2: nothing could be predicted, as for images
        return (2 if video_failures == len(videos[rank::world]) else 1) if counts["failed"] \
            else 0
    rate = f"{counts['written'] / max(time.perf_counter() - start, 1e-9):.1f} img/s"
    print(f"fcnseg: {who}predicted {counts['written']}, skipped {counts['skipped']} existing, "
          f"{counts['failed']} failed ({rate})", file=sys.stderr)
    if counts["failed"] and not counts["written"] and not counts["skipped"]:
        return 2  # nothing could be predicted: a user error, as the README promises
    return 1 if counts["failed"] else 0
