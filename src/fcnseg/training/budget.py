"""Training to a time budget: the best model a wall-clock budget can buy on this machine.

``fcnseg train --time-budget 60m`` times a few training steps and one validation forward
pass on a throwaway copy of the model, then sets the number of epochs (and so the length of
the lr schedule) that fits the budget left, validations included. The plan is printed, saved
as ``RUN_DIR/plan.json`` and in the checkpoint's config (``epochs``), so a resumed run
follows the very same schedule instead of planning again.

A plan is a forecast from a few steps, and a shared host can slow down mid-run. After every
epoch the loop checks the forecast against the epochs it has seen (:func:`replan_epochs`):
when the run would end past the budget, the epochs, and the lr schedule with them, are
shortened to fit; when the first quarter of the run goes faster than planned, it gets the
epochs the budget still holds. ``plan.json`` records each change and why.

:class:`TimeBudget` is all of it as one object: the clock every reading of time goes
through (tests drive it with a clock of their own), the plan, and the re-plan.
"""

from __future__ import annotations

import copy
import json
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..checkpoint import save_checkpoint
from ..device import autocast
from ..distributed import main_rank_int
from ..errors import FcnsegError
from ..fileio import atomic_write_text
from ..viz import plot_training_curves

UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
# Share of the budget left for what the plan cannot time: data loading stalls, checkpoint
# writes, the logs, and the host's noise.
SAFETY = 0.92
Clock = Callable[[], float]  # seconds, monotonic


def parse_duration(text: str) -> float:
    """``"90s"``, ``"60m"``, ``"1.5h"`` or plain seconds -> seconds (> 0)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise FcnsegError(f"time budget {text!r}: give a positive duration such as 90s, "
                          "60m or 1.5h")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def time_step(model: torch.nn.Module, loss_fn: Callable, batch: tuple[torch.Tensor, torch.Tensor],
              device: torch.device, dtype: torch.dtype, steps: int = 3,
              clock: Clock = time.perf_counter) -> float:
    """Median seconds of a training step on ``batch``, on a copy (the run is untouched)."""
    twin = copy.deepcopy(model).train()
    opt = torch.optim.SGD([p for p in twin.parameters() if p.requires_grad], lr=1e-6)
    images, masks = batch[0].to(device), batch[1].to(device)
    times = []
    for _ in range(steps + 1):  # the first step pays for one-off set-up: not counted
        start = clock()
        with autocast(device, dtype):
            logits = twin(images)["out"]
        loss = loss_fn(logits, masks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(clock() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def time_forward(model: torch.nn.Module, image: torch.Tensor, device: torch.device,
                 dtype: torch.dtype, clock: Clock = time.perf_counter) -> float:
    """Seconds of one whole-image forward pass (validation's unit of work)."""
    twin = copy.deepcopy(model).eval()
    x = image[None].to(device)
    with torch.inference_mode(), autocast(device, dtype):
        twin(x)
        start = clock()
        twin(x)
    return clock() - start


def plan_epochs(budget_s: float, elapsed_s: float, step_s: float, steps_per_epoch: int,
                validation_s: float, val_every: int, epoch_overhead_s: float = 0.0
                ) -> dict[str, Any]:
    """The plan: as many epochs as fit ``SAFETY`` of the budget left, validations and each
    epoch's fixed cost (checkpoint writes, logs) included."""
    # The last epoch always validates; the others every val_every epochs.
    left = SAFETY * budget_s - elapsed_s - (validation_s if val_every else 0.0)
    per_epoch = step_s * steps_per_epoch + epoch_overhead_s + (
        validation_s / val_every if val_every else 0.0)
    epochs = int(left // per_epoch) if per_epoch > 0 else 1
    if epochs < 1:
        raise FcnsegError(f"a time budget of {budget_s:.0f} s leaves {max(left, 0):.0f} s after "
                          f"start-up, less than one epoch ({per_epoch:.0f} s): give a larger "
                          "--time-budget or a smaller data set / crop")
    return {"budget_s": budget_s, "elapsed_before_training_s": round(elapsed_s, 2),
            "seconds_per_step": round(step_s, 4), "steps_per_epoch": steps_per_epoch,
            "validation_s": round(validation_s, 2), "val_every": val_every,
            "epoch_overhead_s": round(epoch_overhead_s, 2),
            "seconds_per_epoch": round(per_epoch, 2), "epochs": epochs,
            "planned_s": round(SAFETY * budget_s - left + epochs * per_epoch, 1)}


def replan_epochs(plan: dict[str, Any], elapsed_s: float, epochs_done: int, epochs: int,
                  epoch_s: float) -> int:
    """The epochs to run now that an epoch takes ``epoch_s`` (validations amortised) and
    ``elapsed_s`` of the budget is spent.

    A run that would end past the budget gets as many as fit ``SAFETY`` of it (at least
    ``epochs_done``). A run faster than planned gets more only in its first quarter, where
    the longer lr schedule barely changes the lr (poly: by a few per cent); later the
    schedule is kept.
    """
    slower = epoch_s / max(plan["seconds_per_epoch"], 1e-9)
    last_validation_s = plan["validation_s"] * slower if plan["val_every"] else 0.0
    budget_s = plan["budget_s"]
    fit = epochs_done + int(max(0.0, SAFETY * budget_s - elapsed_s - last_validation_s)
                            // epoch_s)
    if elapsed_s + (epochs - epochs_done) * epoch_s + last_validation_s > budget_s:
        return max(epochs_done, min(epochs, fit))
    return max(epochs, fit) if epochs_done < epochs / 4 else epochs


def recent_pace(epoch_ends: list[float], window: int) -> float:
    """Seconds an epoch takes now: the median of the last ``window`` epochs (a window that
    holds about one validation). A median, so that one epoch slowed by something else on
    the host does not cut a run's epochs for good; a slowdown that lasts moves it."""
    ends = epoch_ends[-(window + 1):]
    return statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False))


class TimeBudget:
    """The run's clock and its ``--time-budget``, as one object.

    :meth:`elapsed` is the run's wall time (earlier processes of a resumed run included:
    :meth:`resume`); :meth:`plan` forecasts the epochs before the run is built;
    :meth:`after_epoch` re-plans from the pace of the epochs seen. Without a budget the
    epochs are the config's and nothing is planned. ``clock`` (default
    ``time.perf_counter``) is every reading of time, so that tests can drive it.
    """

    def __init__(self, seconds: float | None, run_dir: Path, info: Any,
                 clock: Clock = time.perf_counter, started: float | None = None) -> None:
        self.seconds, self.run_dir, self.info, self.clock = seconds, run_dir, info, clock
        self.started = clock() if started is None else started  # it counts from here
        self.plan: dict[str, Any] | None = None
        self.ends: list[float] = []  # when the epochs since the last restart ended

    def elapsed(self) -> float:
        """Wall seconds of the run so far."""
        return self.clock() - self.started

    def resume(self, wall_s: float) -> None:
        """Go on with a saved run: its clock, and its plan (a resumed run never plans again)."""
        self.started -= wall_s
        if self.seconds:
            self.plan = load_plan(self.run_dir)

    def plan_epochs(self, config: Any, **probe: Any) -> int:
        """The epochs of the run: the config's, unless a new budgeted run plans them here by
        timing its work on a throwaway copy of the model (:func:`plan_run`; ``probe``:
        model, loss_fn, train_ds, val_ds, steps_per_epoch, batch, device, dtype)."""
        if not self.seconds or self.plan is not None:
            return config.epochs
        self.plan = plan_run(config, elapsed_s=self.elapsed(), info=self.info,
                             run_dir=self.run_dir, clock=self.clock, **probe)
        if self.info.is_main:
            save_plan(self.run_dir, self.plan)
            print(describe(self.plan), flush=True)
        return self.plan["epochs"]

    def start(self) -> None:
        """The loop starts: epochs are timed from now."""
        self.ends = [self.clock()]

    def after_epoch(self, epochs_done: int, epochs: int, whole: bool, window: int) -> int:
        """The epochs the run should have now that one has ended (``whole``: not the rest of
        an interrupted one, which does not tell the pace): ``epochs`` unless the budget's
        plan changed (:func:`replan_epochs`), recorded in ``plan.json`` with its reason."""
        self.ends = self.ends + [self.clock()] if whole else [self.clock()]
        plan = self.plan
        if not whole or plan is None or epochs != plan["epochs"]:  # or --epochs given
            return epochs
        epoch_s = recent_pace(self.ends, window)
        new = main_rank_int(replan_epochs(plan, self.elapsed(), epochs_done, epochs, epoch_s),
                            self.info)
        if new != epochs:
            plan.setdefault("replanned", []).append(
                {"after_epoch": epochs_done, "elapsed_s": round(self.elapsed(), 1),
                 "seconds_per_epoch": round(epoch_s, 2), "epochs": new})
            plan["epochs"] = new
            if self.info.is_main:
                save_plan(self.run_dir, plan)
                tqdm.write(f"time budget: {self.elapsed():.0f} s used after epoch {epochs_done}"
                           f", epochs now take {epoch_s:.1f} s (planned "
                           f"{plan['seconds_per_epoch']:.1f} s); the run now ends after epoch "
                           f"{new} (was {epochs}), its lr schedule with it")
        return new


def plan_run(config: Any, model: torch.nn.Module, loss_fn: Callable, train_ds: Any,
             val_ds: Any, steps_per_epoch: int, batch: int, device: torch.device,
             dtype: torch.dtype, elapsed_s: float, info: Any, run_dir: Path,
             clock: Clock = time.perf_counter) -> dict[str, Any]:
    """Time this run's step (on real training crops, their loading included), validation,
    checkpoint writes and logs here, and plan its epochs; rank 0's plan is broadcast."""
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    start = clock()
    items = [train_ds[(0, i)] for i in range(min(batch, len(train_ds)))]  # (epoch, index)
    # Loading runs beside the model in worker processes: on a small CPU it still competes.
    load_s = (clock() - start) / max(1, min(config.workers, 2))
    images = torch.stack([x for x, _ in items]).contiguous(memory_format=fmt)
    step_s = time_step(model, loss_fn, (images, torch.stack([y for _, y in items])), device,
                       dtype, clock=clock) + load_s
    validation_s = 0.0
    if val_ds is not None and len(val_ds):
        h, w = val_ds.read_raw(0)[0].shape[:2]
        validation_s = len(val_ds) * time_forward(model, torch.zeros(3, h, w), device,
                                                  dtype, clock) / info.world_size
    overhead_s = _epoch_overhead(model, run_dir, config, clock) if info.is_main else 0.0
    plan = plan_epochs(config.time_budget, elapsed_s, step_s, steps_per_epoch, validation_s,
                       config.val_every, overhead_s)
    plan["epochs"] = main_rank_int(plan["epochs"], info)
    return plan


def _epoch_overhead(model: torch.nn.Module, run_dir: Path, config: Any,
                    clock: Clock = time.perf_counter) -> float:
    """Seconds an epoch spends outside its steps: last.pt written (again after a
    validation, and best.pt when it improves) and the curves figure, timed in the run folder."""
    # A checkpoint is the weights plus the optimizer's per-weight state: AdamW keeps two
    # moments of every weight, SGD with momentum one. The probe has the same size.
    moments = 2 if config.optimizer == "adamw" else int(config.momentum > 0)
    moments += 1 if config.ema else 0  # the weight average is saved beside the weights
    weights = [p.detach() for p in model.parameters()]
    probe_state = {"model": model.state_dict(),
                   "optimizer": [w.clone() for _ in range(moments) for w in weights]}
    val_every = config.val_every
    probe = run_dir / ".budget-probe"
    start = clock()
    save_checkpoint(probe, probe_state)
    save_s = clock() - start
    start = clock()
    plot_training_curves([{"epoch": 1, "train_loss": 1.0}], probe.with_suffix(".png"))
    plot_s = clock() - start
    probe.unlink(missing_ok=True)
    probe.with_suffix(".png").unlink(missing_ok=True)
    writes = 1 + (2 / val_every if val_every else 0)  # + last.pt and best.pt at validations
    return writes * save_s + plot_s


def save_plan(run_dir: Path, plan: dict[str, Any]) -> None:
    atomic_write_text(run_dir / "plan.json", json.dumps(plan, indent=2) + "\n")


def load_plan(run_dir: Path) -> dict[str, Any] | None:
    """The plan a budgeted run saved in ``run_dir`` (None if it has none or it is unreadable:
    the run then keeps its epochs without re-planning)."""
    try:
        return json.loads((run_dir / "plan.json").read_text())
    except (OSError, ValueError):
        return None


def describe(plan: dict[str, Any]) -> str:
    return (f"time budget {plan['budget_s']:.0f} s: {plan['seconds_per_step']:.3f} s/step x "
            f"{plan['steps_per_epoch']} steps/epoch + validation and checkpoints "
            f"{plan['validation_s']:.1f} s every {plan['val_every']} epoch(s) -> "
            f"{plan['epochs']} epochs, about {plan['planned_s']:.0f} s (plan.json)")
