"""Pascal VOC2012 segmentation (the chapter's data set), with optional SBD "aug" labels.

Layout::

    <root>/VOCdevkit/VOC2012/            (or <root> = VOC2012 itself)
        JPEGImages/<id>.jpg
        SegmentationClass/<id>.png       palette PNGs: indices 0-20, 255 = boundary (ignored)
        SegmentationClassAug/<id>.png    optional SBD labels (8-bit grayscale, same values)
        ImageSets/Segmentation/{train,val,trainval}.txt
        ImageSets/Segmentation/train_aug.txt   the common 10,582-image list, for train_aug

Masks are read as palette *indices*. The chapter maps RGB colours back to classes, which
silently turns the 255 boundary (colour 224,224,192) into background; here it stays 255.
List files may hold one id per line or "/JPEGImages/x.jpg /SegmentationClassAug/x.png" pairs.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import SegmentationDataset, Transform
from .meta import DatasetMeta, voc_colormap

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "potted plant",
    "sheep", "sofa", "train", "tv/monitor",
]
VOC_SPLITS = ("train", "val", "trainval", "train_aug")
VOC_ARCHIVE = "VOCtrainval_11-May-2012.tar"


def voc_meta() -> DatasetMeta:
    """Metadata of VOC2012: 21 classes, the VOC colours, 255 = boundary."""
    return DatasetMeta("voc", VOC_CLASSES, voc_colormap(21))


def find_voc_root(root: str | Path) -> Path | None:
    """The VOC2012 folder under ``root`` (``root``, ``root/VOC2012`` or
    ``root/VOCdevkit/VOC2012``), or None."""
    root = Path(root)
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir() and (cand / "ImageSets" / "Segmentation").is_dir():
            return cand
    return None


def download_voc(root: str | Path) -> None:
    """Download and extract VOC2012 into ``root`` with torchvision (md5-checked).

    Offline, raises :class:`DataError` saying where to put the archive or its contents.
    """
    from torchvision.datasets import utils as tv_utils
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    info = DATASET_YEAR_DICT["2012"]
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        # Skips the download when root already holds the tar with the right md5.
        tv_utils.download_and_extract_archive(
            info["url"], str(root), filename=info["filename"], md5=info["md5"]
        )
    except Exception as exc:  # network errors come as URLError, OSError, RuntimeError...
        raise DataError(
            f"could not download VOC2012 into {root} ({type(exc).__name__}: {exc}); offline, "
            f"extract {info['filename']} so that {root}/VOCdevkit/VOC2012/JPEGImages exists, "
            f"or put the tar file itself in {root} (md5 {info['md5']} is checked)"
        ) from exc


def read_split_ids(list_file: Path) -> list[str]:
    """Image ids of a VOC list file (one id, or an "image mask" pair, per line)."""
    try:
        lines = list_file.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"{list_file}: cannot read split list ({exc})") from exc
    ids = []
    for line in lines:
        parts = line.split()
        if parts:
            ids.append(Path(parts[0]).stem)
    return ids


def build_voc(
    root: str | Path,
    split: str = "train",
    transform: Transform | None = None,
    download: bool = False,
    image_ext: str = ".jpg",
    meta: DatasetMeta | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> SegmentationDataset:
    """VOC2012 ``split`` (train, val, trainval or train_aug) under ``root``."""
    base = find_voc_root(root)
    if base is None and download:
        download_voc(root)
        base = find_voc_root(root)
    if base is None:
        raise DataError(
            f"{root}: no VOC2012 data found; expected {root}/VOCdevkit/VOC2012/"
            "{JPEGImages,SegmentationClass,ImageSets/Segmentation} (or root = the VOC2012 "
            "folder); use --download, or extract VOCtrainval_11-May-2012.tar there"
        )
    seg_sets = base / "ImageSets" / "Segmentation"
    list_file = seg_sets / f"{split}.txt"
    if not list_file.is_file():
        have = sorted(p.stem for p in seg_sets.glob("*.txt"))
        hint = (" (train_aug needs the SBD labels in SegmentationClassAug and the common "
                "train_aug.txt list in ImageSets/Segmentation)" if split == "train_aug" else "")
        raise DataError(f"{list_file}: split list not found; available splits: "
                        f"{', '.join(have) or 'none'}{hint}")
    mask_dir = base / ("SegmentationClassAug" if split == "train_aug" else "SegmentationClass")
    if not mask_dir.is_dir():
        raise DataError(f"{mask_dir}: label folder not found (needed for split {split!r})")
    ids = read_split_ids(list_file)
    if not ids:
        raise DataError(f"{list_file}: split list is empty")
    files = [(base / "JPEGImages" / f"{i}{image_ext}", mask_dir / f"{i}.png") for i in ids]
    return SegmentationDataset(
        files, meta or voc_meta(), transform, source=str(list_file), cache=cache,
        cache_dir=cache_dir,
    )
