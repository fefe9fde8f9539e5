"""--time-budget: durations, the plan's arithmetic, a budgeted run and its resume."""

from __future__ import annotations

import json
import time

import pytest

from fcnseg.cli import main
from fcnseg.engine.budget import SAFETY, parse_duration, plan_epochs
from fcnseg.engine.checkpoint import load_checkpoint
from fcnseg.engine.config import resolve_config
from fcnseg.engine.train import fit
from fcnseg.errors import FcnsegError

DATA = {"size": 16, "image_size": 48, "val_size": 4}


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("60m", 3600), ("1.5h", 5400),
                                           ("45", 45), ("2min", 120)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "0", "10d", "1h30m"])
def test_bad_durations(text):
    with pytest.raises(FcnsegError, match="90s, 60m or 1.5h"):
        parse_duration(text)


def test_the_plan_fits_the_budget_left():
    plan = plan_epochs(budget_s=600, elapsed_s=20, step_s=0.5, steps_per_epoch=40,
                       validation_s=30, val_every=2, epoch_overhead_s=1)
    per_epoch = 0.5 * 40 + 1 + 30 / 2
    assert plan["seconds_per_epoch"] == per_epoch
    assert plan["epochs"] == int((SAFETY * 600 - 20 - 30) // per_epoch)  # + the last validation
    assert plan["planned_s"] <= SAFETY * 600
    with pytest.raises(FcnsegError, match="less than one epoch"):
        plan_epochs(budget_s=30, elapsed_s=20, step_s=1, steps_per_epoch=40, validation_s=0,
                    val_every=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from fcnseg.data import build_dataset

    root = tmp_path_factory.mktemp("budget") / "shapes"
    build_dataset("shapes", root, "train", **DATA)
    return root


def _config(data_dir, out, **kw):
    return resolve_config({"dataset": "shapes", "data_dir": str(data_dir), "data_options": DATA,
                           "pretrained": False, "batch_size": 8,
                           "crop": [48, 48],
                           "device": "cpu", "precision": "fp32", "workers": 0,
                           "val_images": 0, "out": str(out), **kw})


@pytest.mark.slow
def test_a_budgeted_run_ends_within_its_budget_and_resumes_on_plan(data_dir, tmp_path, capsys):
    budget = 20.0  # ResNet-18: a step long enough that the host's noise stays small beside it
    start = time.perf_counter()
    fit(_config(data_dir, tmp_path / "whole", time_budget=budget))
    wall = time.perf_counter() - start
    plan = json.loads((tmp_path / "whole" / "plan.json").read_text())
    ck = load_checkpoint(tmp_path / "whole" / "last.pt")
    assert plan["epochs"] >= 1 and plan["planned_s"] <= budget
    assert ck["config"]["epochs"] == plan["epochs"] == len(ck["history"])
    # the plan is SAFETY of the budget; what it cannot time (the host's noise) has the rest
    assert wall <= budget * 1.3, (wall, plan)
    assert "time budget 20 s" in capsys.readouterr().out
    # interrupted after 3 steps, then resumed: the saved plan is followed, not made again
    out = tmp_path / "resumed"
    fit(_config(data_dir, out, time_budget=budget, max_steps=3))
    planned = json.loads((out / "plan.json").read_text())["epochs"]
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--max-steps", "0"]) == 0
    said = capsys.readouterr().out
    assert "time budget" not in said
    ck = load_checkpoint(out / "last.pt")
    assert ck["config"]["epochs"] == planned and ck["epoch"] == planned


def test_the_cli_takes_durations(data_dir, tmp_path, capsys):
    assert main(["train", "--dataset", "shapes", "--data-dir", str(data_dir), "--data-option",
                 "size=16", "--data-option", "image_size=48", "--data-option", "val_size=4",
                 "--time-budget", "1s", "--no-pretrained", "--crop", "48", "48",
                 "--out", str(tmp_path / "r")]) == 2  # ResNet-18: no epoch fits in a second
    assert "less than one epoch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--time-budget", "soon", "--out", str(tmp_path / "s")])
