"""The run folder is never lost: refusal, lock, stale temporaries, step limit, Ctrl-C."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SMALL_SHAPES, data_options
from fcnseg.checkpoint import load_checkpoint
from fcnseg.cli import main
from fcnseg.training.rundir import run_folder_lock

DATA = data_options(SMALL_SHAPES)


@pytest.fixture(scope="module")
def data_dir(small_shapes_dir):
    return small_shapes_dir


def _train(data_dir, out, *extra):
    return ["train", "--dataset", "shapes", "--data-dir", str(data_dir), *DATA,
            "--no-pretrained", "--backbone", "tiny", "--epochs", "1", "--batch-size", "4",
            "--crop", "32", "32",
            "--device", "cpu", "--precision", "fp32", "--val-images", "0", "--out", str(out),
            *extra]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_finished_run_is_refused_unless_resume_or_overwrite(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train(data_dir, out)) == 0
    before = {n: _sha(out / n) for n in ("last.pt", "best.pt", "config.toml")}
    capsys.readouterr()
    assert main(_train(data_dir, out, "--lr", "0.5")) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--out" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert {n: _sha(out / n) for n in before} == before  # config.toml untouched too
    assert main(_train(data_dir, out, "--overwrite", "--lr", "0.02")) == 0
    assert load_checkpoint(out / "last.pt")["config"]["lr"] == 0.02


def test_a_second_process_is_refused_with_the_holders_pid(data_dir, tmp_path, capsys):
    out = tmp_path / "busy"
    with run_folder_lock(out):
        assert main(_train(data_dir, out)) == 2
    err = capsys.readouterr().err
    assert f"PID {os.getpid()}" in err and "in use" in err
    assert not (out / "last.pt").exists() and not (out / "config.toml").exists()


@pytest.mark.slow
def test_a_killed_holders_lock_is_taken_over(tmp_path):
    out = tmp_path / "killed"
    code = (f"from fcnseg.training.rundir import run_folder_lock\nimport time\n"
            f"with run_folder_lock({str(out)!r}):\n    print('held', flush=True)\n"
            "    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match=f"PID {holder.pid}"):
            with run_folder_lock(out):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with run_folder_lock(out):  # the kernel released it with the process
            pass
    finally:
        holder.kill()


def test_stale_temporaries_are_removed_and_step_limit_is_kept(data_dir, tmp_path, capsys):
    out = tmp_path / "steps"
    assert main(_train(data_dir, out, "--max-steps", "1", "--epochs", "3")) == 0
    stale = out / ".last.pt.k2j3h4.tmp"
    stale.write_bytes(b"\0" * 1000)  # as SIGKILL mid-write leaves it
    weights = _sha(out / "last.pt")
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "nothing to do: the run is at its step limit" in said and "--max-steps 0" in said
    assert not stale.exists()
    assert _sha(out / "last.pt") == weights and load_checkpoint(out / "last.pt")["iteration"] \
        == 1  # no step past the limit
    assert main(["train", "--resume", "--out", str(out), "--max-steps", "2"]) == 0
    ck = load_checkpoint(out / "last.pt")
    assert ck["progress"]["step"] == 2 and (ck["epoch"], ck["iteration"]) == (1, 0)  # 2 steps/epoch


def test_a_bad_validation_mask_fails_before_training(tmp_path, capsys):
    root = tmp_path / "folder"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(
                root / "images" / split / f"{split}{i}.png")
            mask = np.zeros((32, 32), np.uint8)
            mask[8:20, 8:20] = 1
            if split == "val" and i == 2:
                mask[0, 0] = 7  # out of range for 2 classes
            Image.fromarray(mask).save(root / "masks" / split / f"{split}{i}.png")
    classes = [{"name": "bg", "color": [0, 0, 0]}, {"name": "fg", "color": [255, 0, 0]}]
    (root / "classes.json").write_text(json.dumps({"classes": classes}))
    out = tmp_path / "run"
    status = main(["train", "--dataset", "folder", "--data-dir", str(root), "--no-pretrained",
    "--backbone", "tiny",
                   "--epochs", "1", "--batch-size", "2", "--crop", "32", "32", "--device",
                   "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and "val2.png" in err and "Traceback" not in err
    assert "epoch 1/1" not in err  # no training was spent before the check
    assert not (out / "last.pt").exists() and not (out / "val").exists()


SLOW_WRITER = """
import pathlib, signal, sys, time, torch
# Ctrl-C as in a terminal: a shell that starts the test run in the background (`cmd &`)
# leaves SIGINT ignored, and Python keeps an inherited SIG_IGN
signal.signal(signal.SIGINT, signal.default_int_handler)
flag = pathlib.Path(sys.argv[1])
real_save = torch.save

class Slow:  # a file that stalls mid-write, so that Ctrl-C lands inside torch's zip writer
    def __init__(self, f): self.f = f
    def write(self, b):
        if len(b) > 1000 and flag.read_text() == "armed":
            half = len(b) // 2
            self.f.write(bytes(b)[:half])  # the disk has taken half of it...
            flag.write_text("writing")
            deadline = time.time() + 60  # ...when Ctrl-C comes: the test says when it is sent,
            while flag.read_text() != "sent" and time.time() < deadline:  # however busy the
                time.sleep(0.05)  # host, so the signal cannot miss the write
            return half + self.f.write(bytes(b)[half:])
        return self.f.write(b)
    def __getattr__(self, name): return getattr(self.f, name)

def slow_save(obj, f, *a, **k):
    return real_save(obj, Slow(f), *a, **k)

torch.save = slow_save
from fcnseg.cli import main
flag.write_text("armed" if "--resume" in sys.argv else "off")
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_ctrl_c_during_a_checkpoint_write_exits_130_with_the_checkpoint_intact(data_dir,
                                                                              tmp_path):
    out = tmp_path / "int"
    assert main(_train(data_dir, out, "--epochs", "2", "--max-steps", "2")) == 0
    good = _sha(out / "last.pt")
    flag = tmp_path / "flag"
    script = tmp_path / "slow.py"
    script.write_text(SLOW_WRITER)
    cmd = [sys.executable, str(script), str(flag), "train", "--resume", "--out", str(out),
           "--max-steps", "3", "--checkpoint-every", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not flag.exists() or flag.read_text() != "writing"):
        time.sleep(0.05)
    assert flag.read_text() == "writing", "the checkpoint write never started"
    proc.send_signal(signal.SIGINT)
    flag.write_text("sent")
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-2000:]
    assert "fcnseg: interrupted" in err and f"--resume --out {out}" in err
    assert "Traceback" not in err and "RuntimeError" not in err
    assert not list(out.glob(".*.tmp"))
    ck = load_checkpoint(out / "last.pt")  # whole and loadable: the old one or the new one
    assert _sha(out / "last.pt") == good or ck["progress"]["step"] == 3


@pytest.mark.slow
def test_sigterm_during_a_deferred_write_ends_the_process_after_it(tmp_path):
    code = ("import os, signal, sys\nfrom fcnseg.fileio import atomic_write, deferred_interrupts\n"
            "with deferred_interrupts():\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            f"    atomic_write({str(tmp_path / 'x.bin')!r}, lambda f: f.write(b'whole'))\n"
            "    print('written', flush=True)\n"
            "print('not reached', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == -signal.SIGTERM
    assert done.stdout.split() == ["written"]
    assert (tmp_path / "x.bin").read_bytes() == b"whole"
