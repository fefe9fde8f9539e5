"""A training run's parts and state: built once, saved and resumed in one place.

:func:`build_run` turns a :class:`TrainConfig` (and, to resume, a checkpoint) into a
:class:`Run`: data, model, weight average, loss, optimizer, schedule and the
:class:`RunState` that the loop advances. :func:`save` writes it and :func:`restore` reads
it back; a checkpoint is plain types and tensors (``weights_only`` loads).
"""

from __future__ import annotations

import copy
import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..checkpoint import (
    capture_rng_state,
    check_compatible,
    model_entries,
    restore_rng_state,
    save_checkpoint,
)
from ..data import DatasetMeta
from ..device import resolve_precision
from ..distributed import DistInfo, barrier, per_rank_batch, unwrap
from ..errors import CheckpointError, DataError, FcnsegError
from ..models import build_model
from ..models.backbones import get_spec
from .budget import TimeBudget
from .config import TrainConfig
from .loader import EpochBatchSampler, build_train_val_data
from .losses import build_loss
from .optim import build_optimizer, build_scheduler, median_frequency_weights
from .rundir import make_run_dir, write_config


class DivergedError(FcnsegError):
    """The loss or the weights became NaN or infinite."""


@dataclass
class RunState:
    """Everything the loop advances; saved in every checkpoint, so a resume goes on exactly."""

    epoch: int = 0  # epochs finished
    iteration: int = 0  # batches done in the current epoch
    step: int = 0  # optimizer steps in total
    loss_sum: float = 0.0  # of the current epoch, for its mean
    loss_steps: int = 0
    images: int = 0
    seconds: float = 0.0
    best_miou: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)  # a row per epoch
    wall_s: float = 0.0  # wall seconds the run had used when it was saved (its budget's clock)

    def progress(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("step", "loss_sum", "loss_steps", "images",
                                               "seconds")}


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics.

    Predicting with averaged weights smooths out the last steps' noise (the validation mIoU
    of a from-scratch run jumps between epochs). ``decay`` ramps up from 0 as
    ``(1 + step) / (10 + step)`` so that the random initial weights are soon forgotten.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        ours, theirs = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in ours.items() if v.is_floating_point()]
        torch._foreach_lerp_([ours[k] for k in floats], [theirs[k] for k in floats], 1 - decay)
        for key, value in ours.items():
            if not value.is_floating_point():
                value.copy_(theirs[key])  # BatchNorm's num_batches_tracked


@dataclass(kw_only=True)
class Run:
    """The parts of one training run (one process or one DDP rank). ``config`` is what was
    asked and stays as it is; ``epochs`` is where the run ends (a time budget moves it)."""

    config: TrainConfig
    info: DistInfo
    run_dir: Path
    meta: DatasetMeta
    train_ds: Any
    val_ds: Any
    model: torch.nn.Module  # what the optimizer trains (DDP-wrapped under torchrun)
    average: WeightAverage | None
    loss_fn: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    sampler: EpochBatchSampler
    loader: DataLoader
    dtype: torch.dtype
    precision: str  # why that dtype, for the start-up line
    model_args: dict[str, Any]
    batch: int  # per process
    budget: TimeBudget  # the run's clock and --time-budget plan
    epochs: int
    state: RunState = field(default_factory=RunState)

    @property
    def finished(self) -> bool:
        """All its epochs done, or at its --max-steps limit."""
        limit = self.config.max_steps
        return self.state.epoch >= self.epochs or bool(limit) and self.state.step >= limit

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch()

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def net(self) -> torch.nn.Module:
        """The trained model without its DDP wrapper."""
        return unwrap(self.model)

    @property
    def predicting_model(self) -> torch.nn.Module:
        """The model that is validated and saved as ``model``: the average when there is one."""
        return self.average.module if self.average is not None else self.net


def build_run(config: TrainConfig, info: DistInfo, budget: TimeBudget,
              checkpoint: dict[str, Any] | None = None, source: Any = None) -> Run:
    """Every part of a run; ``checkpoint`` (read from ``source``) is restored into it. The
    epochs are the config's, or what ``budget`` plans before the optimizer is built."""
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    dtype, precision = resolve_precision(info.device, config.precision,
                                         depthwise_training=get_spec(config.backbone).depthwise)
    if not info.is_main:  # rank 0 first: it may generate or cache the data the others read
        barrier(info)
    meta, train_ds, val_ds = build_train_val_data(config)
    if info.is_main:
        barrier(info)
    model_args = {"name": config.model, "num_classes": meta.num_classes,
                  "backbone": config.backbone, "pretrained": config.pretrained,
                  "backbone_weights": config.backbone_weights,
                  "upsample_init": config.upsample_init}
    if checkpoint is not None:
        check_compatible(checkpoint, model_args, source, meta.class_names)
    model = _build_model(config, model_args, info)  # DDP-wrapped under torchrun
    batch = per_rank_batch(config.batch_size, len(train_ds), info)
    sampler = EpochBatchSampler(len(train_ds), batch, config.seed, info.rank, info.world_size)
    if sampler.batches_per_epoch() == 0:
        raise DataError(f"{len(train_ds)} training images give no full batch of "
                        f"{config.batch_size}: use a smaller --batch-size")
    # Only now, every check passed, is the run folder written: a refused command changes
    # nothing in it.
    run_dir = make_run_dir(config) if info.is_main else Path(config.out)
    loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=config.workers,
                        persistent_workers=config.workers > 0,
                        pin_memory=info.device.type == "cuda")
    weight = None
    if config.class_weights == "median-frequency":
        weight = median_frequency_weights(train_ds.base, meta.num_classes, meta.ignore_index,
                                          len(train_ds)).to(info.device)
    loss_fn = build_loss(config.loss, weight, meta.ignore_index, config.boundary_weight)
    if checkpoint is not None:  # its clock and plan go on; it plans nothing again
        budget.resume(float(checkpoint.get("progress", {}).get("wall_s", 0.0)))
    epochs = budget.plan_epochs(config, model=unwrap(model), loss_fn=loss_fn,
                                train_ds=train_ds, val_ds=val_ds,
                                steps_per_epoch=sampler.batches_per_epoch(), batch=batch,
                                device=info.device, dtype=dtype)
    if info.is_main:  # the settings it trains with, the planned epochs included
        write_config(run_dir, dataclasses.replace(config, epochs=epochs))
    # The schedule spans the run's epochs; --max-steps only interrupts the run (tests,
    # benchmarks) so that a resumed run follows the very same lr curve.
    optimizer = build_optimizer(model, config)
    run = Run(config=config, info=info, run_dir=run_dir, meta=meta, train_ds=train_ds,
              val_ds=val_ds, model=model, loss_fn=loss_fn, optimizer=optimizer,
              average=WeightAverage(unwrap(model), config.ema) if config.ema else None,
              scheduler=build_scheduler(optimizer, config, epochs * sampler.batches_per_epoch()),
              scaler=torch.amp.GradScaler(info.device.type, enabled=dtype == torch.float16),
              sampler=sampler, loader=loader, dtype=dtype, precision=precision,
              model_args=model_args, batch=batch, budget=budget, epochs=epochs)
    if checkpoint is not None:
        restore(run, checkpoint, source)
    return run


def _build_model(config: TrainConfig, model_args: dict[str, Any],
                 info: DistInfo) -> torch.nn.Module:
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    model = build_model(**model_args).to(device=info.device, memory_format=fmt)
    if config.pretrained or config.backbone_weights:  # random layers are never frozen
        model.freeze_backbone(config.freeze_stride, config.freeze_depthwise)
    if config.sync_bn and info.enabled:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if info.enabled:
        ids = [info.device.index] if info.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


def checkpoint_state(run: Run) -> dict[str, Any]:
    """The run as a checkpoint: ``model`` is what predicts (the weight average when there
    is one), ``trained_model`` the optimizer's own weights that a resume continues from."""
    s = run.state
    state = {**model_entries(run.predicting_model, run.meta, run.model_args),
             "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
             "scaler": run.scaler.state_dict(), "epoch": s.epoch, "iteration": s.iteration,
             "progress": {**s.progress(), "wall_s": run.budget.elapsed()},
             "rng": capture_rng_state(), "best_miou": s.best_miou, "history": s.history,
             "config": {**run.config.to_dict(), "epochs": run.epochs}}  # as it now ends
    if run.average is not None:
        state["trained_model"] = run.net.state_dict()
    return state


def restore(run: Run, checkpoint: dict[str, Any], source: Any) -> None:
    """Load a checkpoint written by :func:`checkpoint_state` into ``run``."""
    try:
        run.net.load_state_dict(checkpoint.get("trained_model", checkpoint["model"]))
        if run.average is not None:
            run.average.module.load_state_dict(checkpoint["model"])
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        run.scheduler.load_state_dict(checkpoint["scheduler"])
        run.scaler.load_state_dict(checkpoint["scaler"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot resume from {source}: its weights, optimizer or "
                              f"schedule state does not fit ({exc}); start a new run") from exc
    restore_rng_state(checkpoint["rng"])
    run.state = RunState(epoch=checkpoint["epoch"], iteration=checkpoint["iteration"],
                         best_miou=checkpoint["best_miou"],
                         history=list(checkpoint["history"]),
                         **checkpoint.get("progress", {}))


def reschedule(run: Run, epochs: int) -> None:
    """End the run after ``epochs`` epochs: the lr schedule is rebuilt to end there too, from
    the step the run is at (a resume rebuilds the same from the saved config)."""
    run.epochs = epochs
    run.scheduler = build_scheduler(run.optimizer, run.config, epochs * run.steps_per_epoch)
    run.scheduler.last_epoch = run.state.step - 1
    run.scheduler.step()  # the lr of the next step, on the new curve


def save(run: Run, name: str, where: str) -> None:
    """Write ``RUN_DIR/name`` (rank 0); NaN/inf weights are refused on every rank alike,
    so that the last good checkpoint stays good."""
    for key, p in run.net.state_dict().items():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise DivergedError(f"weight {key} became NaN/inf {where}; the last good "
                                "checkpoint is kept: lower --lr or add --warmup-iters")
    if run.info.is_main:
        save_checkpoint(run.run_dir / name, checkpoint_state(run))
