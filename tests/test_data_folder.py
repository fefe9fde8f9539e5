"""Image/mask folders: RGB and index masks, classes.json, pairing, registry and root errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from fcnseg.data import build_dataset
from fcnseg.errors import DataError, FcnsegError, UnknownNameError

COLOURS = [(0, 0, 0), (250, 0, 0), (0, 250, 0)]


def _labels(k: int) -> np.ndarray:
    m = np.zeros((10, 14), np.int64)
    m[2:6, 3:9] = 1
    m[6:9, 8 + k % 3: 13] = 2
    m[0, :] = 255
    return m


def make_folder(root: Path, n: int = 3, rgb: bool = True, split: str | None = None) -> None:
    img_dir, mask_dir = root / "images", root / "masks"
    if split:
        img_dir, mask_dir = img_dir / split, mask_dir / split
    img_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    spec = {"classes": [{"name": n_, "color": list(c)} for n_, c in
                        zip(["bg", "red", "green"], COLOURS, strict=True)],
            "ignore_index": 255, "ignore_color": [255, 255, 255]}
    (root / "classes.json").write_text(json.dumps(spec))
    for k in range(n):
        Image.fromarray(np.full((10, 14, 3), 20 * k, np.uint8)).save(img_dir / f"im{k}.jpg")
        lab = _labels(k)
        if rgb:
            table = np.array(COLOURS + [(255, 255, 255)], np.uint8)
            Image.fromarray(table[np.where(lab == 255, 3, lab)]).save(mask_dir / f"im{k}.png")
        else:
            Image.fromarray(lab.astype(np.uint8)).save(mask_dir / f"im{k}.png")


@pytest.mark.parametrize("rgb", [True, False])
def test_folder_masks_mapped(tmp_path, rgb):
    make_folder(tmp_path, rgb=rgb)
    ds = build_dataset("folder", tmp_path, "all")
    assert ds.meta.class_names == ["bg", "red", "green"] and len(ds) == 3
    for k in range(3):
        assert ds.files[k][0].stem == f"im{k}"
        np.testing.assert_array_equal(ds.read_raw(k)[1], _labels(k))


def test_unknown_colour_names_file_and_colour(tmp_path):
    make_folder(tmp_path)
    arr = np.array(Image.open(tmp_path / "masks" / "im1.png"))
    arr[5, 2] = (1, 2, 3)
    Image.fromarray(arr).save(tmp_path / "masks" / "im1.png")
    with pytest.raises(DataError, match=r"im1\.png: colour \(1, 2, 3\)"):
        build_dataset("folder", tmp_path, "all").read_raw(1)


def test_splits_subfolders_and_list_files(tmp_path):
    make_folder(tmp_path / "a", split="train")
    assert len(build_dataset("folder", tmp_path / "a", "train")) == 3
    with pytest.raises(DataError, match="no split 'val'"):
        build_dataset("folder", tmp_path / "a", "val")
    make_folder(tmp_path / "b", n=4)
    (tmp_path / "b" / "val.txt").write_text("im3\nim1\n")
    ds = build_dataset("folder", tmp_path / "b", "val")
    assert [p.stem for p, _ in ds.files] == ["im3", "im1"]
    (tmp_path / "b" / "test.txt").write_text("\n")
    with pytest.raises(DataError, match=r"test\.txt: no images"):
        build_dataset("folder", tmp_path / "b", "test")


def test_unpaired_images_and_bad_class_file(tmp_path):
    make_folder(tmp_path, n=4)
    for k in (1, 3):
        (tmp_path / "masks" / f"im{k}.png").unlink()
    with pytest.raises(DataError, match=r"no mask for images im1, im3 \(2 of 4\)"):
        build_dataset("folder", tmp_path, "all")
    (tmp_path / "classes.json").write_text('{"classes": [{"name": "x"}]}')
    with pytest.raises(DataError, match=r"classes\.json: invalid class file"):
        build_dataset("folder", tmp_path, "all")
    (tmp_path / "classes.json").unlink()
    with pytest.raises(DataError, match=r"classes\.json: class file not found"):
        build_dataset("folder", tmp_path, "all")


def test_registry_and_root_errors(tmp_path):
    with pytest.raises(UnknownNameError, match="camvid, coco, folder, shapes, voc"):
        build_dataset("cityscapes", tmp_path, "train")
    with pytest.raises(DataError, match="does not exist"):
        build_dataset("folder", tmp_path / "nope", "all")
    make_folder(tmp_path)
    with pytest.raises(FcnsegError, match="no option colour"):
        build_dataset("folder", tmp_path, "all", colour=1)


def test_unreadable_directory_mocked(tmp_path):
    # Simulated: tests often run as root, where chmod 000 does not block reads.
    make_folder(tmp_path)
    with mock.patch("fcnseg.data.os.access", return_value=False):
        with pytest.raises(DataError, match=rf"{tmp_path}: data directory is not readable"):
            build_dataset("folder", tmp_path, "all")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod 000 directories anyway")
def test_unreadable_directory_chmod(tmp_path):
    make_folder(tmp_path)
    os.chmod(tmp_path, 0)
    try:
        with pytest.raises(DataError, match="not readable"):
            build_dataset("folder", tmp_path, "all")
    finally:
        os.chmod(tmp_path, 0o755)
