"""`fcnseg evaluate` and `fcnseg predict` end to end on tiny data and an untrained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CAMVID, TOY_CLASSES, TOY_PALETTE, make_checkpoint
from fcnseg import cli
from fcnseg.cli import main

NAMES, PALETTE = TOY_CLASSES, TOY_PALETTE


def write_image(path: Path, h: int, w: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def make_folder_dataset(root: Path, n: int = 3) -> Path:
    (root / "images" / "val").mkdir(parents=True)
    (root / "masks" / "val").mkdir(parents=True)
    classes = [{"name": nm, "color": list(c)} for nm, c in zip(NAMES, PALETTE, strict=True)]
    (root / "classes.json").write_text(json.dumps({"classes": classes}))
    for i in range(n):
        write_image(root / "images" / "val" / f"im{i}.png", 40, 56 + 8 * i, seed=i)
        mask = np.zeros((40, 56 + 8 * i), dtype=np.uint8)
        mask[10:30, 10:40] = 1
        mask[0, :] = 255  # ignored row
        Image.fromarray(mask).save(root / "masks" / "val" / f"im{i}.png")
    return root


@pytest.fixture(autouse=True)
def only_these_commands(monkeypatch):
    """Build the real CLI with just evaluate and predict: independent of other commands."""
    keep = {k: v for k, v in cli.COMMANDS.items() if k in ("evaluate", "predict")}
    monkeypatch.setattr(cli, "COMMANDS", keep)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


def test_predict_writes_exact_sizes_and_skips_a_non_image(tmp_path, ckpt, capsys):
    a = write_image(tmp_path / "a.jpg", 97, 131)
    b = write_image(tmp_path / "b.png", 40, 56, seed=1)
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    out = tmp_path / "out"
    status = main(["predict", "--checkpoint", str(ckpt), str(a), str(bad), str(b),
                   "--out", str(out), "--device", "cpu", "--precision", "fp32"])
    err = capsys.readouterr().err
    assert status == 1
    assert "notes.txt" in err and "skipped" in err
    for stem, size in (("a", (131, 97)), ("b", (56, 40))):
        with Image.open(out / f"{stem}.png") as m:
            assert m.mode == "P" and m.size == size
            assert set(np.unique(np.asarray(m))) <= {0, 1}
            assert m.getpalette()[3:6] == list(PALETTE[1])
        with Image.open(out / f"{stem}_overlay.jpg") as o:
            assert o.mode == "RGB" and o.size == size and o.format == "JPEG"
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_overlay.jpg", "b.png",
                                                     "b_overlay.jpg"]
    assert main(["predict", "--checkpoint", str(ckpt), str(a), "--out", str(tmp_path / "png"),
                 "--overlay-format", "png", "--precision", "fp32"]) == 0
    with Image.open(tmp_path / "png" / "a_overlay.png") as o:  # lossless when asked
        assert o.format == "PNG"


def test_predict_mask_matches_the_model(tmp_path, ckpt):
    from fcnseg.checkpoint import model_from_checkpoint
    from fcnseg.data.transforms import Normalize
    from fcnseg.inference import predict_mask

    img = write_image(tmp_path / "x.png", 45, 70, seed=3)
    assert main(["predict", "--checkpoint", str(ckpt), str(img), "--out",
                 str(tmp_path / "o"), "--precision", "fp32", "--device", "cpu"]) == 0
    model, meta, _ = model_from_checkpoint(ckpt)
    pixels = np.asarray(Image.open(img).convert("RGB"))
    expected = predict_mask(model, Normalize(meta.mean, meta.std).image(pixels)[None])[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "x.png")), expected.numpy())


def test_predict_corrupt_image_folder_glob_probs_and_grid(tmp_path, ckpt, capsys):
    src = tmp_path / "src"
    src.mkdir()
    write_image(src / "good1.png", 33, 47)
    write_image(src / "good2.png", 33, 47, seed=2)
    data = (src / "good1.png").read_bytes()
    (src / "broken.png").write_bytes(data[: len(data) // 2])  # truncated
    masks = tmp_path / "masks"
    masks.mkdir()
    for stem in ("good1", "good2"):
        Image.fromarray(np.ones((33, 47), np.uint8)).save(masks / f"{stem}.png")
    out, grid = tmp_path / "out", tmp_path / "fig" / "grid.png"
    status = main(["predict", "--checkpoint", str(ckpt), str(src), str(tmp_path / "none*.png"),
                   "--out", str(out), "--probs", "--grid", str(grid), "--masks", str(masks),
                   "--device", "cpu", "--batch-size", "3", "--mode", "slide",
                   "--tile", "32", "32", "--flip"])
    err = capsys.readouterr().err
    assert status == 1
    assert "broken.png" in err and "none*.png" in err
    assert not (out / "broken.png").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries
    probs = np.load(out / "good1_probs.npy")
    assert probs.dtype == np.float16 and probs.shape == (2, 33, 47)
    assert np.allclose(probs.astype(np.float32).sum(0), 1, atol=2e-3)
    labels = np.asarray(Image.open(out / "good1.png"))
    assert np.array_equal(labels, probs.astype(np.float32).argmax(0)) or \
        (labels != probs.argmax(0)).mean() < 0.01  # float16 rounding may flip near-ties
    with Image.open(grid) as g:
        assert g.size[0] > 100 and g.size[1] > 100


def test_predict_same_stem_is_an_error(tmp_path, ckpt, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    x1 = write_image(tmp_path / "a" / "x.png", 20, 20)
    x2 = write_image(tmp_path / "b" / "x.jpg", 20, 20)
    status = main(["predict", "--checkpoint", str(ckpt), str(x1), str(x2),
                   "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 2 and "x.png" in err and "x.jpg" in err
    assert list((tmp_path / "out").iterdir()) == []


def test_predict_unwritable_output_folder(tmp_path, ckpt, capsys):
    img = write_image(tmp_path / "a.png", 20, 20)
    blocker = tmp_path / "some_file"
    blocker.write_text("x")
    status = main(["predict", "--checkpoint", str(ckpt), str(img),
                   "--out", str(blocker / "sub"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("fcnseg: error:") and "some_file" in err
    assert "Traceback" not in err


def test_evaluate_json_table_and_confusion(tmp_path, ckpt, capsys):
    from fcnseg.checkpoint import model_from_checkpoint
    from fcnseg.data import build_dataset
    from fcnseg.data.transforms import eval_transform
    from fcnseg.inference import predict_mask
    from fcnseg.metrics import ConfusionMatrix

    root = make_folder_dataset(tmp_path / "data")
    out_json, fig = tmp_path / "res" / "m.json", tmp_path / "res" / "cm.png"
    status = main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "folder",
                   "--data-dir", str(root), "--split", "val", "--json", str(out_json),
                   "--confusion", str(fig), "--device", "cpu", "--precision", "fp32",
                   "--no-progress"])
    captured = capsys.readouterr()
    assert status == 0
    assert "mean IoU" in captured.out and "thing" in captured.out
    report = json.loads(out_json.read_text())
    for key in ("pixel_accuracy", "mean_accuracy", "miou", "fwiou", "per_class_iou",
                "checkpoint", "split", "num_images"):
        assert key in report
    assert set(report["per_class_iou"]) == set(NAMES)
    assert report["num_images"] == 3 and report["split"] == "val"
    assert report["checkpoint"] == str(ckpt)
    assert fig.is_file()
    # the same figures computed by hand from the model's whole-image predictions
    model, meta, _ = model_from_checkpoint(ckpt)
    ds = build_dataset("folder", root, "val", transform=eval_transform(meta))
    cm = ConfusionMatrix(2)
    for i in range(len(ds)):
        image, mask = ds[i]
        cm.update(predict_mask(model, image[None])[0], mask)
    expected = cm.compute()
    assert int(cm.mat.sum()) == 3 * 39 * 56 + 39 * 8 + 39 * 16  # ignored first rows excluded
    assert report["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"])
    for name, v in zip(NAMES, expected["per_class_iou"], strict=True):
        assert report["per_class_iou"][name] == (None if np.isnan(v) else pytest.approx(v))


@pytest.mark.parametrize("names", [["background", "thing", "other"], ["background", "cat"]])
def test_evaluate_rejects_a_checkpoint_for_other_classes(tmp_path, capsys, names):
    root = make_folder_dataset(tmp_path / "data", n=1)
    palette = [(0, 0, 0), (1, 1, 1), (2, 2, 2)][: len(names)]
    other = make_checkpoint(tmp_path / "other.pt", names, palette)
    status = main(["evaluate", "--checkpoint", str(other), "--dataset", "folder",
                   "--data-dir", str(root), "--split", "val", "--json",
                   str(tmp_path / "m.json"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 2 and "does not match" in err
    assert ("3 classes" in err) if len(names) == 3 else ("'cat' vs 'thing'" in err)
    assert not (tmp_path / "m.json").exists()


@pytest.mark.skipif(not (CAMVID / "val").is_dir(), reason=f"CamVid not found at {CAMVID}")
def test_evaluate_real_camvid_val_limited(tmp_path, capsys):
    from fcnseg.data.camvid import CAMVID_CLASSES, CAMVID_PALETTE

    ckpt = make_checkpoint(tmp_path / "camvid.pt", CAMVID_CLASSES, CAMVID_PALETTE)
    out_json = tmp_path / "m.json"
    status = main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "camvid",
                   "--data-dir", str(CAMVID), "--split", "val", "--limit", "2",
                   "--json", str(out_json), "--device", "cpu", "--no-progress"])
    assert status == 0, capsys.readouterr().err
    report = json.loads(out_json.read_text())
    assert report["num_images"] == 2 and list(report["per_class_iou"]) == CAMVID_CLASSES
    assert 0.0 <= report["pixel_accuracy"] <= 1.0


@pytest.mark.slow
def test_an_image_too_large_for_the_memory_limit_is_one_line_and_the_rest_go_on(tmp_path):
    import subprocess
    import sys

    from fcnseg.data.camvid import camvid_meta

    meta = camvid_meta()  # 8000 x 8000: ~1.1 GB even by tiles, past what the limit leaves
    ckpt = make_checkpoint(tmp_path / "camvid.pt", meta.class_names, meta.palette)
    big, small = tmp_path / "a_big.jpg", tmp_path / "b_small.png"
    Image.new("RGB", (8000, 8000), (90, 120, 30)).save(big, quality=50)
    Image.new("RGB", (64, 48), (90, 120, 30)).save(small)
    cmd = (f"ulimit -v 5000000; {sys.executable} -m fcnseg predict --checkpoint {ckpt} "
           f"{big} {small} --out {tmp_path / 'out'} --no-progress")
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]  # one failed, one written
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr
    line = next(x for x in done.stderr.splitlines() if "a_big.jpg" in x)
    assert "8000 x 8000" in line and "GiB" in line
    assert (tmp_path / "out" / "b_small.png").is_file()
    assert not (tmp_path / "out" / "a_big.png").exists()
