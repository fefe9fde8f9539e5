"""Video against folder prediction: the same frames, the same model, in one run.

The first ``--frames`` CamVid val images (360 x 480; the CamVid frames are cut from drive
videos) are written once as an H.264 video and once as a folder of PNGs decoded from that
very video; then ``fcnseg predict``'s two library paths predict them with one exported
model, alternating over ``--rounds`` (medians kept): ``predict_video_file`` (decode ->
model -> overlay video) and ``predict_files`` (decode -> model -> mask and overlay PNGs).
Frames/s over images/s is the video path's share of the folder's speed.

    python benchmarks/video.py --model benchmarks/out/inference/int8.onnx \\
        --data-dir ../shared/data/camvid --frames 101 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from fcnseg import Predictor
from fcnseg.inference.batch import predict_files
from fcnseg.inference.runtimes import cpu_threads
from fcnseg.inference.video import frames, predict_video_file
from report import write_report


def write_video(images: list[Path], path: Path, rate: int = 30) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        first = Image.open(images[0])
        stream.width, stream.height, stream.pix_fmt = first.width, first.height, "yuv420p"
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(np.asarray(Image.open(image).convert("RGB")),
                                               format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an exported .onnx or a .pt")
    parser.add_argument("--data-dir", required=True, help="the CamVid folder")
    parser.add_argument("--frames", type=int, default=101)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/video.json"))
    args = parser.parse_args()
    images = sorted((Path(args.data_dir) / "val").glob("*.png"))[:args.frames]
    predictor = Predictor.from_file(args.model, streams=cpu_threads())
    work = Path(tempfile.mkdtemp(prefix="fcnseg-video-"))
    video = work / "drive.mp4"
    write_video(images, video)
    folder = work / "frames"
    folder.mkdir()
    for i, rgb in enumerate(frames(video)):
        Image.fromarray(rgb).save(folder / f"{i:04d}.png", compress_level=1)
    files = sorted(folder.glob("*.png"))
    video_fps, folder_fps = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        count = predict_video_file(predictor, video, work / "video-out")
        video_fps.append(count / (time.perf_counter() - start))
        start = time.perf_counter()
        done = sum(o.status == "written" for o in predict_files(predictor, files,
                                                               work / "folder-out"))
        folder_fps.append(done / (time.perf_counter() - start))
    row = {"model": args.model, "runtime": predictor.runtime, "precision": predictor.precision,
           "streams": predictor.streams, "frames": len(files),
           "video_frames_per_s": statistics.median(video_fps),
           "folder_images_per_s": statistics.median(folder_fps)}
    row["ratio"] = row["video_frames_per_s"] / row["folder_images_per_s"]
    print(f"{predictor.runtime} {predictor.precision}, {predictor.streams} streams, "
          f"{len(files)} frames: video {row['video_frames_per_s']:.1f} frames/s, folder "
          f"{row['folder_images_per_s']:.1f} img/s, ratio {row['ratio']:.2f}")
    write_report(args.json, rows=[row])


if __name__ == "__main__":
    main()
