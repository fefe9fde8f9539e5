"""Every user error is one line naming the file and the fix, exit status 2, no traceback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.checkpoint import save_checkpoint
from fcnseg.cli import main


@pytest.fixture(scope="module")
def ckpt(toy_checkpoint):
    return toy_checkpoint


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("fcnseg: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _image(path, h=20, w=30):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("line, needle", [
    ('lr = "0.01"', "lr = '0.01'"), ('momentum = "high"', "momentum"),
    ('log_every = "x"', "log_every"), ('scale = ["a", "b"]', "scale"), ("crop = 64", "crop"),
    ('seed = "abc"', "seed"), ("data_options = 5", "data_options"),
    ('flip = "no"', "true or false"), ("epochs = true", "an integer"),
    ("lr = inf", "finite"), ("poly_power = -1.0", "poly_power"),
])
def test_config_values_of_the_wrong_type(tmp_path, capsys, line, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(line + "\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    msg = _one_line_error(capsys, needle)
    assert "poly_power" in msg or str(cfg) in msg  # the file is named
    assert not (tmp_path / "run" / "config.toml").exists()


def test_checkpoints_missing_or_empty_entries_are_named(tmp_path, ckpt, capsys):
    state = torch.load(ckpt, weights_only=True)
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run" / "last.pt", state)  # no config, optimizer...
    assert main(["train", "--resume", "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, "last.pt", "config", "resume")
    save_checkpoint(tmp_path / "empty.pt", {**state, "model": {}, "meta": {}})
    assert main(["predict", "--checkpoint", str(tmp_path / "empty.pt"),
                 str(_image(tmp_path / "a.png")), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "empty.pt", "model, meta")
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--dataset", "shapes"]) == 2
    _one_line_error(capsys, "is a folder", "best.pt")


def test_decompression_bombs_are_refused_by_every_command(tmp_path, ckpt, capsys, monkeypatch):
    bomb = _image(tmp_path / "bomb.png", 40, 40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 px > 2 x 100: a "bomb"
    assert main(["upsample", str(bomb), "--out", str(tmp_path / "x.png")]) == 2
    _one_line_error(capsys, "bomb.png", "too large")
    from fcnseg.data.io import read_image, read_mask
    from fcnseg.errors import DataError

    for reader in (read_image, read_mask):  # the one path train and evaluate read through
        with pytest.raises(DataError, match="bomb.png.*too large"):
            reader(bomb)


def test_upsample_refuses_outputs_larger_than_memory(tmp_path, capsys):
    img = _image(tmp_path / "p.png", 360, 480)
    assert main(["upsample", str(img), "--scale", "1000", "--out", str(tmp_path / "x.png")]) == 2
    _one_line_error(capsys, "360000 x 480000", "smaller --scale")
    assert not (tmp_path / "x.png").exists()


def test_a_huge_image_is_predicted_with_tiles_and_the_rest_go_on(tmp_path, ckpt, capsys,
                                                                  monkeypatch):
    from fcnseg.inference import predictor

    big, small = _image(tmp_path / "big.png", 300, 400), _image(tmp_path / "small.png")
    # pretend the free memory is 40 MB: half of it does not hold a whole-image pass over
    # 300 x 400 (22 MB at 184 B/pixel), and it holds the tiles (~15 MB: Predictor.tiled_need)
    from fcnseg import device

    for module in (predictor, device):
        monkeypatch.setattr(module, "available_memory", lambda: 40_000_000)
    assert main(["predict", "--checkpoint", str(ckpt), str(big), str(small), "--out",
                 str(tmp_path / "o"), "--no-progress", "--tile", "128", "128"]) == 0
    out = capsys.readouterr().out
    assert "big.png: 300 x 400 is too large" in out and "--mode slide" in out
    with Image.open(tmp_path / "o" / "big.png") as m:
        assert m.size == (400, 300)
    assert (tmp_path / "o" / "small.png").exists()


def test_weaker_messages_mended(tmp_path, ckpt, capsys):
    img = _image(tmp_path / "a.png")
    (tmp_path / "j").mkdir()
    assert main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "shapes", "--data-dir",
                 str(tmp_path / "nodata"), "--json", str(tmp_path / "j")]) == 2
    _one_line_error(capsys, "--json", "is a folder")  # before any evaluation work
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "a.png").write_bytes(b"garbage")  # a corrupt truth mask: the grid row is dropped
    assert main(["predict", "--checkpoint", str(ckpt), str(img), "--out", str(tmp_path / "o"),
                 "--grid", str(tmp_path / "g.png"), "--masks", str(masks)]) == 0
    assert (tmp_path / "o" / "a.png").exists() and (tmp_path / "g.png").exists()
    capsys.readouterr()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["predict", "--checkpoint", str(ckpt), str(bad), "--out",
                 str(tmp_path / "o2")]) == 2  # nothing could be predicted: a user error
    assert "bad.png" in capsys.readouterr().err


@pytest.mark.parametrize("runtime", ["auto", "onnxruntime", "openvino"])
def test_an_onnx_file_fcnseg_did_not_export_is_one_line(tmp_path, capsys, runtime):
    onnx = pytest.importorskip("onnx")
    if runtime == "openvino":
        pytest.importorskip("openvino")
    helper, io = onnx.helper, onnx.TensorProto.FLOAT
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", io, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", io, [1, 3, 8, 8])])
    onnx.save(helper.make_model(graph), tmp_path / "foreign.onnx")
    assert main(["predict", "--checkpoint", str(tmp_path / "foreign.onnx"), "--runtime",
                 runtime, str(_image(tmp_path / "a.png")), "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, "foreign.onnx has no fcnseg metadata", "fcnseg export")
