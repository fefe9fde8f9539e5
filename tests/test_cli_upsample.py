"""``fcnseg upsample``: enlarge a real CamVid photo; bad input gives one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fcnseg.cli import main

CAMVID_VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid" / "val"


@pytest.fixture(scope="module")
def photo() -> Path:
    images = sorted(CAMVID_VAL.glob("*.png")) if CAMVID_VAL.is_dir() else []
    if not images:
        pytest.skip(f"no CamVid val images in {CAMVID_VAL}")
    return images[0]


def test_upsample_doubles_a_real_photo_and_looks_like_it(photo, tmp_path, capsys):
    out, fig = tmp_path / "big.png", tmp_path / "fig.png"
    status = main(["upsample", str(photo), "--scale", "2", "--out", str(out), "--figure", str(fig)])
    assert status == 0
    original = np.asarray(Image.open(photo).convert("RGB"))
    h, w = original.shape[:2]
    assert f"input: 3 x {h} x {w} -> output: 3 x {2 * h} x {2 * w}" in capsys.readouterr().out

    big = np.asarray(Image.open(out))
    assert big.shape == (2 * h, 2 * w, 3) and big.dtype == np.uint8
    # Downsampled back by 2 (mean of each 2x2 block) it matches the input closely ...
    back = big.reshape(h, 2, w, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(back - original).mean() < 3.0
    # ... and it is bilinear interpolation up to rounding, the border included.
    x = torch.from_numpy(original.copy()).permute(2, 0, 1)[None].float()
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    ref = ref[0].permute(1, 2, 0).round().clamp(0, 255).numpy()
    assert np.abs(ref - big.astype(float)).max() <= 1
    # The figure is a PNG with the two images side by side (wider than tall).
    figure = Image.open(fig)
    assert figure.format == "PNG" and figure.width > figure.height
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png", "fig.png"]  # no temp files


def test_upsample_scale_3_on_a_small_image(tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    assert main(["upsample", str(tmp_path / "s.png"), "--scale", "3", "--out",
                 str(tmp_path / "o.png")]) == 0
    assert "output: 3 x 60 x 90" in capsys.readouterr().out
    assert Image.open(tmp_path / "o.png").size == (90, 60)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("fcnseg: error: ") and err.count("\n") == 1
    assert "Traceback" not in err
    return err


def test_non_image_file_is_a_one_line_error(tmp_path, capsys):
    junk = tmp_path / "notes.png"
    junk.write_text("not really a picture")
    assert main(["upsample", str(junk), "--out", str(tmp_path / "o.png")]) == 2
    assert "notes.png" in _one_line_error(capsys)
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("scale", ["0", "-2"])
def test_bad_scale(tmp_path, capsys, scale):
    assert main(["upsample", "x.png", "--scale", scale, "--out", str(tmp_path / "o.png")]) == 2
    assert "--scale" in _one_line_error(capsys)


def test_non_integer_scale_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as info:
        main(["upsample", "x.png", "--scale", "1.5", "--out", "o.png"])
    assert info.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_unwritable_output_names_the_path(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "s.png")
    (tmp_path / "a_file").write_text("not a folder")
    target = tmp_path / "a_file" / "o.png"  # unwritable even for root
    assert main(["upsample", str(tmp_path / "s.png"), "--out", str(target)]) == 2
    assert str(target.parent) in _one_line_error(capsys)
    assert not list(tmp_path.glob("**/*.tmp"))


@pytest.mark.slow
def test_subprocess_exit_code_and_no_traceback(tmp_path):
    junk = tmp_path / "data.bin"
    junk.write_bytes(b"\x00\x01garbage")
    result = subprocess.run(
        [sys.executable, "-m", "fcnseg", "upsample", str(junk), "--out", str(tmp_path / "o.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fcnseg: error: ") and "data.bin" in lines[0]
    assert "Traceback" not in result.stderr
