"""TensorBoard event files in the run folder: ``tensorboard --logdir runs`` shows runs side
by side.

Per epoch: the training loss, lr and images/s; after each validation its pixel accuracy,
mIoU, per-class IoU and the val prediction strips (image | truth | prediction, the PNGs
``validate`` writes). At the end, the run's settings as hparams with its final figures.
Rank 0 alone writes. A resumed run purges what the interrupted process logged past the
checkpoint, so curves never double back.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..data.io import read_image


class Board:
    """The run's TensorBoard writer (``None`` writer: a no-op, e.g. on ranks > 0)."""

    def __init__(self, run_dir: Path, first_epoch: int, enabled: bool) -> None:
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # [train] installs it; a bare PyTorch install may not
                print("fcnseg train: the tensorboard package is not installed: no event "
                      "files (pip install tensorboard)", file=sys.stderr)
                return
            # purge_step: events of an interrupted process at or after the resumed epoch
            # are hidden, so a resumed curve continues instead of doubling back.
            self.writer = SummaryWriter(str(run_dir), purge_step=first_epoch + 1)

    def epoch(self, row: dict[str, Any], metrics: dict[str, Any] | None,
              class_names: list[str], pictures: Path | None) -> None:
        """Log one epoch's history row, and its validation when it had one."""
        w, step = self.writer, row["epoch"]
        if w is None:
            return
        w.add_scalar("train/loss", row["train_loss"], step)
        w.add_scalar("train/lr", row["lr"], step)
        w.add_scalar("train/images_per_s", row["images_per_s"], step)
        if metrics is not None and "val_miou" in row:
            w.add_scalar("val/pixel_accuracy", row["val_pixel_accuracy"], step)
            w.add_scalar("val/miou", row["val_miou"], step)
            for name, iou in zip(class_names, metrics["per_class_iou"], strict=True):
                if not math.isnan(iou):
                    w.add_scalar(f"val_iou/{name}", iou, step)
            for path in sorted(pictures.glob("*.png")) if pictures and pictures.is_dir() else ():
                w.add_image(f"val/{path.stem}", read_image(path), step, dataformats="HWC")
        w.flush()

    def finish(self, settings: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """The settings as hparams, with the final figures; then close the files."""
        w = self.writer
        if w is None:
            return
        final = {k: history[-1][k] for k in ("val_miou", "val_pixel_accuracy", "train_loss")
                 if history and k in history[-1]}
        best = [r["val_miou"] for r in history if "val_miou" in r]
        if best:
            final["best_val_miou"] = max(best)
        hparams = {k: _scalar(v) for k, v in settings.items()}
        w.add_hparams(hparams, {f"hparam/{k}": v for k, v in final.items()}, run_name=".")
        w.close()


def _scalar(value: Any) -> Any:
    """An hparam value TensorBoard takes (numbers, strings, bools; the rest as text)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return "" if value is None else str(value)
