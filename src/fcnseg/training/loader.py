"""Training data loading whose every random choice is a pure function of (seed, epoch, index).

That is what makes ``--resume`` exact, with or without worker processes and DDP:

* the order of epoch ``e`` comes from :class:`DistributedSampler` seeded with ``seed + e``
  (for one process too: a world of one), sharded ``rank::world_size``;
* the batch sampler yields ``(epoch, index)`` keys, so a worker (even a persistent one that
  never sees ``set_epoch``) knows which epoch a sample belongs to;
* the augmentation of a sample runs with python / numpy / torch RNGs seeded from
  ``(seed, epoch, index)`` and restored afterwards, so no global RNG state leaks between
  samples, workers or a resumed run;
* a mid-epoch resume skips the batches that epoch had already done.

:func:`build_train_val_data` builds a config's training and validation sets.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from ..data import build_dataset
from ..data.transforms import train_transform
from ..errors import DataError
from ..models.backbones import normalization


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 32-bit seed for one sample of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch (CPU) RNGs inside the block; restore them after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        # The CPU generator only: torch.manual_seed also seeds every CUDA device, which
        # fork_rng(devices=[]) would not restore, and which, with a CUDA build of torch but
        # no initialised GPU, queues a lazy call that records a stack trace: most of the
        # demo's data loading time.
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class AugmentedDataset(Dataset):
    """Raw pairs of ``base`` (``read_raw``) through ``transform``, keyed by ``(epoch, index)``.

    ``class_balance`` is the share of samples drawn class-uniformly instead (Zhu et al. 2019's
    class-uniform sampling): a class picked uniformly, an image that shows it and a crop
    around one of its pixels, so that thin, rare classes (poles, signs, cyclists) are seen
    as often as roads. The draw is part of the sample's seeded augmentation, so resumes stay
    exact.
    """

    def __init__(self, base: Any, transform: Callable, seed: int, length: int | None = None,
                 class_balance: float = 0.0) -> None:
        self.base, self.transform, self.seed = base, transform, int(seed)
        self.length = len(base) if length is None else min(int(length), len(base))
        self.class_balance = float(class_balance)
        self.images_with = images_per_class(base, self.length) if class_balance else []

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        with seeded_rngs(sample_seed(self.seed, epoch, index)):
            if self.images_with and random.random() < self.class_balance:
                label, images = random.choice(self.images_with)
                image, mask = self.base.read_raw(int(random.choice(images)))
                ys, xs = np.nonzero(mask == label)
                pick = random.randrange(len(ys))
                return self.transform(image, mask, focus=(int(ys[pick]), int(xs[pick])))
            return self.transform(*self.base.read_raw(index))


def images_per_class(base: Any, length: int) -> list[tuple[int, np.ndarray]]:
    """``(class, indices of the images that show it)`` for every class the first ``length``
    images of ``base`` show."""
    counts, _ = class_pixel_counts(base, base.meta.num_classes, base.meta.ignore_index, length)
    return [(c, np.flatnonzero(counts[:, c])) for c in range(counts.shape[1])
            if counts[:, c].any()]


def class_pixel_counts(dataset: Any, num_classes: int, ignore_index: int,
                       length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per image of the first ``length`` (default all): the pixels of each class on the raw
    mask (``N x C``, ignored pixels aside) and all its pixels (``N``)."""
    n = len(dataset) if length is None else min(length, len(dataset))
    counts = np.zeros((n, num_classes), dtype=np.int64)
    sizes = np.zeros(n, dtype=np.int64)
    for i in range(n):
        mask = np.asarray(dataset.read_raw(i)[1]).ravel()
        counts[i] = np.bincount(mask[mask != ignore_index], minlength=num_classes)[:num_classes]
        sizes[i] = mask.size
    return counts, sizes


class EpochBatchSampler:
    """Batches of ``(epoch, index)`` keys for this rank, in a (seed, epoch)-determined order.

    Incomplete last batches are dropped (BatchNorm needs > 1 sample, and every rank must
    do the same number of steps).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.sampler = DistributedSampler(
            range(num_samples), num_replicas=world_size, rank=rank, shuffle=True,
            seed=seed, drop_last=True,
        )
        self.batch_size = batch_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select epoch ``epoch``'s order and skip its first ``skip`` batches (resume)."""
        self.epoch, self.skip = epoch, skip
        self.sampler.set_epoch(epoch)

    def batches_per_epoch(self) -> int:
        return len(self.sampler) // self.batch_size

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.skip)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = list(self.sampler)
        for b in range(self.skip, self.batches_per_epoch()):
            chunk = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(self.epoch, int(i)) for i in chunk]


class LimitedDataset(Dataset):
    """The first ``n`` items of a data set, keeping its attributes (``meta``, ``files``...)."""

    def __init__(self, base: Any, n: int) -> None:
        self.base, self.n = base, min(int(n), len(base))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.base[i]

    def __getattr__(self, name: str) -> Any:
        base = self.__dict__.get("base")  # absent while unpickling in a worker
        if base is None:
            raise AttributeError(name)
        return getattr(base, name)


def build_train_val_data(config: Any) -> tuple[Any, AugmentedDataset, Any]:
    """``(meta, training AugmentedDataset, validation data set or None)`` of a TrainConfig.

    Empty splits are a :class:`DataError` naming the split and the flag to change.
    """
    base = build_dataset(config.dataset, config.data_dir, config.split, **config.data_options)
    # The pixels are normalised as the backbone's ImageNet weights expect; the checkpoint's
    # meta carries it to every runtime.
    mean, std = normalization(config.backbone)
    meta = dataclasses.replace(base.meta, mean=mean, std=std)
    n = len(base) if not config.limit_train else min(len(base), config.limit_train)
    if n == 0:
        raise DataError(f"the {config.split!r} split of {config.dataset} data in "
                        f"{config.data_dir} has no images: check --data-dir and --split")
    if hasattr(base, "preload"):  # decode once, before worker processes fork
        base.preload()
    transform = train_transform(meta, crop=tuple(config.crop), scale=tuple(config.scale),
                                flip=config.flip, color_jitter=config.color_jitter)
    train = AugmentedDataset(base, transform, config.seed, n, config.class_balance)
    val = None
    if config.val_every:
        # No transform: validation reads raw pixels (read_raw), the Predictor normalises.
        val = build_dataset(config.dataset, config.data_dir, config.val_split,
                            **config.data_options)
        if config.limit_val:
            val = LimitedDataset(val, config.limit_val)
        if hasattr(val, "read_raw"):  # a bad val image or mask fails now, not after an epoch
            with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decodes without the GIL
                for _ in pool.map(val.read_raw, range(len(val))):
                    pass
        if len(val) == 0:
            raise DataError(f"the {config.val_split!r} split has no images: "
                            "use --val-split or --val-every 0")
    return meta, train, val
