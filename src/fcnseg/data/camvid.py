"""CamVid in the SegNet layout: ``<root>/<split>/*.png`` with labels in ``<root>/<split>annot/``.

Splits train / val / test; 11 classes; label 11 (void) becomes the ignore index 255 so that
every data set ignores the same value. Images are 480 x 360 RGB PNGs, labels 8-bit indices.

SegNet's val images all come from drive ``0016E5``, which also gives most of train: val then
measures neighbouring frames. ``holdout=DRIVE`` (``--data-option holdout=0006R0``) pools
train and val and splits them by drive instead: "val" is every frame of ``DRIVE``, "train"
every frame of the other drives (a file's drive is its name's prefix, e.g. ``0006R0_f02400``).
Split ``trainval`` is train + val, to train the final model on every labelled frame.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import SegmentationDataset, Transform
from .io import IMAGE_EXTENSIONS
from .meta import DatasetMeta

CAMVID_CLASSES = [
    "sky", "building", "pole", "road", "pavement", "tree", "sign/symbol", "fence", "car",
    "pedestrian", "bicyclist",
]
CAMVID_PALETTE = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]
CAMVID_VOID = 11
CAMVID_SPLITS = ("train", "val", "test")


def camvid_meta() -> DatasetMeta:
    """Metadata of CamVid (SegNet's 11 classes and colours); void is ignored (255)."""
    return DatasetMeta("camvid", CAMVID_CLASSES, CAMVID_PALETTE)


def build_camvid(
    root: str | Path,
    split: str = "train",
    transform: Transform | None = None,
    download: bool = False,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    holdout: str | None = None,
) -> SegmentationDataset:
    """CamVid ``split`` under ``root`` (SegNet layout). ``download`` is not supported.

    ``holdout`` names a drive to validate on (see the module docstring).
    """
    root = Path(root)
    if holdout is None and split == "trainval":  # the final model: every labelled frame
        files = [pair for s in ("train", "val") for pair in _split_files(root, s, download)]
    elif holdout is None:
        files = _split_files(root, split, download)
    else:
        if split not in ("train", "val"):
            raise DataError(f"CamVid with holdout={holdout} has the splits train and val "
                            f"(the other drives / drive {holdout}), not {split!r}")
        pooled = [pair for s in ("train", "val") for pair in _split_files(root, s, download)]
        drives = sorted({drive_of(img) for img, _ in pooled})
        if holdout not in drives:
            raise DataError(f"{root}: no CamVid drive {holdout!r} in train + val; drives "
                            f"there: {', '.join(drives)}")
        files = [pair for pair in pooled if (drive_of(pair[0]) == holdout) == (split == "val")]
    return SegmentationDataset(
        files, camvid_meta(), transform, source=f"{root / split}" + (
            f" (holdout {holdout})" if holdout else ""), label_map={CAMVID_VOID: 255},
        cache=cache, cache_dir=cache_dir,
    )


def drive_of(path: Path) -> str:
    """The drive (sequence) a CamVid frame comes from: its file name's prefix."""
    return path.stem.split("_")[0]


def _split_files(root: Path, split: str, download: bool) -> list[tuple[Path, Path]]:
    """The (image, label) pairs of a SegNet-layout split folder, or DataError naming it."""
    img_dir, ann_dir = root / split, root / f"{split}annot"
    if not img_dir.is_dir():
        have = sorted(s for s in CAMVID_SPLITS if (root / s).is_dir())
        raise DataError(
            f"{img_dir}: CamVid split folder not found; expected {root}/<split>/*.png and "
            f"{root}/<split>annot/*.png (SegNet layout); splits here: {', '.join(have) or 'none'}"
            + ("; CamVid cannot be downloaded automatically" if download else "")
        )
    if not ann_dir.is_dir():
        raise DataError(f"{ann_dir}: CamVid label folder for split {split!r} not found")
    try:
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    except OSError as exc:
        raise DataError(f"{img_dir}: cannot list folder ({exc})") from exc
    if not images:
        raise DataError(f"{img_dir}: CamVid split folder has no images")
    files = []
    for img in images:
        mask = ann_dir / f"{img.stem}.png"
        if not mask.is_file():
            raise DataError(f"{mask}: label for {img} not found")
        files.append((img, mask))
    return files
