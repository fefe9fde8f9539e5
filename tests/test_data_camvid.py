"""CamVid (SegNet layout): real images from ../shared/data/camvid, void -> 255, bad layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnseg.data import build_dataset
from fcnseg.errors import DataError

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"
needs_camvid = pytest.mark.skipif(
    not (CAMVID / "val").is_dir(), reason=f"real CamVid not found at {CAMVID}"
)


@needs_camvid
def test_real_camvid_void_becomes_ignore():
    ds = build_dataset("camvid", CAMVID, "val", cache=False)
    assert len(ds) == 101 and ds.meta.num_classes == 11
    assert ds.meta.class_names[3] == "road" and ds.meta.palette[3] == (128, 64, 128)
    saw_void = False
    for i in (0, 40, 100):
        img, mask = ds.read_raw(i)
        assert img.shape == (360, 480, 3) and img.dtype == np.uint8
        assert mask.shape == (360, 480) and mask.dtype == np.int64
        raw = np.asarray(Image.open(ds.files[i][1])).astype(np.int64)
        assert raw.max() <= 11
        np.testing.assert_array_equal(mask, np.where(raw == 11, 255, raw))
        saw_void |= bool((raw == 11).any())
        assert set(np.unique(mask)) <= set(range(11)) | {255}
    assert saw_void, "expected some void pixels in these CamVid labels"
    x, y = ds[0]
    assert tuple(x.shape) == (3, 360, 480) and tuple(y.shape) == (360, 480)


@needs_camvid
def test_real_camvid_train_split_pairs_names():
    ds = build_dataset("camvid", CAMVID, "train", cache=False)
    assert len(ds) == 367
    assert all(i.name == m.name and m.parent.name == "trainannot" for i, m in ds.files)


def _fake_camvid(root: Path, n: int = 3) -> None:
    (root / "val").mkdir(parents=True)
    (root / "valannot").mkdir()
    for k in range(n):
        Image.fromarray(np.full((12, 16, 3), k * 40, np.uint8)).save(root / "val" / f"f{k}.png")
        Image.fromarray(np.full((12, 16), k * 5, np.uint8)).save(root / "valannot" / f"f{k}.png")


def test_missing_annotation_and_split(tmp_path):
    _fake_camvid(tmp_path)
    ds = build_dataset("camvid", tmp_path, "val")
    assert ds.read_raw(2)[1].max() == 10
    with pytest.raises(DataError, match=r"train.*splits here: val"):
        build_dataset("camvid", tmp_path, "train")
    (tmp_path / "valannot" / "f1.png").unlink()
    with pytest.raises(DataError, match=r"valannot/f1\.png"):
        build_dataset("camvid", tmp_path, "val")


def test_camvid_label_out_of_range_and_empty(tmp_path):
    _fake_camvid(tmp_path)
    Image.fromarray(np.full((12, 16), 12, np.uint8)).save(tmp_path / "valannot" / "f0.png")
    with pytest.raises(DataError, match=r"f0\.png: label values 12 out of range"):
        build_dataset("camvid", tmp_path, "val").read_raw(0)
    shutil.rmtree(tmp_path / "val")
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match=r"val: CamVid split folder has no images"):
        build_dataset("camvid", tmp_path, "val")


def test_holdout_splits_train_and_val_by_drive():
    if not (CAMVID / "train").is_dir():
        pytest.skip(f"shared CamVid not found at {CAMVID}")
    from fcnseg.commands.options import parse_data_options
    from fcnseg.data.camvid import drive_of

    seen = set()
    for drive in ("0006R0", "0001TP", "0016E5"):
        options = parse_data_options([f"holdout={drive}"])
        assert options == {"holdout": drive}  # '0016E5' is a name, not 1.6e6
        train = build_dataset("camvid", CAMVID, "train", **options)
        val = build_dataset("camvid", CAMVID, "val", **options)
        assert {drive_of(img) for img, _ in val.files} == {drive}
        assert drive not in {drive_of(img) for img, _ in train.files}
        assert len(train) + len(val) == 367 + 101  # SegNet's train + val, each frame once
        seen |= {img.name for img, _ in val.files}
    assert len(seen) == 367 + 101  # the three folds validate on every frame once
    with pytest.raises(DataError, match="no CamVid drive 'Seq05VD'.*0001TP, 0006R0, 0016E5"):
        build_dataset("camvid", CAMVID, "val", holdout="Seq05VD")
    everything = build_dataset("camvid", CAMVID, "trainval")  # the final model's data
    assert {img.name for img, _ in everything.files} == seen
