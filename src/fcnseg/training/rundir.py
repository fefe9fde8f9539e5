"""The run folder's rules: a finished run is never overwritten by accident, one process owns it.

* A folder that already holds a run (``last.pt``) is only trained into again with
  ``--resume`` (continue it) or ``--overwrite`` (replace it: the old run's checkpoints,
  event files and pictures are removed); anything else is refused before a byte is
  written, ``config.toml`` included.
* The process that trains holds an exclusive ``flock`` on ``RUN_DIR/.fcnseg.lock`` for the
  whole run. The kernel releases it when the process ends, however it ends (SIGKILL too),
  so a lock is never stale; a second process is refused with the holder's PID.
* Temporary files of interrupted atomic writes (``.last.pt.XXXX.tmp``) are removed when a
  run starts: under the lock no other writer can own them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import FcnsegError
from ..fileio import atomic_write_text, ensure_writable_dir
from .config import to_toml

LOCK_NAME = ".fcnseg.lock"
VAL_PICTURES = "val"  # RUN_DIR/val/epoch_NNN: the validation pictures of each epoch
REPLACED_RUN = ("best.pt", "last.pt", "events.out.tfevents.*", f"{VAL_PICTURES}/epoch_*")


class RunFolderError(FcnsegError):
    """The run folder holds another run, or another process is training into it."""


def check_run_folder(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over a finished one, naming both ways out."""
    if resume or not (run_dir / "last.pt").exists():
        return
    if overwrite:
        # What the replaced run wrote that the new one may not write again: best.pt (a new
        # run may never validate, or score lower), last.pt (a worker restarted by torchrun
        # resumes from it), its TensorBoard event files (TensorBoard would show both runs'
        # figures as one) and its validation pictures (a shorter run leaves later epochs').
        for pattern in REPLACED_RUN:
            for path in run_dir.glob(pattern):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        return
    raise RunFolderError(f"{run_dir} already holds a run (last.pt): continue it with "
                         f"`fcnseg train --resume --out {run_dir}`, choose a new --out, or "
                         "replace it with --overwrite")


@contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[Path]:
    """Hold ``RUN_DIR/.fcnseg.lock`` for the ``with`` block; refuse if another process does."""
    run_dir = ensure_writable_dir(run_dir, what="run folder (--out)")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no kernel lock to take
        yield run_dir
        return
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderError(f"{run_dir} is in use by another fcnseg process (PID "
                                 f"{holder}): wait for it to finish or use another --out") \
                from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_temporaries(run_dir)
        yield run_dir
    finally:
        os.close(fd)  # releases the flock; the file stays (removing it would race a waiter)


def make_run_dir(config: Any) -> Path:
    """The run folder, created (after every check: a refused command creates nothing)."""
    return ensure_writable_dir(config.out, what="run folder (--out)")


def write_config(run_dir: Path, config: Any) -> None:
    """The run's ``config.toml``: the settings it trains with, planned epochs included."""
    atomic_write_text(run_dir / "config.toml", to_toml(config))


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete ``.NAME.XXXX.tmp`` files left by writes that a crash or SIGKILL cut short."""
    removed = []
    for path in run_dir.rglob(".*.tmp"):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            continue
    return removed
