"""DDP with torchrun: 2 CPU processes (gloo) give the metrics of counting on one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fcnseg.distributed import DistInfo, per_rank_batch
from fcnseg.errors import FcnsegError

DATA = ["--data-option", "size=8", "--data-option", "image_size=48", "--data-option",
        "val_size=5"]


def _torchrun(args, tmp_path, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "fcnseg", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from fcnseg.data import build_dataset

    root = tmp_path_factory.mktemp("ddp") / "shapes"
    build_dataset("shapes", root, "train", size=8, image_size=48, val_size=5)
    return root


@pytest.mark.slow
def test_two_process_metrics_equal_one_process(data_dir, tmp_path):
    from fcnseg.checkpoint import model_from_checkpoint
    from fcnseg.data import build_dataset
    from fcnseg.inference import Predictor
    from fcnseg.inference.evaluate import evaluate

    out = tmp_path / "run"
    res = _torchrun(["--dataset", "shapes", "--data-dir", str(data_dir), *DATA,
                     "--model", "fcn32s", "--no-pretrained", "--backbone", "tiny", "--epochs", "1",
                     "--batch-size", "4", "--crop", "48", "48", "--workers", "0",
                     "--device", "cpu", "--precision", "fp32", "--out", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    # Rank 0 alone printed and wrote: one summary line, one log row.
    assert res.stderr.count("fcnseg train:") + res.stdout.count("fcnseg train:") == 1
    assert "2 per process x 2" in res.stderr + res.stdout
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    # 5 validation images split 3 + 2 over the ranks: counted once each after all-reduce.
    model, meta, ck = model_from_checkpoint(out / "last.pt")
    val = build_dataset("shapes", data_dir, "val", size=8, image_size=48, val_size=5)
    cm = evaluate(Predictor.from_model(model, meta), val, progress=False)
    assert int(cm.compute()["mat"].sum()) == 5 * 48 * 48
    metrics = cm.compute()
    assert rows[0]["val_pixel_accuracy"] == pytest.approx(metrics["pixel_accuracy"], abs=1e-9)
    assert rows[0]["val_miou"] == pytest.approx(metrics["miou"], abs=1e-9)
    assert ck["history"][0]["val_miou"] == rows[0]["val_miou"]


@pytest.mark.slow
def test_more_processes_than_samples(data_dir, tmp_path):
    res = _torchrun(["--dataset", "shapes", "--data-dir", str(data_dir), *DATA,
                     "--limit-train", "1", "--model", "fcn32s", "--no-pretrained",
                     "--backbone", "tiny",
                     "--batch-size", "2", "--crop", "48", "48", "--workers", "0",
                     "--device", "cpu", "--out", str(tmp_path / "r")], tmp_path)
    assert res.returncode != 0
    assert "2 processes but only 1 training images" in res.stderr


def test_per_rank_batch_rules():
    two = DistInfo(rank=0, world_size=2)
    assert per_rank_batch(8, 100, two) == 4
    with pytest.raises(FcnsegError, match="divisible"):
        per_rank_batch(5, 100, two)
    with pytest.raises(FcnsegError, match="only 1 training images"):
        per_rank_batch(4, 1, two)
    assert per_rank_batch(5, 1, DistInfo()) == 5
