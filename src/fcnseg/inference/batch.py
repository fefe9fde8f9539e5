"""Predicting a folder of any size: streamed, decoded and encoded beside the model.

Images are decoded by a small thread pool a few batches ahead of the model and the masks,
overlays and probabilities are encoded by the same pool behind it (PIL's codecs release the
GIL), so the model rarely waits for the disk. At most ``lookahead`` images are in memory at
once whatever the folder's size. Under ``torchrun`` each rank takes ``files[rank::world]``:
no file is predicted twice and no communication is needed. Outputs are written atomically,
so an interrupted job resumed with ``skip_existing`` redoes only what it had not finished.
"""

from __future__ import annotations

import glob
import itertools
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.io import IMAGE_EXTENSIONS, ImageTooLargeError, read_image, write_mask
from ..errors import FcnsegError
from ..fileio import atomic_write
from ..viz import overlay, save_image
from .predictor import Predictor


@dataclass
class Outcome:
    """What became of one input: ``status`` is "written", "skipped" or "failed" (or a
    "notice" about how it is predicted, before its outcome)."""

    path: Path
    status: str
    message: str = ""
    image: np.ndarray | None = None  # the decoded image and its mask, when written
    mask: np.ndarray | None = None


def collect_inputs(patterns: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files, folders (their images) and globs; returns ``(files, failures)``."""
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


def output_names(files: list[Path], probs: bool = False,
                 overlay: str | None = "jpg") -> dict[Path, dict[str, str]]:
    """The output file names of each input (``{"mask", "overlay"?, "probs"?}``); two
    inputs writing one name is an error."""
    names: dict[Path, dict[str, str]] = {}
    owner: dict[str, Path] = {}
    for f in files:
        mine = {"mask": f"{f.stem}.png"}
        if overlay:
            mine["overlay"] = f"{f.stem}_overlay.{overlay}"
        if probs:
            mine["probs"] = f"{f.stem}_probs.npy"
        for name in mine.values():
            if name in owner:
                raise FcnsegError(f"{owner[name]} and {f} would both write {name}: "
                                  "rename one or predict them into different --out folders")
            owner[name] = f
        names[f] = mine
    return names


def predict_files(predictor: Predictor, files: list[Path], out: Path, *, alpha: float = 0.5,
                  overlay: str | None = "jpg", probs: bool = False, skip_existing: bool = False,
                  batch_size: int = 1, threads: int = 2, rank: int = 0,
                  world: int = 1) -> Iterator[Outcome]:
    """Predict ``files`` into ``out``, yielding an :class:`Outcome` per file of this rank.

    Writes ``<stem>.png`` (palette PNG of class ids, the image's exact size), with
    ``overlay`` (its format, "jpg" or "png"; None: none) ``<stem>_overlay.jpg`` and with
    ``probs`` ``<stem>_probs.npy`` (float16 C x H x W). A file that cannot be read is
    reported and skipped; the rest go on.
    Batches of ``batch_size`` images are predicted ``predictor.streams`` at a time, while
    ``threads`` threads decode the next images and encode the last ones' outputs.
    """
    names = output_names(files, probs, overlay)  # every rank checks every name alike
    todo = iter(files[rank::world])
    streams = predictor.streams
    lookahead = max(2 * batch_size * streams, 4)  # images decoded, predicted or encoding
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="fcnseg-io") as io, \
            ThreadPoolExecutor(streams, thread_name_prefix="fcnseg-model") as model:
        jobs: deque[tuple[int, Future]] = deque()  # (images, their outcomes), in file order

        def submit(batch: list[Path]) -> Future:
            done = {f for f in batch if skip_existing
                    and all((out / n).is_file() for n in names[f].values())}
            skipped = [(Outcome(f, "skipped", "outputs exist"), None) for f in done]
            reads = [io.submit(_read, f) for f in batch if f not in done]
            if not reads:
                return _done(skipped)
            return model.submit(_predict_batch, predictor, reads, io, out, names, alpha, probs,
                                skipped)

        while True:
            while sum(n for n, _ in jobs) < lookahead:
                batch = list(itertools.islice(todo, batch_size))
                if not batch:
                    break
                jobs.append((len(batch), submit(batch)))
            if not jobs:
                return
            for outcome, written in jobs.popleft()[1].result():
                if written is not None:
                    written.result()  # a failed write (full disk...) stops the job, naming it
                yield outcome


def _predict_batch(predictor: Predictor, reads: list[Future], io: ThreadPoolExecutor,
                   out: Path, names: dict[Path, dict[str, str]], alpha: float,
                   probs: bool, done: list[tuple[Outcome, Future | None]]
                   ) -> list[tuple[Outcome, Future | None]]:
    """Predict the images of ``reads`` (on a model thread) and hand their outputs to ``io``
    to encode: ``done`` + ``(outcome, write or None)`` per file, notices before their
    file's outcome."""
    ready = []
    for o in (r.result() for r in reads):
        if o.status != "read":
            done.append((o, None))
            continue
        try:  # every array the image will need, counted before any is made
            predictor.check_memory(*o.image.shape[:2], name=str(o.path), labels=not probs)
        except ImageTooLargeError as exc:
            done.append((Outcome(o.path, "failed", str(exc)), None))
            continue
        if not predictor.fits_whole(*o.image.shape[:2]):
            done.append((Outcome(o.path, "notice", f"{o.path}: {o.image.shape[0]} x "
                                 f"{o.image.shape[1]} is too large for a whole-image pass in "
                                 "the free memory: predicted with --mode slide tiles"), None))
        ready.append(o)
    if not ready:
        return done
    images = [o.image for o in ready]
    try:
        if probs:
            maps = predictor.predict_many(images)
            masks = [p.argmax(0).astype(np.uint8) for p in maps]
        else:
            maps, masks = [None] * len(ready), predictor.predict_labels(images)
    except MemoryError:  # the estimate was short: these images fail, not the job
        return done + [(Outcome(o.path, "failed", f"{o.path}: out of memory while predicting "
                                "it: resize it or split it into parts"), None) for o in ready]
    for o, mask, p in zip(ready, masks, maps, strict=True):
        o.status, o.mask = "written", mask
        arr = None if p is None else p.astype(np.float16)
        done.append((o, io.submit(_write, predictor, o, out, names[o.path], alpha, arr)))
    return done


def _done(outcome: Any) -> Future:
    future: Future = Future()
    future.set_result(outcome)
    return future


def _read(path: Path) -> Outcome:
    try:
        return Outcome(path, "read", image=read_image(path))
    except MemoryError:
        return Outcome(path, "failed", f"{path}: too large to decode in the memory this "
                                       "process can use: resize it or split it into parts")
    except FcnsegError as exc:
        message = str(exc)
        return Outcome(path, "failed", message if message.startswith(str(path))
                       else f"{path}: {message}")


def _write(predictor: Predictor, o: Outcome, out: Path, names: dict[str, str], alpha: float,
           probs: np.ndarray | None) -> None:
    meta = predictor.meta
    assert o.image is not None and o.mask is not None
    write_mask(out / names["mask"], o.mask, meta.palette)
    if "overlay" in names:
        save_image(overlay(o.image, o.mask, meta.palette, alpha, meta.ignore_index),
                   out / names["overlay"])
    if probs is not None:
        atomic_write(out / names["probs"], lambda fh: np.save(fh, probs))
