"""The training loop: plain functions over a :class:`~fcnseg.training.run.Run` (nanoGPT style).

:func:`fit` runs a whole run from a :class:`TrainConfig` (one process or one DDP rank);
:func:`train_one_epoch` is one pass over the training batches; :func:`validate` scores the
model on the validation set. Everything a resumed run needs is in the checkpoint, and all
randomness is a function of (seed, epoch, index), so an interrupted and resumed run ends
with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..checkpoint import load_checkpoint
from ..data import DatasetMeta
from ..device import autocast
from ..distributed import (
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    elastic_restart,
    rank_and_world,
    setup_distributed,
    sync_buffers,
    unwrap,
)
from ..fileio import atomic_write_text
from ..inference import Predictor
from ..inference.evaluate import evaluate
from ..models.backbones import depthwise_convs
from ..viz import plot_training_curves
from .budget import Clock, TimeBudget
from .config import TrainConfig, resolve_config
from .run import DivergedError, Run, build_run, reschedule, save
from .rundir import VAL_PICTURES, check_run_folder, run_folder_lock
from .tensorboard import Board

__all__ = ["DivergedError", "TrainResult", "fit", "train", "train_one_epoch", "validate"]


@dataclass
class TrainResult:
    """What a finished :func:`fit` hands back."""

    run_dir: Path
    history: list[dict[str, Any]]  # a row per epoch, as in log.jsonl
    best_miou: float  # -1 when the run never validated
    val_metrics: dict[str, Any] | None  # of the last validation
    epoch: int
    step: int
    model: torch.nn.Module  # the predicting model (the weight average when there is one)
    meta: DatasetMeta  # its classes and input normalisation, as its checkpoints carry them


def train(overrides: dict[str, Any], config_file: str | None = None, recipe: str | None = None,
          resume: str | None = None, overwrite: bool = False) -> TrainResult:
    """What ``fcnseg train`` does: resolve the config and fit.

    ``resume`` is a checkpoint path, or ``"last"`` for ``RUN_DIR/last.pt``; the saved config
    is then the base (same seed, data and schedule) and the flags still override it, e.g.
    ``--epochs`` to extend a finished run.
    """
    if resume is None:
        config = resolve_config(overrides, config_file, recipe=recipe)
        if not (elastic_restart() and (Path(config.out) / "last.pt").is_file()):
            return fit(config, overwrite=overwrite)
        # torchrun restarted the workers after one died: the same command line goes on
        # from the run's last checkpoint (--checkpoint-every bounds the steps redone).
        overrides, resume = {**overrides, "out": config.out}, "last"
    if resume == "last":
        path = Path(overrides.get("out") or TrainConfig().out) / "last.pt"
    else:
        path = Path(resume)
        overrides = {"out": str(path.parent), **overrides}
    checkpoint = load_checkpoint(path, resume=True)
    if elastic_restart() and rank_and_world(env=True)[0] == 0:
        print(f"fcnseg train: torchrun restart {elastic_restart()}: resuming from {path} "
              f"(step {checkpoint['progress']['step']})", file=sys.stderr, flush=True)
    saved = {"ema": 0.0, **checkpoint["config"]}  # runs from before --ema kept no average
    config = resolve_config(overrides, config_file, base=saved)
    return fit(config, resume=path, checkpoint=checkpoint)


def fit(config: TrainConfig, resume: str | Path | None = None, overwrite: bool = False,
        checkpoint: dict[str, Any] | None = None, now: Clock = time.perf_counter) -> TrainResult:
    """Train per ``config``, resuming from the checkpoint file ``resume`` if given
    (``checkpoint``: that file, when the caller has already read it). ``now`` is the clock
    a ``--time-budget`` is measured with.

    A run folder that holds a run is refused unless ``resume`` or ``overwrite``; the
    folder is locked for the whole run (see :mod:`fcnseg.training.rundir`).
    """
    started, run_dir = now(), Path(config.out)  # a --time-budget counts from here
    info = setup_distributed(config.device)
    budget = TimeBudget(config.time_budget, run_dir, info, now, started)
    if resume is not None and checkpoint is None:
        checkpoint = load_checkpoint(resume, resume=True)
    try:
        if info.is_main:
            with run_folder_lock(run_dir):
                check_run_folder(run_dir, resume is not None, overwrite)
                return _train(build_run(config, info, budget, checkpoint, resume))
        return _train(build_run(config, info, budget, checkpoint, resume))
    except KeyboardInterrupt:
        if not (run_dir / "last.pt").is_file():
            raise KeyboardInterrupt("no checkpoint was written yet: run the same command "
                                    "again to start over") from None
        raise KeyboardInterrupt(f"the last checkpoint in {run_dir} is intact; resume with "
                                f"`fcnseg train --resume --out {run_dir}`") from None
    finally:
        cleanup_distributed()


def _train(run: Run) -> TrainResult:
    """The loop: epochs of training, each validated when due, saved once, and logged."""
    state, config = run.state, run.config
    _say(run, _describe(run))
    if run.finished:
        _say(run, _nothing_to_do(run))
    metrics = None
    board = Board(run.run_dir, state.epoch, enabled=run.info.is_main)
    run.budget.start()
    while not run.finished:
        whole_epoch = state.iteration == 0  # not the rest of one, after a resume
        run.sampler.set_epoch(state.epoch, skip=state.iteration)
        train_one_epoch(run)
        if state.iteration < run.steps_per_epoch:  # stopped by --max-steps mid-epoch
            save(run, "last.pt", "at the step limit")
            break
        row, validated = _finish_epoch(run), None
        epochs = run.budget.after_epoch(state.epoch, run.epochs, whole_epoch,
                                        window=max(3, config.val_every))
        if epochs != run.epochs:
            reschedule(run, epochs)
        due = run.finished or state.epoch % max(config.val_every, 1) == 0
        improved = False
        try:
            if run.val_ds is not None and due:
                metrics = validated = validate(run)
                row.update(val_pixel_accuracy=float(metrics["pixel_accuracy"]),
                           val_miou=float(metrics["miou"]))
                improved = row["val_miou"] > state.best_miou
                state.best_miou = max(state.best_miou, row["val_miou"])
        finally:  # saved even when validating fails: that must not cost the epoch's training
            save(run, "last.pt", f"after epoch {state.epoch}")
        if improved:
            save(run, "best.pt", f"after validating epoch {state.epoch}")
        _log_epoch(run, row)
        board.epoch(row, validated, run.meta.class_names, _pictures(run))
    board.finish(config.to_dict(), state.history)
    barrier(run.info)
    return TrainResult(run.run_dir, state.history, state.best_miou, metrics, state.epoch,
                       state.step, run.predicting_model, run.meta)


def _nothing_to_do(run: Run) -> str:
    state = run.state
    if state.epoch >= run.epochs:
        return (f"nothing to do: the checkpoint already finished {state.epoch} epochs; give a "
                "larger --epochs to go on")
    return (f"nothing to do: the run is at its step limit ({state.step} steps, --max-steps "
            f"{run.config.max_steps}); go on with --max-steps 0 (no limit) or a larger value")


def train_one_epoch(run: Run) -> None:
    """One pass over the training batches (the rest of an epoch, when resuming mid-way)."""
    state, info, device = run.state, run.info, run.device
    fmt = torch.channels_last if run.config.channels_last else torch.contiguous_format
    run.model.train()
    bar = tqdm(total=len(run.loader) + state.iteration, initial=state.iteration, leave=True,
               desc=f"epoch {state.epoch + 1}/{run.epochs}", disable=not info.is_main,
               dynamic_ncols=True, unit="batch")
    start, images = time.perf_counter(), 0
    for images_b, masks_b in run.loader:
        images_b = images_b.to(device, non_blocking=True).contiguous(memory_format=fmt)
        masks_b = masks_b.to(device, non_blocking=True)
        with autocast(device, run.dtype):
            logits = run.model(images_b)["out"]
        loss = run.loss_fn(logits, masks_b)  # fp32, outside autocast
        # Reduced for the log *and* the NaN decision, so that every rank stops together.
        value = float(all_reduce_sum(loss.detach().clone(), info) / info.world_size)
        if not math.isfinite(value):
            raise DivergedError(
                f"loss became {value} at epoch {state.epoch + 1}, iteration "
                f"{state.iteration + 1} (lr {run.optimizer.param_groups[-1]['lr']:.3g}); "
                "stopped, the last good checkpoint is kept: lower --lr or add --warmup-iters")
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        if run.average is not None:
            run.average.update(run.net, state.step)
        state.iteration, state.step = state.iteration + 1, state.step + 1
        state.loss_sum, state.loss_steps = state.loss_sum + value, state.loss_steps + 1
        images += images_b.shape[0] * info.world_size
        if state.iteration % run.config.log_every == 0 or state.iteration == 1:
            bar.set_postfix(loss=f"{state.loss_sum / state.loss_steps:.4f}", refresh=False,
                            img_s=f"{images / max(time.perf_counter() - start, 1e-9):.1f}")
        bar.update(1)
        every = run.config.checkpoint_every
        if every and state.step % every == 0 and state.iteration < run.steps_per_epoch:
            save(run, "last.pt", f"at step {state.step}")
        if run.finished:  # at --max-steps
            break
    bar.close()
    state.images += images
    state.seconds += time.perf_counter() - start


def validate(run: Run) -> dict[str, Any]:
    """Score the predicting model on the whole validation images; pytorch-fcn's habit:
    image | truth | prediction pictures of the first few at each validation."""
    config = run.config
    # Every rank must score the very model that rank 0 saves (DDP leaves each rank with
    # the BatchNorm statistics of its own last batch).
    sync_buffers(run.predicting_model, run.info)
    shots = _pictures(run)
    predictor = Predictor.from_model(run.predicting_model, run.meta, run.dtype)
    return evaluate(predictor, run.val_ds, batch_size=run.batch, save_predictions=shots,
                    max_images=config.val_images).compute()


def _pictures(run: Run) -> Path | None:
    """Where validation writes this epoch's prediction strips (None: --val-images 0)."""
    if not run.config.val_images:
        return None
    return run.run_dir / VAL_PICTURES / f"epoch_{run.state.epoch:03d}"


def _finish_epoch(run: Run) -> dict[str, Any]:
    """Close the epoch in the state; its history row (validation figures come later)."""
    state = run.state
    row = {"epoch": state.epoch + 1, "train_loss": state.loss_sum / max(1, state.loss_steps),
           "lr": run.optimizer.param_groups[-1]["lr"],
           "images_per_s": state.images / max(state.seconds, 1e-9), "seconds": state.seconds}
    state.history.append(row)
    state.epoch, state.iteration = state.epoch + 1, 0
    state.loss_sum, state.loss_steps, state.images, state.seconds = 0.0, 0, 0, 0.0
    return row


def _describe(run: Run) -> str:
    config, info = run.config, run.info
    per = f" ({run.batch} per process x {info.world_size})" if info.enabled else ""
    val = len(run.val_ds) if run.val_ds is not None else 0
    average = f", weight average {config.ema}" if run.average is not None else ""
    layout = "channels_last" if config.channels_last else "NCHW"
    model = unwrap(run.model)
    if model.frozen_layers:
        average += f", backbone fixed up to stride {config.freeze_stride}"
    if any(not conv.weight.requires_grad for conv in depthwise_convs(model.backbone)):
        average += ", depthwise filters fixed"
    return (f"fcnseg train: {config.model}/{config.backbone}, {run.meta.num_classes} classes, "
            f"{len(run.train_ds)} train / {val} val images, batch {config.batch_size}{per}, "
            f"{run.steps_per_epoch} steps/epoch, device {run.device}, precision "
            f"{run.precision}, {layout}{average}, run folder {run.run_dir}")


def _log_epoch(run: Run, row: dict[str, Any]) -> None:
    """log.jsonl (rewritten from the history), curves.png and a line on the console."""
    if not run.info.is_main:
        return
    history = run.state.history
    atomic_write_text(run.run_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    plot_training_curves(history, run.run_dir / "curves.png")
    val = (f", val pixel acc {row['val_pixel_accuracy']:.4f}, mIoU {row['val_miou']:.4f}"
           if "val_miou" in row else "")
    _say(run, f"epoch {row['epoch']}/{run.epochs}: loss {row['train_loss']:.4f}{val}, "
              f"{row['images_per_s']:.1f} img/s, {row['seconds']:.1f} s")


def _say(run: Run, text: str) -> None:
    if run.info.is_main:
        tqdm.write(text)
