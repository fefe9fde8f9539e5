"""The training loop: plain functions, the model never owns it (nanoGPT style).

:func:`fit` runs a whole run from a :class:`TrainConfig` (one process or one DDP rank);
:func:`train_one_epoch` is one pass over the training batches. Everything a resumed run
needs is in the checkpoint, and all randomness is a function of (seed, epoch, index), so
an interrupted and resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import __version__
from ..device import autocast, resolve_precision
from ..errors import CheckpointError, DataError, FcnsegError
from ..fileio import atomic_write_text
from .budget import describe, plan_run, save_plan
from .checkpoint import (
    capture_rng_state,
    check_compatible,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .config import TrainConfig
from .distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    per_rank_batch,
    setup_distributed,
    sync_buffers,
    unwrap,
)
from .loader import EpochBatchSampler, build_train_val_data
from .losses import build_loss
from .optim import build_optimizer, build_scheduler, median_frequency_weights
from .rundir import check_run_folder, prepare_run_dir, run_folder_lock


class DivergedError(FcnsegError):
    """The loss became NaN or infinite."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _check_finite_params(model: torch.nn.Module, where: str) -> None:
    """Refuse to checkpoint NaN/inf weights: the last good checkpoint must stay good."""
    for name, p in model.state_dict().items():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise DivergedError(f"weight {name} became NaN/inf {where}; the last good "
                                "checkpoint is kept: lower --lr or add --warmup-iters")


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: Any, scaler: torch.amp.GradScaler, loss_fn: Callable,
                    ctx: dict[str, Any], on_step: Callable[[int], None] | None = None) -> None:
    """One pass over ``loader``; progress is accumulated in ``ctx`` (survives a resume).

    ``ctx`` holds device, dtype, info, channels_last, epoch, iteration (batches done in
    this epoch), step (optimizer steps in total), max_steps, loss_sum, loss_steps, images,
    seconds. ``on_step(iteration)`` runs after each step (mid-epoch checkpoints).
    """
    device, dtype, info = ctx["device"], ctx["dtype"], ctx["info"]
    fmt = torch.channels_last if ctx["channels_last"] else torch.contiguous_format
    model.train()
    bar = tqdm(total=len(loader) + ctx["iteration"], initial=ctx["iteration"], leave=True,
               desc=f"epoch {ctx['epoch'] + 1}/{ctx['epochs']}", disable=not info.is_main,
               dynamic_ncols=True, unit="batch")
    start, images = time.perf_counter(), 0
    for images_b, masks_b in loader:
        images_b = images_b.to(device, non_blocking=True).contiguous(memory_format=fmt)
        masks_b = masks_b.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = model(images_b)["out"]
        loss = loss_fn(logits, masks_b)  # fp32, outside autocast
        # Reduce for logging *and* for the NaN decision, so that every rank stops together.
        reduced = all_reduce_sum(loss.detach().clone(), info) / info.world_size
        value = float(reduced)
        if not math.isfinite(value):
            raise DivergedError(
                f"loss became {value} at epoch {ctx['epoch'] + 1}, iteration "
                f"{ctx['iteration'] + 1} (lr {optimizer.param_groups[0]['lr']:.3g}); stopped, "
                "the last good checkpoint is kept: lower --lr or add --warmup-iters")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        ctx["iteration"] += 1
        ctx["step"] += 1
        ctx["loss_sum"] += value
        ctx["loss_steps"] += 1
        images += images_b.shape[0] * info.world_size
        elapsed = time.perf_counter() - start
        if ctx["iteration"] % ctx["log_every"] == 0 or ctx["iteration"] == 1:
            bar.set_postfix(loss=f"{ctx['loss_sum'] / ctx['loss_steps']:.4f}",
                            img_s=f"{images / max(elapsed, 1e-9):.1f}", refresh=False)
        bar.update(1)
        if on_step is not None:
            on_step(ctx["iteration"])
        if ctx["max_steps"] and ctx["step"] >= ctx["max_steps"]:
            break
    bar.close()
    ctx["images"] += images
    ctx["seconds"] += time.perf_counter() - start


def fit(config: TrainConfig, resume: str | Path | dict | None = None,
        overwrite: bool = False) -> dict[str, Any]:
    """Train per ``config`` (resuming from a checkpoint path or dict); returns a summary.

    A run folder that holds a run is refused unless ``resume`` or ``overwrite``; the
    folder is locked for the whole run (see :mod:`fcnseg.engine.rundir`).
    """
    started = time.perf_counter()  # a --time-budget counts from here
    info = setup_distributed(config.device)
    run_dir = Path(config.out)
    try:
        if not info.is_main:
            return _fit(config, resume, info, started)
        with run_folder_lock(run_dir):
            check_run_folder(run_dir, resume is not None, overwrite)
            return _fit(config, resume, info, started)
    except KeyboardInterrupt:
        if not (run_dir / "last.pt").is_file():
            raise KeyboardInterrupt("no checkpoint was written yet: run the same command "
                                    "again to start over") from None
        raise KeyboardInterrupt(f"the last checkpoint in {run_dir} is intact; resume with "
                                f"`fcnseg train --resume --out {run_dir}`") from None
    finally:
        cleanup_distributed()


def _fit(config: TrainConfig, resume: Any, info: DistInfo, started: float) -> dict[str, Any]:
    from ..inference import Predictor
    from ..models import build_model
    from .evaluate import evaluate

    say = tqdm.write if info.is_main else (lambda *_: None)
    run_dir = prepare_run_dir(config) if info.is_main else Path(config.out)
    checkpoint = None
    if resume is not None:
        checkpoint = resume if isinstance(resume, dict) else load_checkpoint(resume, resume=True)
    _seed_everything(config.seed)
    device = info.device
    dtype, reason = resolve_precision(device, config.precision)
    # Rank 0 first: it may generate or cache the data set that the other ranks then read.
    if not info.is_main:
        barrier(info)
    meta, train_ds, val_ds = build_train_val_data(config)
    if info.is_main:
        barrier(info)
    model_args = {"name": config.model, "num_classes": meta.num_classes,
                  "backbone": config.backbone, "pretrained": config.pretrained,
                  "backbone_weights": config.backbone_weights,
                  "upsample_init": config.upsample_init}
    if checkpoint is not None:
        check_compatible(checkpoint, model_args, resume if not isinstance(resume, dict)
                         else "to resume", meta.class_names)
    model = build_model(**model_args)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=fmt)
    if config.sync_bn and info.enabled:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    batch = per_rank_batch(config.batch_size, len(train_ds), info)
    sampler = EpochBatchSampler(len(train_ds), batch, config.seed, info.rank, info.world_size)
    if sampler.batches_per_epoch() == 0:
        raise DataError(f"{len(train_ds)} training images give no full batch of "
                        f"{config.batch_size}: use a smaller --batch-size")
    loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=config.workers,
                        persistent_workers=config.workers > 0,
                        pin_memory=device.type == "cuda")
    steps_per_epoch = sampler.batches_per_epoch()
    weight = None
    if config.class_weights == "median-frequency":
        weight = median_frequency_weights(train_ds.base, meta.num_classes, meta.ignore_index,
                                          len(train_ds)).to(device)
    loss_fn = build_loss(config.loss, weight, meta.ignore_index, config.boundary_weight)
    if config.time_budget and checkpoint is None:  # a resumed run keeps its saved plan
        plan = plan_run(config, unwrap(model), loss_fn, train_ds, val_ds, steps_per_epoch,
                        batch, device, dtype, time.perf_counter() - started, info, run_dir)
        config = dataclasses.replace(config, epochs=plan["epochs"])
        if info.is_main:
            prepare_run_dir(config)
            save_plan(run_dir, plan)
        say(describe(plan))
    # The schedule spans the configured epochs; --max-steps only interrupts the run (tests,
    # benchmarks) so that a resumed run follows the very same lr curve.
    total = config.epochs * steps_per_epoch
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, total)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    ctx: dict[str, Any] = {
        "device": device, "dtype": dtype, "info": info, "channels_last": config.channels_last,
        "epoch": 0, "epochs": config.epochs, "iteration": 0, "step": 0,
        "max_steps": config.max_steps, "log_every": config.log_every,
        "loss_sum": 0.0, "loss_steps": 0, "images": 0, "seconds": 0.0,
    }
    best, history = -1.0, []
    metrics: dict[str, Any] | None = None  # of the latest validation
    if checkpoint is not None:
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            scaler.load_state_dict(checkpoint["scaler"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot resume from {resume}: its optimizer or schedule "
                                  f"state does not fit ({exc}); start a new run") from exc
        restore_rng_state(checkpoint["rng"])
        ctx.update(checkpoint.get("progress", {}))
        ctx["epoch"], ctx["iteration"] = checkpoint["epoch"], checkpoint["iteration"]
        best, history = checkpoint["best_miou"], list(checkpoint["history"])

    def state() -> dict[str, Any]:
        progress = {k: ctx[k] for k in ("step", "loss_sum", "loss_steps", "images", "seconds")}
        return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": ctx["epoch"], "iteration": ctx["iteration"], "progress": progress,
                "rng": capture_rng_state(), "config": config.to_dict(),
                "meta": meta.to_dict(), "model_args": model_args, "best_miou": best,
                "history": history, "fcnseg_version": __version__}

    def save(name: str, where: str) -> None:
        _check_finite_params(unwrap(model), where)  # every rank: they decide alike
        if info.is_main:
            save_checkpoint(run_dir / name, state())

    def on_step(iteration: int) -> None:
        if config.checkpoint_every and ctx["step"] % config.checkpoint_every == 0 \
                and iteration < steps_per_epoch:
            save("last.pt", f"at step {ctx['step']}")

    per = f" ({batch} per process x {info.world_size})" if info.enabled else ""
    say(f"fcnseg train: {config.model}/{config.backbone}, {meta.num_classes} classes, "
        f"{len(train_ds)} train / {len(val_ds) if val_ds is not None else 0} val images, "
        f"batch {config.batch_size}{per}, {steps_per_epoch} steps/epoch, device {device}, "
        f"precision {reason}, {'channels_last' if config.channels_last else 'NCHW'}, "
        f"run folder {run_dir}")
    if ctx["epoch"] >= config.epochs:
        say(f"nothing to do: the checkpoint already finished {ctx['epoch']} epochs; "
            "give a larger --epochs to go on")
    elif config.max_steps and ctx["step"] >= config.max_steps:
        say(f"nothing to do: the run is at its step limit ({ctx['step']} steps, --max-steps "
            f"{config.max_steps}); go on with --max-steps 0 (no limit) or a larger value")
    while ctx["epoch"] < config.epochs and not (config.max_steps
                                                 and ctx["step"] >= config.max_steps):
        epoch = ctx["epoch"]
        sampler.set_epoch(epoch, skip=ctx["iteration"])
        train_one_epoch(model, loader, optimizer, scheduler, scaler, loss_fn, ctx, on_step)
        if ctx["iteration"] < steps_per_epoch:  # stopped by --max-steps mid-epoch
            save("last.pt", "at the step limit")
            break
        row: dict[str, Any] = {
            "epoch": epoch + 1, "train_loss": ctx["loss_sum"] / max(1, ctx["loss_steps"]),
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": ctx["images"] / max(ctx["seconds"], 1e-9), "seconds": ctx["seconds"],
        }
        sync_buffers(unwrap(model), info)  # validate and save the very same model
        last = epoch + 1 == config.epochs or (config.max_steps and ctx["step"] >= config.max_steps)
        history.append(row)
        ctx.update(epoch=epoch + 1, iteration=0, loss_sum=0.0, loss_steps=0, images=0,
                   seconds=0.0)
        # Saved before validating: a failure there must not cost the epoch's training.
        save("last.pt", f"after epoch {epoch + 1}")
        if val_ds is not None and ((epoch + 1) % config.val_every == 0 or last):
            # Batched like training (equal sizes share a forward pass; others go one by one);
            # pytorch-fcn's habit: pictures of a few predictions at each validation.
            shots = run_dir / "val" / f"epoch_{epoch + 1:03d}" if config.val_images else None
            predictor = Predictor.from_model(unwrap(model), meta, dtype)
            metrics = evaluate(predictor, val_ds, batch_size=batch, save_predictions=shots,
                               max_images=config.val_images).compute()
            row.update(val_pixel_accuracy=float(metrics["pixel_accuracy"]),
                       val_miou=float(metrics["miou"]))
            improved, best = row["val_miou"] > best, max(best, row["val_miou"])
            save("last.pt", f"after validating epoch {epoch + 1}")  # the history's val figures
            if improved and info.is_main:
                save_checkpoint(run_dir / "best.pt", state())
        if info.is_main:
            _write_logs(run_dir, history)
            val = (f", val pixel acc {row['val_pixel_accuracy']:.4f}, mIoU {row['val_miou']:.4f}"
                   if "val_miou" in row else "")
            say(f"epoch {epoch + 1}/{config.epochs}: loss {row['train_loss']:.4f}{val}, "
                f"{row['images_per_s']:.1f} img/s, {row['seconds']:.1f} s")
        if last:
            break
    barrier(info)
    return {"run_dir": str(run_dir), "history": history, "best_miou": best,
            "val_metrics": metrics, "epoch": ctx["epoch"], "step": ctx["step"],
            "model": unwrap(model)}


def _write_logs(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite log.jsonl (one row per epoch) from the history, and curves.png."""
    from ..viz import plot_training_curves

    atomic_write_text(run_dir / "log.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    plot_training_curves(history, run_dir / "curves.png")
