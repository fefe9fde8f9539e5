"""`fcnseg demo` end to end, at a tiny size (the full-size run is timed in benchmarks/)."""

import json

import numpy as np
import pytest
from PIL import Image

from fcnseg.checkpoint import model_from_checkpoint
from fcnseg.cli import main
from fcnseg.data import build_dataset
from fcnseg.inference import Predictor
from fcnseg.inference.evaluate import evaluate


@pytest.mark.slow
def test_demo_writes_metrics_figures_and_a_usable_checkpoint(tmp_path, capsys):
    out = tmp_path / "demo"
    status = main(["demo", "--out", str(out), "--epochs", "2", "--size", "16",
                   "--image-size", "64"])
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class_iou"]) == {"background", "disk", "square", "triangle", "ring"}
    assert metrics["val_images"] == 4 and metrics["train_images"] == 16
    for name in ("curves.png", "predictions.png"):
        with Image.open(out / name) as img:
            assert img.size[0] > 100 and img.size[1] > 100
    printed = capsys.readouterr().out
    assert "validation mIoU" in printed and str(out) in printed

    # The demo's checkpoint alone is enough to predict, and it is the model that was scored.
    model, meta, ckpt = model_from_checkpoint(out / "run" / "last.pt")
    assert meta.class_names[0] == "background" and ckpt["history"][-1]["epoch"] == 2
    assert abs(ckpt["history"][-1]["val_miou"] - metrics["single_pass"]["miou"]) < 1e-9
    # The headline figures are the flip-averaged predictions of that model.
    val = build_dataset("shapes", out / "data", "val", size=16, image_size=64, val_size=4)
    flipped = evaluate(Predictor.from_model(model.eval(), meta, flip=True), val,
                       progress=False).compute()
    assert abs(float(flipped["miou"]) - metrics["miou"]) < 1e-9
    assert abs(float(flipped["pixel_accuracy"]) - metrics["pixel_accuracy"]) < 1e-9
    assert metrics["per_class_accuracy"]["background"] is not None  # the full report
    assert metrics["test_time_augmentation"].startswith("horizontal flip")
    image = np.asarray(Image.open(out / "data" / "JPEGImages" / "val_00000.png"))
    assert main(["predict", "--checkpoint", str(out / "run" / "last.pt"),
                 str(out / "data" / "JPEGImages" / "val_00000.png"), "--out",
                 str(tmp_path / "pred")]) == 0
    with Image.open(tmp_path / "pred" / "val_00000.png") as mask:
        assert mask.mode == "P" and mask.size == (image.shape[1], image.shape[0])


def test_the_demo_settings_are_only_differences_from_the_recipe():
    from fcnseg.demo import DEMO_SETTINGS
    from fcnseg.training.config import TrainConfig

    same = {k for k, v in DEMO_SETTINGS.items() if getattr(TrainConfig(), k) == v}
    assert same <= {"dataset"}, same  # the data set is named for the reader
