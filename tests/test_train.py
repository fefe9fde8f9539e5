"""Training: learning, exact resume, SIGKILL safety, NaN stop, clear errors, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SHAPES, quick_config
from fcnseg.checkpoint import load_checkpoint, model_from_checkpoint
from fcnseg.cli import main
from fcnseg.errors import CheckpointError, DataError, FcnsegError
from fcnseg.training import run as run_mod
from fcnseg.training.config import resolve_config
from fcnseg.training.losses import build_loss, segmentation_loss
from fcnseg.training.optim import lr_factor, median_frequency_weights
from fcnseg.training.train import fit

DATA = SHAPES


@pytest.fixture(scope="module")
def data_dir(shapes_dir):
    return shapes_dir


def _config(data_dir, out, **kw):
    return quick_config(data_dir, out, **{
        "warmup_iters": 2, "lr": 0.01, "log_every": 1,
        "ema": 0.9,  # the weight average on: resume must restore it too
        "class_balance": 0.5,  # and the class-balanced draws must replay
        **kw})


def _val_stems(data_dir):
    from fcnseg.data import build_dataset

    return [Path(f[0]).stem for f in build_dataset("shapes", data_dir, "val", **DATA).files]


def _weights(path):
    return load_checkpoint(path)["model"]


def test_resume_reproduces_uninterrupted_run(data_dir, tmp_path):
    full = fit(_config(data_dir, tmp_path / "full"))
    steps = full.step
    assert steps == 8  # 16 images / batch 4 x 2 epochs
    # Interrupted mid-epoch 1 (step 3 of 4), then at the epoch boundary, then resumed.
    part = tmp_path / "part"
    fit(_config(data_dir, part, max_steps=3))
    assert load_checkpoint(part / "last.pt")["iteration"] == 3
    fit(_config(data_dir, part, max_steps=5), resume=part / "last.pt")
    ck = load_checkpoint(part / "last.pt")
    assert (ck["epoch"], ck["iteration"]) == (1, 1)
    fit(_config(data_dir, part), resume=part / "last.pt")
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(part / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha = load_checkpoint(tmp_path / "full" / "last.pt")["history"]
    hb = load_checkpoint(part / "last.pt")["history"]
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]
    assert [r["val_miou"] for r in ha] == [r["val_miou"] for r in hb]


def test_short_run_learns_and_writes_outputs(data_dir, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "shapes", "--data-dir", str(data_dir),
                 "--data-option", "size=16", "--data-option", "image_size=64",
                 "--data-option", "val_size=4", "--model", "fcn8s", "--no-pretrained",
                 "--backbone", "tiny",
                 "--epochs", "6", "--batch-size", "4", "--crop", "64", "64", "--scale", "1", "1",
                 "--optimizer", "adamw", "--lr", "0.02", "--weight-decay", "0",
                 "--warmup-iters", "0", "--workers", "0", "--device", "cpu",
                 "--precision", "fp32",  # validation and evaluate alike on any CPU
                 "--out", str(out)])
    assert code == 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    assert {"val_pixel_accuracy", "val_miou", "lr", "images_per_s", "seconds"} <= rows[0].keys()
    # From scratch, 24 steps of 4 tiny images do not get far past "all background"; that
    # takes a longer run (see the demo). Here: the loss falls, and the figures logged at
    # validation are what `fcnseg evaluate` gives for the saved model.
    best_row = max(rows, key=lambda r: r["val_miou"])
    assert main(["evaluate", "--checkpoint", str(out / "last.pt"), "--dataset", "shapes",
                 "--json", str(out / "eval.json"), "--no-progress", "--precision", "fp32"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["miou"] == pytest.approx(rows[-1]["val_miou"], abs=1e-9)
    assert report["pixel_accuracy"] == pytest.approx(rows[-1]["val_pixel_accuracy"], abs=1e-9)
    for name in ("last.pt", "best.pt", "config.toml", "curves.png"):
        assert (out / name).is_file(), name
    # A picture of the first val images at every validation (4 images: the default is 4).
    shots = sorted(p.relative_to(out).as_posix() for p in (out / "val").rglob("*.png"))
    assert shots == [f"val/epoch_{e:03d}/{i:04d}_{stem}.png" for e in range(1, 7)
                     for i, stem in enumerate(_val_stems(data_dir))]
    from PIL import Image

    with Image.open(out / shots[-1]) as strip:  # image | truth | prediction, 4 px gaps
        assert strip.size == (3 * 64 + 2 * 4, 64)
    model, meta, ck = model_from_checkpoint(out / "best.pt")
    assert ck["best_miou"] == pytest.approx(best_row["val_miou"])
    assert meta.num_classes == 5 and ck["config"]["epochs"] == 6
    saved = resolve_config(config_file=out / "config.toml")
    assert saved.optimizer == "adamw" and saved.crop == [64, 64]


def test_loss_options_train_and_are_saved(data_dir, tmp_path):
    out = tmp_path / "lovasz"
    result = fit(_config(data_dir, out, epochs=1, loss="ce+lovasz", boundary_weight=4.0,
                         val_images=0))
    assert result.step == 4 and 0.0 < result.history[0]["train_loss"] < 10.0
    assert "val_miou" in result.history[0] and not (out / "val").exists()
    saved = load_checkpoint(out / "last.pt")["config"]
    assert (saved["loss"], saved["boundary_weight"]) == ("ce+lovasz", 4.0)
    again = resolve_config(config_file=out / "config.toml")
    assert (again.loss, again.boundary_weight) == ("ce+lovasz", 4.0)


@pytest.mark.slow
def test_sigkill_loses_nothing_checkpointed(data_dir, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fcnseg", "train", "--dataset", "shapes", "--data-dir",
           str(data_dir), "--data-option", "size=16", "--data-option", "image_size=64",
           "--data-option", "val_size=4", "--no-pretrained", "--backbone", "tiny", "--model",
           "fcn32s",
           "--epochs", "2", "--batch-size", "4", "--crop", "48", "48", "--workers", "0",
           "--device", "cpu", "--precision", "fp32", "--checkpoint-every", "2",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "last.pt").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert (out / "last.pt").exists(), "no checkpoint was written"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    ck = load_checkpoint(out / "last.pt")  # a complete file, whatever the kill moment
    done = ck["epoch"] * 4 + ck["iteration"]
    assert done >= 2
    code = subprocess.run(cmd[:-2] + ["--out", str(out), "--resume"], timeout=300).returncode
    assert code == 0
    final = load_checkpoint(out / "last.pt")
    assert (final["epoch"], final["iteration"]) == (2, 0)
    assert [r["epoch"] for r in final["history"]] == [1, 2]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    fit(_config(data_dir, out, epochs=1))
    good = (out / "last.pt").read_bytes()
    calls = {"n": 0}

    def bad_build_loss(*args, **kwargs):
        good_loss = build_loss(*args, **kwargs)

        def bad_loss(logits, target):
            calls["n"] += 1
            loss = good_loss(logits, target)
            return loss * float("nan") if calls["n"] == 2 else loss
        return bad_loss

    monkeypatch.setattr(run_mod, "build_loss", bad_build_loss)
    with pytest.raises(FcnsegError, match="loss became nan.*last good checkpoint"):
        fit(_config(data_dir, out, epochs=2, checkpoint_every=1), resume=out / "last.pt")
    # One good step was checkpointed (iteration 1), the NaN step was not.
    ck = load_checkpoint(out / "last.pt")
    assert (ck["epoch"], ck["iteration"]) == (1, 1)
    assert (out / "last.pt").read_bytes() != good


def test_huge_lr_diverges_with_clear_error(data_dir, tmp_path):
    with pytest.raises(FcnsegError, match="NaN|nan|inf"):
        fit(_config(data_dir, tmp_path / "lr", epochs=1, lr=1e12, warmup_iters=0))


def test_bad_inputs(data_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FcnsegError, match="cannot write to run folder"):
        fit(_config(data_dir, blocker / "run"))
    with pytest.raises(DataError, match="batch"):
        fit(_config(data_dir, tmp_path / "b", batch_size=32))
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(FcnsegError):
        fit(_config(empty, tmp_path / "e", dataset="folder", data_options={}))
    out = tmp_path / "other"
    fit(_config(data_dir, out, epochs=1, max_steps=1))
    with pytest.raises(CheckpointError, match="fcn8s.*fcn32s"):
        fit(_config(data_dir, out, model="fcn32s"), resume=out / "last.pt")
    code = main(["train", "--model", "fcn4s", "--out", str(tmp_path / "x")])
    assert code == 2


def test_loss_schedule_and_class_weights():
    logits = torch.randn(2, 3, 5, 5)
    target = torch.randint(0, 3, (2, 5, 5))
    target[0, 0] = 255
    w = torch.tensor([1.0, 2.0, 0.5])
    assert torch.allclose(segmentation_loss(logits, target),
                          F.cross_entropy(logits, target, ignore_index=255))
    assert torch.allclose(segmentation_loss(logits, target, w),
                          F.cross_entropy(logits, target, weight=w, ignore_index=255))
    assert segmentation_loss(logits, torch.full_like(target, 255)).item() == 0.0
    assert lr_factor(0, 100, "poly", 10) == pytest.approx(0.1)
    assert lr_factor(10, 100, "poly", 10) == 1.0
    assert lr_factor(100, 100, "poly", 10) == 0.0
    assert lr_factor(55, 100, "cosine", 10) == pytest.approx(0.5)
    assert lr_factor(99, 100, "constant", 0) == 1.0

    class Masks:
        masks = [torch.tensor([[0, 0, 0, 1]]).numpy(), torch.tensor([[0, 2, 2, 255]]).numpy()]

        def __len__(self):
            return 2

        def read_raw(self, i):
            return None, self.masks[i]

    # f_c = pixels of c / pixels of the images holding c (ignored pixels count in the image):
    # f0 = 4/8, f1 = 1/4, f2 = 2/4 -> median 0.5; weights 1, 2, 1; class 3 absent -> 1
    got = median_frequency_weights(Masks(), 4)
    assert torch.allclose(got, torch.tensor([1.0, 2.0, 1.0, 1.0]))


def test_sample_order_is_a_function_of_seed_and_epoch():
    from fcnseg.training.loader import EpochBatchSampler

    s = EpochBatchSampler(10, 2, seed=3)
    s.set_epoch(1)
    e1 = list(s)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1, skip=2)
    assert list(s) == e1[2:] and e0 != e1 and len(s) == 3
    again = EpochBatchSampler(10, 2, seed=3)
    again.set_epoch(1)
    assert list(again) == e1
    ranks = [EpochBatchSampler(10, 2, seed=3, rank=r, world_size=2) for r in (0, 1)]
    seen = [i for r in ranks for b in r for _, i in b]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 8


def test_weight_average_follows_the_weights_and_is_what_a_checkpoint_predicts_with(
        data_dir, tmp_path):
    from fcnseg.training.run import WeightAverage

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    average = WeightAverage(model, decay=0.9)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked.fill_(7)
    average.update(model, step=100)  # decay min(0.9, 101 / 110) = 0.9
    torch.testing.assert_close(average.module[0].weight, start + 0.1)
    assert int(average.module[1].num_batches_tracked) == 7  # integers are copied
    average.update(model, step=0)  # the first steps: decay 1/10, mostly the new weights
    torch.testing.assert_close(average.module[0].weight, start + 0.1 + 0.9 * 0.9)
    # In a run: `model` is the average, `trained_model` the optimizer's own weights.
    fit(_config(data_dir, tmp_path / "avg", epochs=1, ema=0.5, val_images=0))
    ck = load_checkpoint(tmp_path / "avg" / "last.pt")
    assert any(not torch.equal(ck["model"][k], ck["trained_model"][k]) for k in ck["model"]
               if ck["model"][k].is_floating_point())
    fit(_config(data_dir, tmp_path / "none", epochs=1, ema=0.0, val_images=0))
    assert "trained_model" not in load_checkpoint(tmp_path / "none" / "last.pt")


def test_class_balanced_sampling_brings_rare_classes_and_is_seeded():
    from fcnseg.data import DatasetMeta
    from fcnseg.data.transforms import train_transform
    from fcnseg.training.loader import AugmentedDataset

    meta = DatasetMeta("toy", ["road", "sky", "pole"], [(0, 0, 0)] * 3)

    class Drive:  # 20 frames of road and sky; a pole in a corner of frame 7 only
        def __init__(self):
            self.meta = meta

        def __len__(self):
            return 20

        def read_raw(self, i):
            mask = np.zeros((60, 80), np.int64)
            mask[:30] = 1
            if i == 7:
                mask[50:56, 2:5] = 2
            return np.zeros((60, 80, 3), np.uint8), mask

    def poles(dataset):
        return sum(bool((dataset[(e, i)][1] == 2).any()) for e in range(5) for i in range(20))

    tf = train_transform(meta, crop=(24, 32), scale=(0.75, 1.25))
    balanced = AugmentedDataset(Drive(), tf, seed=0, class_balance=0.6)
    assert [c for c, _ in balanced.images_with] == [0, 1, 2]
    assert list(balanced.images_with[2][1]) == [7]
    # a third of 60 % of the samples draw the pole; unbalanced, frame 7's crops rarely hold it
    assert poles(balanced) >= 20 > 5 >= poles(AugmentedDataset(Drive(), tf, seed=0))
    x1, y1 = balanced[(3, 5)]
    x2, y2 = AugmentedDataset(Drive(), tf, seed=0, class_balance=0.6)[(3, 5)]
    assert torch.equal(x1, x2) and torch.equal(y1, y2)  # a function of (seed, epoch, index)


def test_last_pt_is_written_once_an_epoch_and_even_when_validation_fails(data_dir, tmp_path,
                                                                        monkeypatch):
    import fcnseg.training.run as run_module
    import fcnseg.training.train as train_module

    written = []
    real = run_module.save_checkpoint
    monkeypatch.setattr(run_module, "save_checkpoint",
                        lambda path, state: written.append(Path(path).name) or real(path, state))
    fit(_config(data_dir, tmp_path / "run", epochs=2, val_every=1))
    assert written.count("last.pt") == 2 and "best.pt" in written

    def broken(run):
        raise RuntimeError("validation broke")

    monkeypatch.setattr(train_module, "validate", broken)
    with pytest.raises(RuntimeError):
        fit(_config(data_dir, tmp_path / "broken", epochs=2, val_every=1))
    assert load_checkpoint(tmp_path / "broken" / "last.pt")["epoch"] == 1  # training kept


def test_freeze_stride_keeps_the_loaded_early_layers(data_dir, tmp_path, capsys):
    from conftest import quick_flags
    from fcnseg.models.backbones import tiny_resnet

    torch.manual_seed(1)
    body = tiny_resnet().state_dict()
    torch.save(body, tmp_path / "body.pt")
    assert main(["train", *quick_flags(data_dir, tmp_path / "run", "--freeze-stride", "4",
                                       "--backbone-weights", str(tmp_path / "body.pt"),
                                       "--epochs", "1")]) == 0
    said = capsys.readouterr().out
    assert "backbone fixed up to stride 4" in said and "depthwise" not in said  # a ResNet
    trained = _weights(tmp_path / "run" / "last.pt")
    for key, start in body.items():
        # conv1, bn1 and layer1 (stride <= 4) keep their weights and BatchNorm statistics;
        # the rest learns.
        frozen = key.startswith(("conv1.", "bn1.", "layer1."))
        if frozen or not key.endswith("num_batches_tracked"):
            assert torch.equal(trained[f"backbone.{key}"], start) == frozen, key


def test_freeze_depthwise_keeps_the_pretrained_depthwise_filters(data_dir, tmp_path, capsys):
    from conftest import quick_flags
    from fcnseg.models.backbones import build_backbone, depthwise_convs

    assert main(["train", *quick_flags(data_dir, tmp_path / "run", "--backbone",
                                       "efficientnet_lite0", "--pretrained", "--freeze-stride",
                                       "0", "--freeze-depthwise", "--epochs", "1")]) == 0
    assert "depthwise filters fixed" in capsys.readouterr().out
    trained = _weights(tmp_path / "run" / "last.pt")
    body, _ = build_backbone("efficientnet_lite0", pretrained=True)
    names = {id(m): name for name, m in body.named_modules()}
    depthwise = {f"backbone.{names[id(conv)]}.weight" for conv in depthwise_convs(body)}
    start = {f"backbone.{k}": v for k, v in body.state_dict().items()}
    assert depthwise and all(torch.equal(trained[k], start[k]) for k in depthwise)
    pointwise = [k for k in start if k.endswith("conv_pw.weight")]
    assert pointwise and not any(torch.equal(trained[k], start[k]) for k in pointwise)


def test_random_layers_are_never_frozen(data_dir, tmp_path):
    from conftest import quick_flags

    for stride in ("0", "8"):
        assert main(["train", *quick_flags(data_dir, tmp_path / stride, "--freeze-stride",
                                           stride, "--epochs", "1")]) == 0
    a, b = (_weights(tmp_path / s / "last.pt") for s in ("0", "8"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # --no-pretrained: the same run
