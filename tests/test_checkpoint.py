"""Checkpoints: atomic save, weights_only load, clear errors, model rebuilding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from fcnseg import build_model
from fcnseg.checkpoint import (
    capture_rng_state,
    check_compatible,
    load_checkpoint,
    model_entries,
    model_from_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from fcnseg.data import DatasetMeta
from fcnseg.errors import CheckpointError
from fcnseg.training.config import TrainConfig


def _state(num_classes=3, name="fcn8s"):
    args = {"name": name, "num_classes": num_classes, "backbone": "tiny",
            "pretrained": False, "backbone_weights": None, "upsample_init": "bilinear"}
    model = build_model(**args)
    meta = DatasetMeta("toy", [f"c{i}" for i in range(num_classes)],
                       [(i, i, i) for i in range(num_classes)])
    return model, {**model_entries(model, meta, args), "config": TrainConfig().to_dict(),
                   "rng": capture_rng_state(), "epoch": 1, "iteration": 0,
                   "best_miou": 0.5, "history": []}


def test_save_load_rebuild(tmp_path):
    model, state = _state()
    path = save_checkpoint(tmp_path / "run" / "last.pt", state)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["last.pt"]  # no temp left
    loaded = load_checkpoint(path)
    assert loaded["config"] == state["config"] and loaded["epoch"] == 1
    rebuilt, meta, ckpt = model_from_checkpoint(path)
    assert meta.class_names == ["c0", "c1", "c2"] and not rebuilt.training
    for k, v in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    assert torch.allclose(model(x)["out"], rebuilt(x)["out"])


def test_overwrite_is_atomic_replace(tmp_path, monkeypatch):
    _, state = _state()
    path = save_checkpoint(tmp_path / "last.pt", state)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(CheckpointError, match="last.pt"):
        save_checkpoint(path, state)
    assert path.read_bytes() == before  # the old checkpoint survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _, state = _state()
    with pytest.raises(CheckpointError, match=str(blocker)):
        save_checkpoint(blocker / "run" / "last.pt", state)


def test_missing_corrupt_foreign(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not an fcnseg checkpoint"):
        load_checkpoint(foreign)
    truncated = tmp_path / "trunc.pt"
    _, state = _state()
    save_checkpoint(truncated, state)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_checkpoint(truncated)


def test_other_model_or_class_count(tmp_path):
    _, state = _state(num_classes=3, name="fcn8s")
    with pytest.raises(CheckpointError, match="num_classes 3 .* vs 5"):
        check_compatible(state, {**state["model_args"], "num_classes": 5}, "x.pt")
    with pytest.raises(CheckpointError, match="name 'fcn8s' .* vs 'fcn32s'"):
        check_compatible(state, {**state["model_args"], "name": "fcn32s"}, "x.pt")
    # Same count, other classes (e.g. a VOC checkpoint resumed on another 3-class set).
    check_compatible(state, state["model_args"], "x.pt", ["c0", "c1", "c2"])
    with pytest.raises(CheckpointError, match="class names differ: #0 'c0' vs 'road'"):
        check_compatible(state, state["model_args"], "x.pt", ["road", "car", "sky"])
    # Weights of a 5-class model under model_args saying 3 classes: caught when loading.
    other, _ = _state(num_classes=5)
    state["model"] = other.state_dict()
    path = save_checkpoint(tmp_path / "mixed.pt", state)
    with pytest.raises(CheckpointError, match="mixed.pt"):
        model_from_checkpoint(path)


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    restore_rng_state(torch.load(path, weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
