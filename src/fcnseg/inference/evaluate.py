"""Whole-image evaluation: one confusion matrix over every pixel of a split.

Used by ``fcnseg evaluate`` and by the training loop for per-epoch validation. Under
``torch.distributed`` each rank takes the indices ``rank::world_size`` (no
DistributedSampler, which pads the last batch by repeating images and would count their
pixels twice) and the matrices are summed at the end, so every rank returns the same result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..distributed import all_reduce_sum, rank_and_world
from ..fileio import ensure_writable_dir
from ..inference import Predictor
from ..metrics import ConfusionMatrix
from ..viz import colorize, save_image


class _RawImages(Dataset):
    """``(uint8 H x W x 3 image, int64 H x W mask)`` of chosen items: the Predictor
    normalises as its model was trained to, whatever transform the data set carries."""

    def __init__(self, dataset: Any, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.dataset.read_raw(self.indices[i])


def _as_list(batch: list) -> list:
    """Collate to a plain list: whole images of different sizes cannot be stacked."""
    return batch


def evaluate(predictor: Predictor, dataset: Any, batch_size: int = 1, progress: bool = True,
             save_predictions: str | Path | None = None, max_images: int = 4,
             limit: int | None = None, num_workers: int = 0) -> ConfusionMatrix:
    """Evaluate ``predictor`` on the whole images of ``dataset`` (its ``read_raw(i)``).

    ``batch_size`` images are predicted together (equal sizes in one forward), with the
    predictor's inference options. ``limit`` evaluates the first ``limit`` images only.
    With ``save_predictions=DIR`` the first ``max_images`` images of rank 0 are written as
    ``DIR/NNNN_<stem>.png`` strips: image | truth | prediction.
    """
    meta = predictor.meta
    cm = ConfusionMatrix(meta.num_classes, meta.ignore_index)
    rank, world = rank_and_world()
    indices = list(range(len(dataset)))
    if limit is not None:
        indices = indices[:limit]
    indices = indices[rank::world]
    loader = DataLoader(_RawImages(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_as_list)
    saved = 0
    save_dir = None
    if save_predictions is not None and rank == 0:
        save_dir = ensure_writable_dir(save_predictions)  # fail before the work, not after
    batches: Any = loader
    if progress and rank == 0:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc="evaluate", unit="batch", leave=False)
    position = 0
    for batch in batches:
        probs = predictor.predict_many([image for image, _ in batch])
        for (image, target), p in zip(batch, probs, strict=True):
            pred = torch.from_numpy(p.argmax(0))
            cm.update(pred, torch.from_numpy(target))
            if save_dir is not None and saved < max_images:
                _save_strip(save_dir, dataset, indices[position], image, target, pred, meta)
                saved += 1
            position += 1
    all_reduce_sum(cm.mat)  # every rank scored its share of the images
    return cm


def _save_strip(folder: Path, dataset: Any, index: int, image: np.ndarray,
                target: np.ndarray, pred: Any, meta: Any) -> None:
    """Image, ground truth and prediction side by side (pytorch-fcn's validation pictures)."""
    files = getattr(dataset, "files", None)
    stem = Path(files[index][0]).stem if files else "image"
    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    strip = np.concatenate([image, gap, colorize(target, meta.palette, meta.ignore_index),
                            gap, colorize(pred, meta.palette, meta.ignore_index)], axis=1)
    save_image(strip, folder / f"{index:04d}_{stem}.png")
