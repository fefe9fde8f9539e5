"""TensorBoard: every run writes event files into its run folder, read back here with
TensorBoard's own reader; under DDP rank 0 alone writes."""

from __future__ import annotations

import pytest

from conftest import quick_config
from fcnseg.training.train import fit

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)


def read_board(folder):
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_a_run_writes_scalars_pictures_and_hparams(shapes_dir, tmp_path):
    out = tmp_path / "run"
    result = fit(quick_config(shapes_dir, out, epochs=2, val_images=2))
    board = read_board(out)
    tags = board.Tags()
    for tag in ("train/loss", "train/lr", "train/images_per_s", "val/pixel_accuracy",
                "val/miou", "val_iou/background"):
        assert [e.step for e in board.Scalars(tag)] == [1, 2], tag
    miou = [e.value for e in board.Scalars("val/miou")]
    assert miou[-1] == pytest.approx(result.history[-1]["val_miou"], abs=1e-6)
    pictures = [t for t in tags["images"] if t.startswith("val/")]
    assert len(pictures) == 2 and board.Images(pictures[0])[0].width > 0
    hparams = read_board(out)  # the hparams summary: the run's settings and final figures
    plugin = hparams.PluginTagToContent("hparams")
    assert plugin and "_hparams_/session_start_info" in plugin
    assert (out / "log.jsonl").is_file() and (out / "curves.png").is_file()


def test_a_resumed_run_continues_its_curves(shapes_dir, tmp_path):
    out = tmp_path / "run"
    fit(quick_config(shapes_dir, out, epochs=1, val_images=0))
    from fcnseg.training.train import train

    train({"epochs": 3}, resume=str(out / "last.pt"))
    steps = [e.step for e in read_board(out).Scalars("train/loss")]
    assert steps == [1, 2, 3]


def test_an_overwritten_run_leaves_nothing_of_the_old_one(shapes_dir, tmp_path):
    out = tmp_path / "run"
    fit(quick_config(shapes_dir, out, epochs=2, val_images=2))
    old = set(out.glob("events.out.tfevents.*"))
    result = fit(quick_config(shapes_dir, out, epochs=1, val_images=2), overwrite=True)
    assert old and not old & set(out.glob("events.out.tfevents.*"))  # the old files are gone
    board = read_board(out)
    losses = board.Scalars("train/loss")
    assert [e.step for e in losses] == [1]
    assert losses[0].value == pytest.approx(result.history[0]["train_loss"], rel=1e-6)
    assert sorted(p.name for p in (out / "val").iterdir()) == ["epoch_001"]
