"""Video in and out: frames stream through decode -> model -> encode with bounded memory.

PyAV (``av`` on PyPI, FFmpeg inside its wheels; no system ffmpeg) decodes any container
FFmpeg knows. Each frame is an RGB image to the :class:`Predictor` (so a frame's mask is
exactly the mask of that frame saved as an image); ``predictor.streams`` frames are in the
model at once, a few more decoded ahead, never the whole video. The overlay video keeps the
input's size and frame rate, in H.264 (MPEG-4 Part 2 where the PyAV build lacks libx264),
written to a temporary file and renamed: a stopped job leaves no half video. No PyTorch is
imported here: an exported model predicts videos in the ``[deploy]`` install.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.io import write_mask
from ..errors import DataError
from ..fileio import ensure_writable_dir
from ..viz import overlay

if TYPE_CHECKING:
    from .predictor import Predictor

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts")
CODECS = ("libx264", "mpeg4")  # H.264 where the build has it


def is_video(path: str | Path) -> bool:
    """Whether ``path`` is named like a video file."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class VideoInfo:
    """What the input video is: size, frame rate, frame count (0: unknown)."""

    width: int
    height: int
    rate: Fraction
    frames: int


@contextmanager
def open_video(path: str | Path) -> Iterator[tuple[Any, Any, VideoInfo]]:
    """The container and first video stream of ``path``; a file FFmpeg cannot read, or one
    without video, raises :class:`DataError` naming it."""
    from .runtimes import require

    av = require("av", "video", f"reading {path} (a video) ")

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise DataError(f"{path}: not a video this build of FFmpeg can read ({exc}): check "
                        "the file, or convert it to MP4") from exc
    try:
        if not container.streams.video:
            raise DataError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # decode on several threads where the codec allows
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        yield container, stream, VideoInfo(stream.codec_context.width,
                                           stream.codec_context.height, Fraction(rate),
                                           int(stream.frames or 0))
    finally:
        container.close()


def frames(path: str | Path) -> Iterator[np.ndarray]:
    """The frames of ``path`` as ``H x W x 3`` uint8 RGB arrays, in order."""
    import av

    with open_video(path) as (container, stream, _):
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as exc:
            raise DataError(f"{path}: the video is corrupt or truncated ({exc})") from exc


def predict_frames(predictor: Predictor, path: str | Path
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(frame, mask)`` of each frame of ``path``, in order, ``predictor.streams`` frames
    in the model at once and at most twice that many decoded ahead."""
    ahead = 2 * predictor.streams
    with ThreadPoolExecutor(predictor.streams, thread_name_prefix="fcnseg-video") as pool:
        pending: deque = deque()
        for rgb in frames(path):
            pending.append((rgb, pool.submit(predictor.predict_labels, [rgb])))
            if len(pending) > ahead:
                rgb, job = pending.popleft()
                yield rgb, job.result()[0]
        while pending:
            rgb, job = pending.popleft()
            yield rgb, job.result()[0]


def video_outputs(path: Path, out: Path, overlay_video: bool, masks: bool) -> dict[str, Path]:
    """Where a video's outputs go: ``<stem>_overlay.mp4`` and the folder ``<stem>_masks/``
    of per-frame palette PNGs (``000000.png``, ...)."""
    names = {"overlay": out / f"{path.stem}_overlay.mp4"} if overlay_video else {}
    if masks:
        names["masks"] = out / f"{path.stem}_masks"
    return names


def predict_video_file(predictor: Predictor, path: Path, out: Path, *, alpha: float = 0.5,
                       overlay_video: bool = True, masks: bool = False,
                       on_frame: Callable[[int, int], None] | None = None) -> int:
    """Predict every frame of ``path`` into ``out`` (:func:`video_outputs`); returns the
    number of frames. ``on_frame(done, total)`` after each frame (total 0: unknown)."""
    outputs = video_outputs(Path(path), ensure_writable_dir(out), overlay_video, masks)
    meta = predictor.meta
    with open_video(path) as (_, _, info), _encoder(outputs.get("overlay"), info) as encode:
        if "masks" in outputs:
            outputs["masks"].mkdir(parents=True, exist_ok=True)
        count = 0
        for rgb, mask in predict_frames(predictor, path):
            if encode is not None:
                encode(overlay(rgb, mask, meta.palette, alpha, meta.ignore_index))
            if "masks" in outputs:
                write_mask(outputs["masks"] / f"{count:06d}.png", mask, meta.palette)
            count += 1
            if on_frame is not None:
                on_frame(count, info.frames)
    if count == 0:
        raise DataError(f"{path}: the video has no frames that decode")
    return count


@contextmanager
def _encoder(target: Path | None, info: VideoInfo) -> Iterator[Callable[[np.ndarray], None]
                                                               | None]:
    """A function encoding RGB frames into ``target`` (None: no video written), the file
    renamed into place only when every frame is in."""
    if target is None:
        yield None
        return
    import av

    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        with av.open(tmp, "w", format="mp4") as container:
            stream = _video_stream(container, info)
            index = 0

            def encode(rgb: np.ndarray) -> None:
                nonlocal index
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = index, 1 / info.rate
                index += 1
                container.mux(stream.encode(frame))

            yield encode
            container.mux(stream.encode(None))  # flush the encoder's delayed frames
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _video_stream(container: Any, info: VideoInfo) -> Any:
    """An H.264 (else MPEG-4) stream of the input's size and rate; 4:2:0 needs even sizes,
    so odd-sized videos are written 4:4:4."""
    import av

    for codec in CODECS:
        try:
            stream = container.add_stream(codec, rate=info.rate)
            break
        except (av.FFmpegError, ValueError):
            continue
    else:  # pragma: no cover - every PyAV wheel has MPEG-4
        raise DataError(f"this PyAV build has none of the encoders {', '.join(CODECS)}")
    stream.width, stream.height = info.width, info.height
    even = info.width % 2 == 0 and info.height % 2 == 0
    stream.pix_fmt = "yuv420p" if even or stream.codec_context.name != "libx264" else "yuv444p"
    if stream.codec_context.name == "libx264":
        # x264's default preset (medium) took ~12 ms a 480 x 360 frame on one core, as much as
        # the model; veryfast ~5 ms, and its files were no larger (benchmarks/RESULTS.md).
        stream.options = {"preset": "veryfast"}
        stream.codec_context.thread_count = 1  # the model's streams have the cores
    return stream
