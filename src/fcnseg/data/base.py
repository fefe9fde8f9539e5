"""SegmentationDataset: (image, mask) file pairs, validated labels, decode-once caching."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .io import read_image, read_mask
from .meta import DatasetMeta
from .transforms import eval_transform

Transform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]
MaskReader = Callable[[Path], np.ndarray]
MAX_RAW_LABEL = 65535  # 16-bit masks are the widest we read


class SegmentationDataset(Dataset):
    """A segmentation data set over ``files = [(image_path, mask_path), ...]``.

    ``read_raw(i)`` returns ``(uint8 H x W x 3, int64 H x W)`` with labels remapped through
    ``label_map`` (raw value -> label; e.g. CamVid's void 11 -> 255) and validated: every
    value is a class id in ``[0, meta.num_classes)`` or ``meta.ignore_index``; anything else is
    a :class:`DataError` naming the mask file and the values. ``__getitem__`` applies
    ``transform`` (default: the eval transform, i.e. normalisation only).

    Caching: each pair is decoded once and kept in memory as uint8 arrays (labels fit in
    uint8 when there are < 255 classes). That costs about ``4 * H * W`` bytes per image,
    e.g. ~0.75 MB for a 375 x 500 VOC image, ~1.1 GB for VOC train (1,464 images) and ~8 GB
    for train_aug (10,582): pass ``cache=False`` for sets that do not fit, and ``cache_dir``
    to keep decoded ``.npy`` files on disk instead (keyed by path, mtime and size, so an
    edited file is decoded again). Call :meth:`preload` *before* creating a DataLoader with
    workers: forked workers then share the decoded arrays copy-on-write, whereas a cache
    filled inside a worker dies with that worker (at the end of every epoch unless
    ``persistent_workers=True``).
    """

    def __init__(
        self,
        files: Sequence[tuple[Path, Path]],
        meta: DatasetMeta,
        transform: Transform | None = None,
        *,
        source: str = "",
        label_map: Mapping[int, int] | None = None,
        mask_reader: MaskReader | None = None,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        check_files: bool = True,
    ) -> None:
        self.files = [(Path(i), Path(m)) for i, m in files]
        self.meta = meta
        self.transform = transform
        self.source = source
        if not self.files:
            raise DataError(f"no images in {source or 'the data set'}: the split is empty")
        if check_files:
            for img_path, mask_path in self.files:
                if not img_path.is_file():
                    raise DataError(f"{img_path}: image listed in {source} not found")
                if not mask_path.is_file():
                    raise DataError(f"{mask_path}: mask for {img_path.name} not found")
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        self._lut = np.arange(MAX_RAW_LABEL + 1, dtype=np.int64)
        for raw, new in self.label_map.items():
            self._lut[raw] = new
        self._mask_reader = mask_reader or read_mask
        self._mask_dtype = np.uint8 if meta.num_classes < 255 else np.int32
        self._cache: list[tuple[np.ndarray, np.ndarray] | None] | None = (
            [None] * len(self.files) if cache else None
        )
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DataError(f"{self.cache_dir}: cannot create cache directory ({exc})") from exc
        self._eval = eval_transform(meta)

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.meta.name}, {len(self)} images from {self.source}, "
                f"{self.meta.num_classes} classes)")

    # -- decoding ---------------------------------------------------------------------------
    def _decode(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img_path, mask_path = self.files[i]
        img = read_image(img_path)
        raw = self._mask_reader(mask_path)
        if raw.ndim != 2:
            raise DataError(f"{mask_path}: mask has shape {raw.shape}, expected one label per "
                            "pixel (an index PNG)")
        if raw.shape != img.shape[:2]:
            raise DataError(
                f"{mask_path}: mask size {raw.shape[1]}x{raw.shape[0]} differs from image "
                f"{img_path} size {img.shape[1]}x{img.shape[0]} (width x height)"
            )
        mask = self._remap_and_check(raw, mask_path)
        return img, mask.astype(self._mask_dtype)

    def _remap_and_check(self, raw: np.ndarray, mask_path: Path) -> np.ndarray:
        lo, hi = (int(raw.min()), int(raw.max())) if raw.size else (0, 0)
        if lo < 0 or hi > MAX_RAW_LABEL:
            raise DataError(f"{mask_path}: label values {lo}..{hi} are not valid labels")
        mask = self._lut[raw] if self.label_map else raw
        n, ignore = self.meta.num_classes, self.meta.ignore_index
        bad = (mask >= n) & (mask != ignore)
        if bad.any():
            values = np.unique(raw[bad])
            shown = ", ".join(str(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
            raise DataError(
                f"{mask_path}: label values {shown} out of range: {self.meta.name} has classes "
                f"0-{n - 1} and ignore {ignore} (fix the mask or the class list)"
            )
        return mask

    def _cache_paths(self, i: int) -> tuple[Path, Path]:
        assert self.cache_dir is not None
        parts = []
        for p in self.files[i]:
            st = p.stat()
            parts.append(f"{p.resolve()}|{st.st_mtime_ns}|{st.st_size}")
        # The remapping and class count shape the stored mask, so they are part of the key.
        parts.append(f"{sorted(self.label_map.items())}|{self.meta.num_classes}")
        key = hashlib.sha1("\n".join(parts).encode()).hexdigest()
        return self.cache_dir / f"{key}.img.npy", self.cache_dir / f"{key}.mask.npy"

    def _load_disk(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img_file, mask_file = self._cache_paths(i)
        try:
            return np.load(img_file), np.load(mask_file)
        except (OSError, ValueError, EOFError):
            pass  # missing or half-written cache entry: decode again
        img, mask = self._decode(i)
        for arr, dest in ((img, img_file), (mask, mask_file)):
            tmp = dest.with_suffix(f".{os.getpid()}.tmp")
            try:
                with open(tmp, "wb") as f:
                    np.save(f, arr)
                os.replace(tmp, dest)  # atomic: readers never see a partial file
            except OSError:
                tmp.unlink(missing_ok=True)  # a full disk only costs speed, not correctness
        return img, mask

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded ``(uint8 image, uint8/int32 mask)`` for item ``i``, from the cache if any."""
        if self._cache is not None and self._cache[i] is not None:
            return self._cache[i]  # type: ignore[return-value]
        pair = self._load_disk(i) if self.cache_dir is not None else self._decode(i)
        if self._cache is not None:
            self._cache[i] = pair
        return pair

    def read_raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8 H x W x 3 image, int64 H x W mask)`` with validated, remapped labels."""
        img, mask = self.load(i)
        return img, mask.astype(np.int64)

    def preload(self, num_workers: int | None = None) -> SegmentationDataset:
        """Decode every item now with a thread pool (PIL decoding releases the GIL).

        Do this before a DataLoader forks its workers so they share the decoded arrays.
        Without the in-memory cache it only fills ``cache_dir`` (if set).
        """
        if self._cache is None and self.cache_dir is None:
            return self
        todo = [i for i in range(len(self)) if self._cache is None or self._cache[i] is None]
        workers = num_workers or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for _ in pool.map(self.load, todo):
                pass
        return self

    # -- items ------------------------------------------------------------------------------
    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = self.load(i)
        transform = self.transform or self._eval
        return transform(img, mask.astype(np.int64))
