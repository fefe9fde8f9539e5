"""Data sets (VOC, CamVid, image/mask folders, COCO annotations, synthetic shapes), reading
and transforms.

``build_dataset(name, root, split, transform=None, download=False, **options)`` is the one
entry point; every data set yields ``(float image 3xHxW, int64 mask HxW)`` with labels in
``[0, num_classes)`` or 255 (ignored), and carries its :class:`DatasetMeta`.

Reading and writing images (:mod:`.io`) and class metadata (:mod:`.meta`) need no PyTorch;
the data sets and transforms do, and are imported when first used.
"""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, FcnsegError, UnknownNameError
from .io import read_image, read_mask
from .meta import DatasetMeta, voc_colormap

if TYPE_CHECKING:
    from .base import SegmentationDataset, Transform

# The data sets: each is the module of its name, whose ``build_<name>`` builds it.
DATASETS: tuple[str, ...] = ("voc", "camvid", "folder", "coco", "shapes")
# The other public names -> the module that defines them (imported on first use).
_LAZY = {"SegmentationDataset": "base", "Transform": "base", "camvid_meta": "camvid",
         "render_sample": "shapes", "shapes_meta": "shapes", "eval_transform": "transforms",
         "train_transform": "transforms", "voc_meta": "voc",
         **{f"build_{name}": name for name in DATASETS}}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_root(root: Path) -> None:
    if not root.exists():
        raise DataError(f"{root}: data directory does not exist (check --data-dir)")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (give the data set's folder)")
    try:
        # os.access is not enough: root passes it for chmod 000 folders on some systems.
        if not os.access(root, os.R_OK | os.X_OK):
            raise PermissionError("no read/execute permission")
        next(iter(os.scandir(root)), None)
    except PermissionError as exc:
        raise DataError(f"{root}: data directory is not readable ({exc}); fix its permissions") \
            from exc
    except OSError as exc:
        raise DataError(f"{root}: cannot read data directory ({exc})") from exc


def build_dataset(
    name: str,
    root: str | Path,
    split: str,
    transform: Transform | None = None,
    download: bool = False,
    **options,
) -> SegmentationDataset:
    """Build data set ``name`` (one of :data:`DATASETS`) from ``root``.

    ``options`` go to the data set's builder (e.g. ``size``/``image_size``/``seed`` for
    shapes, ``cache_dir`` for any); an option a builder does not take is a user error.
    """
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, sorted(DATASETS))
    builder = getattr(importlib.import_module(f".{name}", __name__), f"build_{name}")
    params = inspect.signature(builder).parameters
    valid = [p for p in params if p not in ("root", "split", "transform", "download")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise FcnsegError(f"dataset {name!r} has no option {', '.join(unknown)}; "
                          f"valid options: {', '.join(valid)}")
    root = Path(root).expanduser()
    if name == "shapes" or (name == "voc" and download):
        if root.exists():  # generated / downloaded into root: it need not exist yet
            _check_root(root)
    else:
        _check_root(root)
    return builder(root, split, transform, download, **options)


__all__ = [
    "DATASETS", "DatasetMeta", "SegmentationDataset", "build_dataset", "build_camvid",
    "build_coco", "build_folder", "build_shapes", "build_voc", "camvid_meta", "eval_transform",
    "read_image", "read_mask", "render_sample", "shapes_meta", "train_transform",
    "voc_colormap", "voc_meta",
]
