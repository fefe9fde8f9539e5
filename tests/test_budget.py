"""--time-budget: durations, the plan's arithmetic, a budgeted run and its resume."""

from __future__ import annotations

import json

import pytest

from conftest import SHAPES, data_options
from fcnseg.checkpoint import load_checkpoint
from fcnseg.cli import main
from fcnseg.errors import FcnsegError
from fcnseg.training.budget import SAFETY, parse_duration, plan_epochs, recent_pace, replan_epochs
from fcnseg.training.config import resolve_config
from fcnseg.training.train import fit

DATA = SHAPES


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


def _plan(**kw):
    return {"budget_s": 600.0, "seconds_per_epoch": 50.0, "validation_s": 10.0,
            "val_every": 5, "epochs": 10, **kw}


def test_a_run_on_plan_keeps_its_epochs():
    # 4 epochs done at the planned pace: 6 more end well within the budget
    assert replan_epochs(_plan(), elapsed_s=210, epochs_done=4, epochs=10, epoch_s=50) == 10


def test_a_slower_run_is_shortened_to_fit():
    # epochs now take 80 s: 6 more would end at 210 + 480 + 16 s > 600 s
    epochs = replan_epochs(_plan(), elapsed_s=210, epochs_done=4, epochs=10, epoch_s=80)
    assert epochs == 4 + int((SAFETY * 600 - 210 - 10 * 80 / 50) // 80) == 8
    # out of time: stop after the epoch just done, never before it
    assert replan_epochs(_plan(), elapsed_s=590, epochs_done=9, epochs=10, epoch_s=80) == 9


def test_a_faster_run_gets_more_epochs_only_in_its_first_quarter():
    # after 2 of 10 epochs, each 40 s instead of 50: the budget holds 2 + (552 - 90 - 8) // 40
    assert replan_epochs(_plan(), elapsed_s=90, epochs_done=2, epochs=10, epoch_s=40) == 13
    # after 4 of 10 the lr schedule is too far along to be stretched
    assert replan_epochs(_plan(), elapsed_s=170, epochs_done=4, epochs=10, epoch_s=40) == 10
    # a pace that only just fits the plan changes nothing
    assert replan_epochs(_plan(), elapsed_s=100, epochs_done=2, epochs=10, epoch_s=50) == 10


@pytest.fixture(scope="module")
def data_dir(shapes_dir):
    return shapes_dir


def _config(data_dir, out, **kw):
    return resolve_config({"dataset": "shapes", "data_dir": str(data_dir), "data_options": DATA,
                           "pretrained": False, "batch_size": 8,
                           "crop": [48, 48],
                           "device": "cpu", "precision": "fp32", "workers": 0,
                           "val_images": 0, "out": str(out), **kw})


class Ticks:
    """A clock that moves ``tick`` seconds at each reading: the budget logic sees the same
    times on any host, however busy (it asserts behaviour, not speed)."""

    def __init__(self, tick: float) -> None:
        self.t, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


@pytest.mark.slow
def test_a_budgeted_run_ends_within_its_budget_and_resumes_on_plan(data_dir, tmp_path, capsys):
    budget = 2.0
    fit(_config(data_dir, tmp_path / "whole", time_budget=budget, backbone="tiny"),
        now=Ticks(0.05))
    plan = json.loads((tmp_path / "whole" / "plan.json").read_text())
    ck = load_checkpoint(tmp_path / "whole" / "last.pt")
    assert plan["epochs"] >= 2 and plan["planned_s"] <= budget
    assert ck["config"]["epochs"] == plan["epochs"] == len(ck["history"])
    assert ck["progress"]["wall_s"] <= budget  # on the run's own clock
    assert "time budget 2 s" in capsys.readouterr().out
    # interrupted after 3 steps, then resumed: the saved plan is followed, not made again
    out = tmp_path / "resumed"
    fit(_config(data_dir, out, time_budget=budget, backbone="tiny", max_steps=3),
        now=Ticks(0.05))
    planned = json.loads((out / "plan.json").read_text())["epochs"]
    capsys.readouterr()
    saved = load_checkpoint(out / "last.pt", resume=True)["config"]
    fit(resolve_config({"max_steps": 0}, base=saved), resume=out / "last.pt", now=Ticks(0.05))
    assert "time budget 2 s" not in capsys.readouterr().out  # no new plan
    plan = json.loads((out / "plan.json").read_text())
    ck = load_checkpoint(out / "last.pt")
    assert ck["config"]["epochs"] == plan["epochs"] == ck["epoch"]
    assert plan["epochs"] == planned or plan["replanned"]  # changed only with a reason


def test_the_cli_takes_durations(data_dir, tmp_path, capsys):
    assert main(["train", "--dataset", "shapes", "--data-dir", str(data_dir), *data_options(DATA),
                 "--time-budget", "0.001s", "--no-pretrained", "--crop", "48", "48",
                 "--out", str(tmp_path / "r")]) == 2  # no epoch fits in a millisecond
    assert "less than one epoch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--time-budget", "soon", "--out", str(tmp_path / "s")])


@pytest.mark.slow
def test_a_run_slower_than_its_plan_is_shortened_and_resumes_shortened(data_dir, tmp_path,
                                                                         monkeypatch, capsys):
    import fcnseg.training.budget as budget_module
    import fcnseg.training.train as train_module

    def quick_plan(config, *args, **kwargs):  # 40 epochs of 2 steps: planned for 0.05 s each
        plan = plan_epochs(budget_s=config.time_budget, elapsed_s=0, step_s=0.025,
                           steps_per_epoch=2, validation_s=0.0, val_every=0)
        return {**plan, "epochs": 40}

    clock = Ticks(0.001)

    def slow_epoch(run):  # ... and then the host slows down: over a second an epoch
        clock.t += 1.0
        real_epoch(run)

    real_epoch = train_module.train_one_epoch
    monkeypatch.setattr(budget_module, "plan_run", quick_plan)
    monkeypatch.setattr(train_module, "train_one_epoch", slow_epoch)
    out, budget = tmp_path / "slowed", 12.0
    config = _config(data_dir, out, time_budget=budget, backbone="tiny", val_every=0,
                     warmup_iters=0, max_steps=6)
    fit(config, now=clock)  # interrupted after 3 epochs (2 steps each)
    plan = json.loads((out / "plan.json").read_text())
    ck = load_checkpoint(out / "last.pt")
    assert plan["replanned"][0]["after_epoch"] == 1
    assert ck["config"]["epochs"] == plan["epochs"] < 40
    assert "the run now ends after epoch" in capsys.readouterr().out
    fit(resolve_config({"max_steps": 0}, base=load_checkpoint(out / "last.pt")["config"]),
        resume=out / "last.pt", now=clock)
    plan = json.loads((out / "plan.json").read_text())
    ck = load_checkpoint(out / "last.pt")
    assert ck["epoch"] == ck["config"]["epochs"] == plan["epochs"] == len(ck["history"])
    assert ck["progress"]["wall_s"] <= budget  # on the run's own clock
    # the lr schedule was rebuilt to end with the run: poly reaches ~0 at the last step
    assert ck["optimizer"]["param_groups"][-1]["lr"] < 0.1 * config.lr


def test_one_slow_epoch_does_not_set_the_pace_and_a_lasting_slowdown_does():
    steady = [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    spike = steady + [190.0]  # one epoch of 90 s: something else ran on the host
    assert recent_pace(spike, 5) == 20.0
    lasting = spike + [280.0, 370.0]
    assert recent_pace(lasting, 5) == 90.0
    assert recent_pace([0.0, 30.0], 5) == 30.0  # fewer epochs than the window
