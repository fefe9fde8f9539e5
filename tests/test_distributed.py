"""DDP with torchrun: 2 CPU processes (gloo) give the metrics of counting on one process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMALL_SHAPES, data_options
from fcnseg.distributed import DistInfo, per_rank_batch
from fcnseg.errors import FcnsegError

DATA = data_options(SMALL_SHAPES)


def _torchrun(args, tmp_path, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "fcnseg", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path)


@pytest.fixture(scope="module")
def data_dir(small_shapes_dir):
    return small_shapes_dir


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
    events = list(out.glob("events.out.tfevents.*"))  # ...TIME.HOST.PID.N: one writer
    assert events and len({e.name.rsplit(".", 2)[1] for e in events}) == 1
    # 5 validation images split 3 + 2 over the ranks: counted once each after all-reduce.
    model, meta, ck = model_from_checkpoint(out / "last.pt")
    val = build_dataset("shapes", data_dir, "val", **SMALL_SHAPES)
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


def _children(pid: int) -> list[int]:
    """The PIDs of ``pid``'s child processes (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_same_command_resumes(data_dir, tmp_path):
    import signal

    import torch

    from conftest import wait_until

    def args(out: Path) -> list[str]:
        return ["--dataset", "shapes", "--data-dir", str(data_dir), *DATA, "--model", "fcn8s",
                "--no-pretrained", "--backbone", "tiny", "--epochs", "6", "--batch-size", "4",
                "--crop", "48", "48", "--workers", "0", "--device", "cpu", "--precision",
                "fp32", "--checkpoint-every", "1", "--out", str(out)]

    clean = _torchrun(args(tmp_path / "clean"), tmp_path)
    assert clean.returncode == 0, clean.stderr[-3000:]
    out = tmp_path / "faulty"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "--max-restarts", "1", "-m", "fcnseg", "train", *args(out)]
    agent = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)  # its workers end with it, whatever fails
    try:
        wait_until(lambda: (out / "last.pt").is_file(), 120, "the first step checkpoint")
        workers = _children(agent.pid)
        assert len(workers) == 2
        os.kill(max(workers), signal.SIGKILL)  # a worker dies mid-run
        _, err = agent.communicate(timeout=300)
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
    assert agent.returncode == 0, err[-3000:]
    assert "torchrun restart 1: resuming from" in err
    # exact resume: the run ends where the run without a fault ended
    done, ref = (torch.load(p / "last.pt", weights_only=True) for p in (out, tmp_path / "clean"))
    assert done["progress"]["step"] == ref["progress"]["step"] and done["epoch"] == 6
    for name, tensor in ref["model"].items():
        assert torch.equal(done["model"][name], tensor), name
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 7))


@pytest.mark.slow
def test_two_machines_train_together_and_share_the_prediction(data_dir, tmp_path):
    """Two torchrun agents (two "nodes" on loopback, c10d rendezvous) form one world of 2:
    one run, written once; then one predict job whose files are split between them."""
    from conftest import free_port

    endpoint = f"127.0.0.1:{free_port()}"

    def both(*command: str, job: str) -> list[subprocess.CompletedProcess]:
        agents = [subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
             "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
             "--rdzv-id", job, "-m", "fcnseg", *command],
            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        return [subprocess.CompletedProcess(a.args, a.wait(timeout=300), *a.communicate())
                for a in agents]

    out = tmp_path / "run"
    trained = both("train", "--dataset", "shapes", "--data-dir", str(data_dir), *DATA,
                   "--model", "fcn32s", "--no-pretrained", "--backbone", "tiny", "--epochs",
                   "1", "--batch-size", "4", "--crop", "48", "48", "--workers", "0",
                   "--device", "cpu", "--precision", "fp32", "--out", str(out), job="train")
    assert [t.returncode for t in trained] == [0, 0], trained[0].stderr[-2000:]
    text = "".join(t.stdout + t.stderr for t in trained)
    assert "2 per process x 2" in text and text.count("fcnseg train:") == 1
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    images = sorted((data_dir / "JPEGImages").glob("*.png"))[:6]
    folder = tmp_path / "to_predict"
    folder.mkdir()
    for i, image in enumerate(images):
        (folder / f"{i}.png").write_bytes(image.read_bytes())
    predicted = both("predict", "--checkpoint", str(out / "last.pt"), str(folder), "--out",
                     str(tmp_path / "masks"), "--no-progress", job="predict")
    assert [p.returncode for p in predicted] == [0, 0], predicted[0].stderr[-2000:]
    masks = sorted(p.name for p in (tmp_path / "masks").glob("*.png") if "_" not in p.name)
    assert masks == sorted(f"{i}.png" for i in range(len(images)))
    said = "".join(p.stdout + p.stderr for p in predicted)  # each node its half, once
    assert sorted(re.findall(r"rank (\d)/2: predicted 3, skipped 0", said)) == ["0", "1"]
