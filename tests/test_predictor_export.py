"""Predictor on every input type, ONNX export round trips, runtimes, and folder prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnseg import Predictor
from fcnseg.cli import main
from fcnseg.errors import CheckpointError, FcnsegError, OptionError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly trained FCN-8s on tiny synthetic shapes: confident enough to compare
    runtimes and precisions on (an untrained model's near-ties flip under any rounding)."""
    root = tmp_path_factory.mktemp("trained")
    status = main(["train", "--dataset", "shapes", "--data-dir", str(root / "data"),
                   "--data-option", "size=64", "--data-option", "image_size=64",
                   "--data-option", "val_size=8", "--epochs", "20", "--batch-size", "8",
                   "--crop", "64", "64", "--scale", "1", "1", "--lr", "0.02",
                   "--no-pretrained", "--backbone", "tiny", "--out", str(root / "run"),
                   "--val-every", "20", "--val-images", "0", "--device", "cpu"])
    assert status == 0
    return root / "run" / "last.pt", root / "data"


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main(["export", "--checkpoint", str(trained[0]), "--out", str(out)]) == 0
    return out


def _val_images(data: Path) -> list[Path]:
    """The synthetic validation images (VOC layout: JPEGImages/val_NNNNN.png)."""
    found = sorted(data.rglob("JPEGImages/val_*.png"))
    assert found
    return found


def test_predictor_takes_paths_pil_and_arrays_at_any_size(trained, tmp_path):
    p = Predictor.from_file(trained[0], device="cpu", precision="fp32")
    assert p.runtime == "torch" and p.precision == "fp32"
    assert p.classes[0] == "background" and len(p.palette) == len(p.classes)
    rng = np.random.default_rng(0)
    for h, w in ((97, 131), (375, 500), (1, 1), (33, 32)):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = tmp_path / f"im{h}x{w}.png"
        Image.fromarray(arr).save(path)
        mask = p.predict(arr)
        assert mask.shape == (h, w) and mask.dtype == np.uint8
        for other in (str(path), path, Image.open(path), Image.fromarray(arr)):
            assert np.array_equal(p.predict(other), mask)
        probs = p.predict_proba(arr)
        assert probs.shape == (len(p.classes), h, w) and probs.dtype == np.float32
        assert np.allclose(probs.sum(0), 1, atol=1e-5)
        assert np.array_equal(probs.argmax(0), mask)
    with pytest.raises(OptionError, match="H x W x 3 uint8"):
        p.predict(np.zeros((8, 8), np.float32))
    with pytest.raises(FcnsegError, match="missing.png"):
        p.predict(tmp_path / "missing.png")


def test_predictor_batches_equal_sizes_and_matches_one_by_one(trained):
    p = Predictor.from_file(trained[0], device="cpu", precision="fp32")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in
              ((40, 56, 3), (40, 56, 3), (31, 45, 3))]
    together = p.predict_many(images)
    for img, probs in zip(images, together, strict=True):
        assert np.allclose(probs, p.predict_proba(img), atol=1e-5)


def test_predictor_checks_options_once_and_files(trained, tmp_path):
    with pytest.raises(KeyError, match="choose one of pad, slide"):
        Predictor.from_file(trained[0], mode="crop")
    with pytest.raises(OptionError, match="stride"):
        Predictor.from_file(trained[0], mode="slide", tile=(8, 8), stride=(16, 16))
    with pytest.raises(CheckpointError, match="is a folder"):
        Predictor.from_file(trained[0].parent)
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown model file type"):
        Predictor.from_file(tmp_path / "model.bin")
    with pytest.raises(KeyError, match="runtime"):
        Predictor.from_file(trained[0], runtime="tensorrt")


def test_export_runs_any_size_and_carries_its_metadata(trained, exported):
    model = onnx.load(str(exported))
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props["fcnseg.meta"])
    assert meta["class_names"] == json.loads(props["fcnseg.classes"])
    assert props["fcnseg.precision"] == "fp32" and props["fcnseg.ignore_index"] == "255"
    import hashlib

    assert props["fcnseg.checkpoint_sha256"] == hashlib.sha256(trained[0].read_bytes()).hexdigest()
    # any N, H, W straight from ONNX Runtime, no fcnseg in the loop: the input contract
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for n, h, w in ((3, 45, 77), (1, 375, 500), (2, 1, 1)):
        x = np.random.default_rng(n).uniform(0, 255, (n, 3, h, w)).astype(np.float32)
        probs = session.run(["probs"], {"image": x})[0]
        assert probs.shape == (n, len(meta["class_names"]), h, w)
        assert np.allclose(probs.sum(1), 1, atol=1e-4)


def test_export_refuses_a_model_that_disagrees(trained, tmp_path, monkeypatch, capsys):
    from fcnseg.inference import export

    run = export.OnnxRuntime.__call__
    monkeypatch.setattr(export.OnnxRuntime, "__call__", lambda self, x: run(self, x)[:, ::-1])
    out = tmp_path / "bad.onnx"
    assert main(["export", "--checkpoint", str(trained[0]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "disagrees with PyTorch" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_exported_model_predicts_and_evaluates_like_the_checkpoint(trained, exported, tmp_path,
                                                                   capsys):
    ckpt, data = trained
    images = _val_images(data)[:4]
    outs = {}
    for name, model in (("pt", ckpt), ("onnx", exported)):
        outs[name] = tmp_path / name
        assert main(["predict", "--checkpoint", str(model), *map(str, images), "--out",
                     str(outs[name]), "--precision", "fp32" if name == "pt" else "auto",
                     "--no-progress"]) == 0
    for img in images:
        a = np.asarray(Image.open(outs["pt"] / f"{img.stem}.png"))
        b = np.asarray(Image.open(outs["onnx"] / f"{img.stem}.png"))
        assert (a == b).mean() >= 0.999
    reports = {}
    for name, model in (("pt", ckpt), ("onnx", exported)):
        js = tmp_path / f"{name}.json"
        assert main(["evaluate", "--checkpoint", str(model), "--dataset", "shapes",
                     "--json", str(js), "--no-progress", "--precision",
                     "fp32" if name == "pt" else "auto"]) == 0
        reports[name] = json.loads(js.read_text())
    assert reports["onnx"]["runtime"] == "openvino"  # auto: OpenVINO where installed
    assert abs(reports["onnx"]["miou"] - reports["pt"]["miou"]) < 1e-3
    capsys.readouterr()


def test_int8_export_agrees_with_fp32(trained, tmp_path):
    ckpt, data = trained
    out = tmp_path / "int8.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--int8",
                 "--calibration-size", "16"]) == 0
    int8 = Predictor.from_file(out)
    fp32 = Predictor.from_file(ckpt, precision="fp32")
    assert int8.precision == "int8" and int8.runtime == "openvino"
    images = _val_images(data)
    agree = np.mean([(int8.predict(f) == fp32.predict(f)).mean() for f in images])
    assert agree >= 0.99
    with pytest.raises(FcnsegError, match="int8 model, not fp32"):
        Predictor.from_file(out, precision="fp32")


def test_int8_is_judged_on_every_runtime_that_runs_it(trained, tmp_path, monkeypatch, capsys):
    pytest.importorskip("openvino")
    from fcnseg.inference import quantize
    from fcnseg.inference.export import export_onnx

    ckpt, _ = trained
    lines = []
    report = export_onnx(ckpt, tmp_path / "a.onnx", int8=True, calibration_size=8,
                         check_size=6, max_miou_drop=0.2, progress=lines.append)
    judged = report.quality["runtimes"]
    assert set(judged) == {"onnxruntime", "openvino"}
    assert sum("int8 (openvino) against fp32" in line for line in lines) == 1
    worst = max(q["miou_drop"] for q in judged.values())
    assert report.quality["miou_drop"] == worst
    # A gate no runtime can pass: refused, naming the runtime, and nothing written.
    monkeypatch.setattr(quantize, "INT8_MIN_AGREEMENT", 1.01)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "b.onnx"),
                 "--int8", "--calibration-size", "8", "--check-size", "6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "not good enough on onnxruntime" in err and "Traceback" not in err
    assert not (tmp_path / "b.onnx").exists()
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "c.onnx"),
                 "--int8", "--max-miou-drop", "2"]) == 2
    assert "--max-miou-drop 2.0" in capsys.readouterr().err


def test_openvino_runs_the_onnx_file(trained, exported):
    pytest.importorskip("openvino")
    ov = Predictor.from_file(exported, runtime="openvino", precision="fp32")
    ref = Predictor.from_file(trained[0], precision="fp32")
    assert ov.runtime == "openvino" and ov.precision == "fp32"
    img = np.random.default_rng(3).integers(0, 256, (75, 101, 3), dtype=np.uint8)
    assert np.abs(ov.predict_proba(img) - ref.predict_proba(img)).max() < 1e-3


def test_export_computes_the_labels_in_its_graph(exported):
    # The "labels" output is the argmax of "probs", as uint8, at the input's size: what a
    # runtime hands back when masks are all that is wanted.
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for n, h, w in ((2, 45, 77), (1, 1, 1)):
        x = np.random.default_rng(h).uniform(0, 255, (n, 3, h, w)).astype(np.float32)
        probs, labels = session.run(["probs", "labels"], {"image": x})
        assert labels.dtype == np.uint8 and labels.shape == (n, h, w)
        assert (labels == probs.argmax(1)).mean() >= 0.999


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_streams_predict_concurrently_and_alike(trained, exported, runtime):
    # streams=2: two calls at once, each thread with its own request; the masks are the
    # single-stream ones, and predict() (labels from the graph) equals the probabilities'
    # argmax.
    from concurrent.futures import ThreadPoolExecutor

    pytest.importorskip(runtime)
    one = Predictor.from_file(exported, runtime=runtime, precision="fp32")
    two = Predictor.from_file(exported, runtime=runtime, precision="fp32", streams=2)
    assert one.streams == 1 and two.streams == 2 and "2 streams" in two.reason
    images = [np.random.default_rng(i).integers(0, 256, (40 + i, 61, 3), dtype=np.uint8)
              for i in range(6)]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(two.predict, images))
    for img, mask in zip(images, together, strict=True):
        assert mask.dtype == np.uint8 and mask.shape == img.shape[:2]
        assert (mask == one.predict(img)).mean() >= 0.999
        assert (mask == one.predict_proba(img).argmax(0)).mean() >= 0.999


def test_flip_on_a_one_pixel_wide_image(trained, exported, tmp_path, capsys):
    # A flipped 1-pixel-wide view looks contiguous to numpy; PyTorch refused it.
    img = np.random.default_rng(0).integers(0, 256, (37, 1, 3), dtype=np.uint8)
    for model in (trained[0], exported):
        p = Predictor.from_file(model, precision="auto", flip=True)
        assert p.predict(img).shape == (37, 1)
    for h, w in ((1, 1), (1, 9), (9, 1)):
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(tmp_path / f"im{h}x{w}.png")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(trained[0]), str(tmp_path / "im*.png"), "--out",
                 str(out), "--flip", "--no-progress"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert np.asarray(Image.open(out / "im9x1.png")).shape == (9, 1)


def test_predict_folder_with_streams_writes_what_one_stream_writes(trained, exported, tmp_path,
                                                                   capsys):
    images = _val_images(trained[1])[:5]
    outs = {}
    for streams in ("1", "2"):
        outs[streams] = tmp_path / streams
        assert main(["predict", "--checkpoint", str(exported), *map(str, images), "--out",
                     str(outs[streams]), "--streams", streams, "--batch-size", "2",
                     "--no-progress"]) == 0
    for img in images:
        a = np.asarray(Image.open(outs["1"] / f"{img.stem}.png"))
        b = np.asarray(Image.open(outs["2"] / f"{img.stem}.png"))
        assert (a == b).mean() >= 0.999
    assert "2 streams" in capsys.readouterr().err


def test_predict_skip_existing_resumes_a_job(trained, tmp_path, capsys):
    images = _val_images(trained[1])[:3]
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(trained[0]), *map(str, images), "--out", str(out),
            "--no-progress"]
    assert main(args) == 0
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / f"{images[1].stem}_overlay.jpg").unlink()  # as if interrupted mid-image
    capsys.readouterr()
    assert main(args + ["--skip-existing"]) == 0
    err = capsys.readouterr().err
    assert "predicted 1, skipped 2 existing, 0 failed" in err
    again = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert set(again) == set(first)
    assert again[f"{images[0].stem}.png"] == first[f"{images[0].stem}.png"]  # not rewritten


@pytest.mark.slow
@pytest.mark.slow
def test_torchrun_two_processes_predict_each_file_once(trained, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(4)
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, (30, 40 + i, 3), dtype=np.uint8)).save(
            src / f"im{i}.png")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "fcnseg", "predict", "--checkpoint", str(trained[0]), str(src), "--out",
           str(tmp_path / "out"), "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [ln.split(" -> ")[0] for ln in done.stdout.splitlines() if " -> " in ln]
    assert sorted(Path(x).name for x in lines) == sorted(f"im{i}.png" for i in range(7))
    assert "rank 0/2: 4 of 7" in done.stderr and "rank 1/2: 3 of 7" in done.stderr
    assert len(list((tmp_path / "out").glob("im*_overlay.jpg"))) == 7


def test_the_documented_onnx_script_runs_without_fcnseg(trained, exported, tmp_path):
    """docs/USAGE.md's 10-line script, verbatim, with only onnxruntime, numpy and pillow."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "USAGE.md").read_text()
    block = readme.split("<!-- onnx-example -->")[1].split("<!-- /onnx-example -->")[0]
    code = block.split("```python\n")[1].split("```")[0]
    assert len(code.strip().splitlines()) <= 12
    image = _val_images(trained[1])[0]
    (tmp_path / "street.png").write_bytes(image.read_bytes())
    (tmp_path / "camvid.onnx").symlink_to(exported)
    # fcnseg and torch made unimportable: the script must not need them
    guard = "import sys; sys.modules['fcnseg'] = None; sys.modules['torch'] = None\n"
    done = subprocess.run([sys.executable, "-c", guard + code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    got = np.asarray(Image.open(tmp_path / "street_mask.png"))
    expected = Predictor.from_file(trained[0], precision="fp32").predict(image)
    assert (got == expected).mean() >= 0.999
