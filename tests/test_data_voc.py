"""VOC layout: palette indices, the 255 boundary, splits, train_aug, caching and bad input."""

from __future__ import annotations

import urllib.error
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.data import build_dataset, voc_colormap
from fcnseg.data.io import write_mask
from fcnseg.errors import DataError

IDS = ["2007_000001", "2007_000002", "2007_000003", "2007_000004"]


def _mask(i: int, h: int = 24, w: int = 32) -> np.ndarray:
    m = np.zeros((h, w), np.int64)
    m[4:18, 6:20] = 1 + 5 * i  # classes 1, 6, 11, 16
    m[3, 5:21] = m[18, 5:21] = 255  # a boundary, as VOC draws around objects
    m[10:14, 24:30] = 20
    return m


def make_voc(root: Path, aug: bool = True) -> Path:
    base = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(IDS):
        img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(img).save(base / "JPEGImages" / f"{name}.jpg", quality=95)
        write_mask(base / "SegmentationClass" / f"{name}.png", _mask(i), voc_colormap())
    sets = base / "ImageSets" / "Segmentation"
    (sets / "train.txt").write_text("\n".join(IDS[:2]) + "\n")
    (sets / "val.txt").write_text("\n".join(IDS[2:]) + "\n")
    (sets / "trainval.txt").write_text("\n".join(IDS) + "\n")
    if aug:
        (base / "SegmentationClassAug").mkdir()
        for i, name in enumerate(IDS[:3]):  # SBD labels: plain 8-bit grayscale
            Image.fromarray(_mask(3 - i).astype(np.uint8)).save(
                base / "SegmentationClassAug" / f"{name}.png")
        (sets / "train_aug.txt").write_text(
            "".join(f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n" for n in IDS[:3]))
    return base


@pytest.fixture
def voc(tmp_path):
    make_voc(tmp_path)
    return tmp_path


def test_indices_and_boundary_kept(voc):
    ds = build_dataset("voc", voc, "trainval")
    assert len(ds) == 4 and ds.meta.num_classes == 21 and ds.meta.ignore_index == 255
    for i in range(4):
        img, mask = ds.read_raw(i)
        assert img.dtype == np.uint8 and img.shape == (24, 32, 3)
        assert mask.dtype == np.int64
        # Exactly the written indices: the boundary stays 255 (not background via RGB lookup).
        np.testing.assert_array_equal(mask, _mask(i))
    x, y = ds[0]
    assert x.dtype.is_floating_point and tuple(x.shape) == (3, 24, 32)
    assert y.dtype == torch.int64
    assert set(y.unique().tolist()) == {0, 1, 20, 255}


def test_splits_and_root_forms(voc):
    base = voc / "VOCdevkit" / "VOC2012"
    for root in (voc, voc / "VOCdevkit", base):
        train = build_dataset("voc", root, "train")
        val = build_dataset("voc", root, "val")
        assert [p.stem for p, _ in train.files] == IDS[:2]
        assert [p.stem for p, _ in val.files] == IDS[2:]
    with pytest.raises(DataError, match="VOCdevkit/VOC2012"):
        build_dataset("voc", base / "JPEGImages", "train")


def test_train_aug_uses_sbd_labels(voc):
    ds = build_dataset("voc", voc, "train_aug")
    assert len(ds) == 3
    assert ds.files[0][1].parent.name == "SegmentationClassAug"
    np.testing.assert_array_equal(ds.read_raw(0)[1], _mask(3))


def test_missing_and_empty_split(voc):
    base = voc / "VOCdevkit" / "VOC2012"
    with pytest.raises(DataError, match=r"test\.txt.*train, train_aug, trainval, val"):
        build_dataset("voc", voc, "test")
    (base / "ImageSets/Segmentation/empty.txt").write_text("\n")
    with pytest.raises(DataError, match=r"empty\.txt.*empty"):
        build_dataset("voc", voc, "empty")
    (base / "ImageSets/Segmentation/train_aug.txt").unlink()
    with pytest.raises(DataError, match="SegmentationClassAug"):
        build_dataset("voc", voc, "train_aug")


def test_bad_labels_sizes_and_files(voc):
    base = voc / "VOCdevkit" / "VOC2012"
    bad = _mask(0)
    bad[0, 0], bad[0, 1] = 30, 21
    write_mask(base / "SegmentationClass" / f"{IDS[0]}.png", bad, voc_colormap())
    Image.fromarray(np.zeros((20, 32, 3), np.uint8)).save(base / "JPEGImages" / f"{IDS[1]}.jpg")
    ds = build_dataset("voc", voc, "train")
    with pytest.raises(DataError, match=rf"{IDS[0]}\.png: label values 21, 30 out of range"):
        ds.read_raw(0)
    with pytest.raises(DataError, match=rf"{IDS[1]}\.png.*{IDS[1]}\.jpg"):
        ds.read_raw(1)
    (base / "JPEGImages" / f"{IDS[2]}.jpg").write_bytes(b"\xff\xd8\xff broken jpeg")
    with pytest.raises(DataError, match=rf"{IDS[2]}\.jpg"):
        build_dataset("voc", voc, "val")[0]
    (base / "SegmentationClass" / f"{IDS[3]}.png").unlink()
    with pytest.raises(DataError, match=rf"{IDS[3]}\.png.*not found"):
        build_dataset("voc", voc, "val")


def test_disk_cache_and_preload(voc, tmp_path):
    cache = tmp_path / "cache"
    ds = build_dataset("voc", voc, "trainval", cache_dir=cache).preload(2)
    assert len(list(cache.glob("*.npy"))) == 8
    ds2 = build_dataset("voc", voc, "trainval", cache_dir=cache, cache=False)
    with mock.patch("fcnseg.data.base.read_image", side_effect=AssertionError("decoded")):
        for i in range(4):  # served from the .npy files, no decoding
            np.testing.assert_array_equal(ds2.read_raw(i)[1], ds.read_raw(i)[1])
            np.testing.assert_array_equal(ds2.read_raw(i)[0], ds.read_raw(i)[0])
    # An edited mask has a new mtime/size: decoded again, not served stale.
    m = _mask(0)
    m[:] = 7
    write_mask(voc / "VOCdevkit/VOC2012/SegmentationClass" / f"{IDS[0]}.png", m, voc_colormap())
    assert (build_dataset("voc", voc, "trainval", cache_dir=cache).read_raw(0)[1] == 7).all()


def test_preloaded_dataset_through_dataloader_workers(voc):
    ds = build_dataset("voc", voc, "trainval").preload(2)
    assert all(entry is not None for entry in ds._cache)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)
    masks = torch.cat([y for _, y in loader])
    np.testing.assert_array_equal(masks.numpy(), np.stack([_mask(i) for i in range(4)]))


def test_download_offline_gives_clear_error(tmp_path):
    err = urllib.error.URLError("no network")
    target = "torchvision.datasets.utils.download_and_extract_archive"
    with mock.patch(target, side_effect=err) as dl:
        with pytest.raises(DataError, match=r"VOCtrainval_11-May-2012\.tar.*md5"):
            build_dataset("voc", tmp_path / "voc", "train", download=True)
    assert dl.call_args.kwargs["md5"] == "6cd6e144f989b92b3379bac3b3de84fd"
