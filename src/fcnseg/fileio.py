"""Writing files so that nothing is ever half-written.

Every output of fcnseg (checkpoints, masks, figures, logs) goes through :func:`atomic_write`:
the bytes land in a temporary file in the *same* folder, and only a complete file is renamed
over the destination (``os.replace``: atomic on POSIX and Windows within one file system).
A crash, a full disk or SIGKILL at any moment leaves the old file or the new one, never a
truncated one, and no temporary file behind.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import FcnsegError


def ensure_writable_dir(folder: str | Path, what: str = "output folder",
                        error: type[FcnsegError] = FcnsegError) -> Path:
    """Create ``folder`` if needed and check, before any work, that files can be written in it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".fcnseg-write-test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise error(f"cannot write to {what} {folder} ({exc.strerror or exc}): "
                    "choose a writable folder") from exc
    return folder


def check_output_file(path: str | Path, what: str = "output") -> Path:
    """Before any work: ``path`` must not be a folder and its folder must be writable."""
    path = Path(path)
    if path.is_dir():
        raise FcnsegError(f"{what} {path} is a folder: give a file name, e.g. {path / 'out'}")
    ensure_writable_dir(path.parent)
    return path


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], *, fsync: bool = False,
                 error: type[FcnsegError] = FcnsegError,
                 hint: str = "free disk space or choose another output folder") -> Path:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, then rename it.

    ``fsync`` also flushes the data and the rename to disk (checkpoints: survive a power
    cut, not only a crash). An ``OSError`` becomes ``error`` naming ``path`` and ``hint``.
    """
    path = Path(path)
    folder = ensure_writable_dir(path.parent, error=error)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:  # KeyboardInterrupt included: never leave the temporary
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise error(f"cannot write {path} ({exc.strerror or exc}): {hint}") from exc
        raise
    if fsync:
        _fsync_dir(folder)
    return path


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT / SIGTERM until the block ends, then act on them (main thread only).

    torch's zip writer turns a Ctrl-C inside it into a RuntimeError and a half-written file;
    held back, the interrupt arrives as usual right after the file is complete and renamed.
    (Python runs signal handlers in the main thread whichever thread the kernel picked, so
    a handler, not a signal mask, is what holds them.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {sig: signal.signal(sig, lambda num, _frame: caught.append(num))
           for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):  # act on them now, synchronously, as they would have
            handler = old[sig]
            if callable(handler):
                handler(sig, None)  # SIGINT: Python's handler raises KeyboardInterrupt here
            elif handler == signal.SIG_DFL:
                signal.raise_signal(sig)  # SIGTERM: the default action ends the process


def atomic_write_text(path: str | Path, text: str, **options) -> Path:
    """:func:`atomic_write` for a UTF-8 text file."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")), **options)


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (the directory entry); best effort, POSIX only."""
    if os.name != "posix":
        return
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
