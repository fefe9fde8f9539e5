"""The deployment install: an exported model predicts and serves with no PyTorch.

The slow tests build fcnseg's wheel, install it as ``fcnseg[deploy]`` into a fresh virtual
environment (conftest.deploy_venv) and drive the command line there; the quick one checks
in this environment that the predict and serve path never imports PyTorch.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import export_model, make_checkpoint, start_server
from fcnseg import Predictor

# The modules `fcnseg predict` and `fcnseg serve` load for an exported model.
SERVING_PATH = ("fcnseg", "fcnseg.inference.batch", "fcnseg.commands.predict",
                "fcnseg.commands.serve", "fcnseg.distributed", "fcnseg.serve.app",
                "fcnseg.serve.server")


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("exported")
    ckpt = make_checkpoint(folder / "toy.pt", model="fcn8s")
    return export_model(ckpt, folder / "toy.onnx")


def _image(path: Path, seed: int = 0, size: tuple[int, int] = (48, 72)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_predicting_an_export_imports_no_pytorch(onnx_model, tmp_path):
    image = _image(tmp_path / "a.png")
    probe = (f"import sys\nimport {', '.join(SERVING_PATH)}\n"
             f"from fcnseg import Predictor\n"
             f"mask = Predictor.from_file({str(onnx_model)!r}).predict({str(image)!r})\n"
             "print(mask.shape, sorted(m for m in sys.modules if m.split('.')[0] in "
             "('torch', 'torchvision', 'timm', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "(48, 72) []"


@pytest.mark.slow
def test_the_deploy_install_predicts_and_serves_an_export(deploy_venv, onnx_model, tmp_path):
    fcnseg, python = str(deploy_venv / "fcnseg"), str(deploy_venv / "python")
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0
    images = tmp_path / "images"
    images.mkdir()
    files = [_image(images / f"{i}.png", i, size) for i, size in
             enumerate(((48, 72), (48, 72), (37, 51)))]
    here = Predictor.from_file(onnx_model)

    done = subprocess.run([fcnseg, "predict", "--checkpoint", str(onnx_model), str(images),
                           "--out", str(tmp_path / "masks")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for f in files:
        written = np.asarray(Image.open(tmp_path / "masks" / f"{f.stem}.png"))
        assert np.array_equal(written, here.predict(f))

    from test_video import decoded, make_video, video_info

    video = make_video(tmp_path / "drive.mp4", 6, 48, 64)
    done = subprocess.run([fcnseg, "predict", "--checkpoint", str(onnx_model), str(video),
                           "--out", str(tmp_path / "video"), "--video-masks"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert video_info(tmp_path / "video" / "drive_overlay.mp4") == (64, 48, 24, 6)
    masks = sorted((tmp_path / "video" / "drive_masks").glob("*.png"))
    assert len(masks) == 6
    for frame, path in zip(decoded(video), masks, strict=True):
        assert np.array_equal(np.asarray(Image.open(path)), here.predict(frame))

    server, base = start_server([fcnseg, "serve", "--checkpoint", str(onnx_model)])
    try:
        for page in ("/", "/docs", "/static/app.js"):
            with urllib.request.urlopen(base + page, timeout=10) as reply:
                assert reply.status == 200
        request = urllib.request.Request(base + "/v1/segment?output=mask",
                                         data=files[2].read_bytes(),
                                         headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            mask = np.asarray(Image.open(reply))
        assert np.array_equal(mask, here.predict(files[2]))
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["train", "--dataset", "shapes", "--epochs", "1"],
    ["demo"],
    ["evaluate", "--checkpoint", "model.onnx", "--dataset", "shapes"],
])
def test_training_commands_say_what_to_install(deploy_venv, command):
    done = subprocess.run([str(deploy_venv / "fcnseg"), *command], capture_output=True,
                          text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"fcnseg {command[0]} needs torch" in done.stderr
    assert "pip install 'fcnseg[train]'" in done.stderr

