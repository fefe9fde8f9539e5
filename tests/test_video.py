"""Video in and out: a short video encoded here with PyAV, predicted by `fcnseg predict`
and `Predictor.predict_video`; frames, size and rate kept, masks equal to the frames'."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_checkpoint
from fcnseg import Predictor
from fcnseg.cli import main

av = pytest.importorskip("av")


def make_video(path: Path, frames: int, height: int, width: int,
               rate: Fraction = Fraction(24)) -> Path:
    """A video of moving coloured blocks (``frames`` frames), H.264 where it can be."""
    with av.open(str(path), "w") as container:
        even = height % 2 == 0 and width % 2 == 0
        stream = container.add_stream("libx264" if even else "mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            rgb = np.zeros((height, width, 3), np.uint8)
            rgb[:, : (i * 5) % width + 1] = (200, 40, 40)
            rgb[height // 2:, :, 2] = 180
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def video_info(path: Path) -> tuple[int, int, Fraction, int]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        count = sum(1 for _ in c.decode(s))
        return s.codec_context.width, s.codec_context.height, s.average_rate, count


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("video") / "best.pt", model="fcn8s")


@pytest.mark.parametrize("size,rate", [((48, 64), Fraction(24)),
                                       ((35, 49), Fraction(30000, 1001))])
def test_predict_writes_an_overlay_video_and_the_frames_masks(checkpoint, tmp_path, size,
                                                              rate):
    video = make_video(tmp_path / "drive.mp4", 9, *size, rate=rate)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), str(video), "--out", str(out),
                 "--video-masks", "--precision", "fp32", "--no-progress"]) == 0
    width, height, got_rate, count = video_info(out / "drive_overlay.mp4")
    assert (height, width, count) == (*size, 9) and got_rate == rate
    predictor = Predictor.from_file(checkpoint, precision="fp32")
    frames = decoded(video)
    written = sorted((out / "drive_masks").glob("*.png"))
    assert [p.name for p in written] == [f"{i:06d}.png" for i in range(9)]
    for frame, path in zip(frames, written, strict=True):
        assert np.array_equal(np.asarray(Image.open(path)), predictor.predict(frame))
    streamed = list(predictor.predict_video(video))
    assert len(streamed) == 9
    assert all(np.array_equal(m, predictor.predict(f)) for m, f in zip(streamed, frames,
                                                                         strict=True))
    assert not list(out.glob(".*.tmp"))  # written whole, then renamed


def test_a_corrupt_or_truncated_video_is_one_line(checkpoint, tmp_path, capsys):
    video = make_video(tmp_path / "good.mp4", 4, 32, 32)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video at all")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[:600])
    for path in (bad, cut):
        assert main(["predict", "--checkpoint", str(checkpoint), str(path), "--out",
                     str(tmp_path / "out"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"skipped {path}" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "bad_overlay.mp4").exists()
