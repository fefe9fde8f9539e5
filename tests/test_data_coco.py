"""COCO annotations: polygons, RLE, a crowd region and an overlap rendered to semantic masks
(compared pixel for pixel with a reference drawn here), the cache, the split, categories,
every bad input in one line, and a run trained and evaluated on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import quick_config
from fcnseg.cli import main
from fcnseg.data import build_dataset
from fcnseg.errors import DataError

mask_api = pytest.importorskip("pycocotools.mask")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools, numpy 2
H, W = 40, 56


def _square(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def make_coco(root: Path, images: int = 6) -> Path:
    """``images`` images with: a large 'road' polygon, a small 'car' polygon on it (the
    overlap), a 'person' as compressed RLE, and a crowd region of people."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    spec = {"images": [], "annotations": [],
            "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "person"},
                           {"id": 7, "name": "road"}]}
    for i in range(images):
        name = f"frame_{i}.png"
        pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / name)
        spec["images"].append({"id": 100 + i, "file_name": name, "height": H, "width": W})
        person = np.zeros((H, W), np.uint8, order="F")
        person[2:10, 40 + i % 4:50] = 1
        rle = mask_api.encode(person)
        rle["counts"] = rle["counts"].decode()
        spec["annotations"] += [
            {"id": 10 * i + 1, "image_id": 100 + i, "category_id": 7, "iscrowd": 0,
             "area": 1200.0, "segmentation": [_square(0, 20, 56, 40)]},
            {"id": 10 * i + 2, "image_id": 100 + i, "category_id": 3, "iscrowd": 0,
             "area": 100.0, "segmentation": [_square(10 + i, 25, 20 + i, 35)]},
            {"id": 10 * i + 3, "image_id": 100 + i, "category_id": 1, "iscrowd": 0,
             "area": float(person.sum()), "segmentation": rle},
            {"id": 10 * i + 4, "image_id": 100 + i, "category_id": 1, "iscrowd": 1,
             "area": 50.0, "segmentation": [_square(0, 0, 8, 8)]},
        ]
    path = root / "annotations.json"
    path.write_text(json.dumps(spec))
    return path


def reference(i: int) -> np.ndarray:
    """The mask the rule gives, drawn without pycocotools: background 0, car 1, person 2,
    road 3 (categories by id: person 1, car 3, road 7 -> classes 1, 2, 3... by id order)."""
    classes = {"person": 1, "car": 2, "road": 3}
    img = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(img)
    draw.polygon(_square(0, 20, 56, 40), fill=classes["road"])  # largest first
    draw.polygon(_square(10 + i, 25, 20 + i, 35), fill=classes["car"])  # on the road
    out = np.asarray(img).copy()
    out[2:10, 40 + i % 4:50] = classes["person"]
    crowd = np.asarray(_poly_mask(_square(0, 0, 8, 8)))
    out[crowd & (out == 0)] = 255
    return out


def _poly_mask(poly):
    return mask_api.decode(mask_api.merge(mask_api.frPyObjects([poly], H, W))).astype(bool)


def test_masks_follow_the_rule_pixel_for_pixel(tmp_path):
    make_coco(tmp_path / "coco")
    ds = build_dataset("coco", tmp_path / "coco", "all", cache_dir=tmp_path / "cache")
    assert ds.meta.class_names == ["background", "person", "car", "road"]
    for i in range(len(ds)):
        image, mask = ds.read_raw(i)
        assert image.shape == (H, W, 3)
        rendered = np.asarray(mask)
        assert np.array_equal(rendered, _direct(i))  # the rule, exactly
        # and an independent rasteriser (Pillow) agrees away from polygon edges
        assert (rendered == reference(i)).mean() > 0.95
        assert (rendered == 255).any() and (rendered == 2).any()


def _direct(i: int) -> np.ndarray:
    """The rule with pycocotools' own rasteriser: the exact expected mask."""
    road, car = _poly_mask(_square(0, 20, 56, 40)), _poly_mask(_square(10 + i, 25, 20 + i, 35))
    crowd = _poly_mask(_square(0, 0, 8, 8))
    out = np.zeros((H, W), np.uint8)
    out[road] = 3
    out[car] = 2
    out[2:10, 40 + i % 4:50] = 1
    out[crowd & (out == 0)] = 255
    return out


def test_the_cache_is_keyed_by_the_json_and_reused(tmp_path, monkeypatch):
    import fcnseg.data.coco as coco

    make_coco(tmp_path / "coco")
    calls = []
    real = coco.render
    monkeypatch.setattr(coco, "render", lambda *a: calls.append(1) or real(*a))
    for _ in range(2):  # a second run reads what the first rendered
        ds = build_dataset("coco", tmp_path / "coco", "all", cache_dir=tmp_path / "cache")
        [ds.read_raw(i) for i in range(len(ds))]
    assert len(calls) == 6
    kept = build_dataset("coco", tmp_path / "coco", "all", cache_dir=tmp_path / "cache",
                         categories="car")  # other categories: another cache folder
    assert kept.meta.class_names == ["background", "car"]
    assert set(np.unique(kept.read_raw(0)[1])) <= {0, 1, 255}
    assert len(calls) == 7 and len(list((tmp_path / "cache").iterdir())) == 2


def test_a_json_without_splits_is_split_by_a_seeded_ratio(tmp_path):
    make_coco(tmp_path / "coco", images=10)
    names = {s: [f[0].name for f in build_dataset("coco", tmp_path / "coco", s,
                                                    cache_dir=tmp_path / "c").files]
             for s in ("train", "val")}
    assert len(names["val"]) == 2 and len(names["train"]) == 8
    assert not set(names["val"]) & set(names["train"])


@pytest.mark.parametrize("edit,needle", [
    (lambda s: s["annotations"].append({**s["annotations"][0], "id": 999, "image_id": 5}),
     "annotation 999 refers to image id 5"),
    (lambda s: s["annotations"].append({**s["annotations"][0], "id": 998, "category_id": 42}),
     "annotation 998 has category id 42"),
    (lambda s: s["annotations"][0].update(segmentation=[_square(0, 0, 90, 10)]),
     "annotation 1 has a polygon outside its image"),
    (lambda s: s["images"][0].update(file_name="missing.png"), "missing.png: image 100"),
])
def test_bad_annotations_are_one_line_naming_them(tmp_path, capsys, edit, needle):
    path = make_coco(tmp_path / "coco")
    spec = json.loads(path.read_text())
    edit(spec)
    path.write_text(json.dumps(spec))
    with pytest.raises(DataError, match=needle):
        ds = build_dataset("coco", tmp_path / "coco", "all", cache_dir=tmp_path / "c")
        [ds.read_raw(i) for i in range(len(ds))]
    assert main(["train", "--dataset", "coco", "--data-dir", str(tmp_path / "coco"),
                 "--split", "all", "--out", str(tmp_path / "run"), "--no-pretrained",
                 "--backbone", "tiny", "--epochs", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_a_run_trains_and_evaluates_on_coco(tmp_path):
    from fcnseg.training.train import fit

    make_coco(tmp_path / "coco", images=8)
    config = quick_config(tmp_path / "coco", tmp_path / "run", dataset="coco", epochs=1,
                          data_options={"cache_dir": str(tmp_path / "cache")},
                          crop=[32, 32], max_steps=1)
    result = fit(config)
    assert result.step == 1 and (tmp_path / "run" / "last.pt").is_file()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--dataset",
                 "coco", "--data-dir", str(tmp_path / "coco"), "--split", "val",
                 "--data-option", f"cache_dir={tmp_path / 'cache'}"]) == 0


def make_panoptic(root: Path, images: int = 3) -> Path:
    """COCO's panoptic layout: per image a PNG of segment ids (R + 256 G + 256^2 B) with a
    road, a car on it, a crowd of people and void pixels (id 0)."""
    (root / "train").mkdir(parents=True)
    (root / "annotations" / "panoptic_train").mkdir(parents=True)
    spec = {"images": [], "annotations": [],
            "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "person"},
                           {"id": 7, "name": "road"}]}
    for i in range(images):
        Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)).save(root / "train" / f"{i}.jpg")
        ids = np.zeros((H, W), np.int64)
        ids[20:] = 5  # road
        ids[25:35, 10 + i:20 + i] = 300  # a car on the road (G = 1)
        ids[0:8, 0:8] = 2 * 65536 + 7  # a crowd of people (B = 2)
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb).save(root / "annotations" / "panoptic_train" / f"{i}.png")
        spec["images"].append({"id": i, "file_name": f"{i}.jpg", "height": H, "width": W})
        spec["annotations"].append({"image_id": i, "file_name": f"{i}.png", "segments_info": [
            {"id": 5, "category_id": 7, "iscrowd": 0},
            {"id": 300, "category_id": 3, "iscrowd": 0},
            {"id": 2 * 65536 + 7, "category_id": 1, "iscrowd": 1}]})
    path = root / "annotations" / "panoptic_train.json"
    path.write_text(json.dumps(spec))
    return path


def test_panoptic_segments_become_classes_and_void_is_ignored(tmp_path):
    make_panoptic(tmp_path / "pan")
    ds = build_dataset("coco", tmp_path / "pan", "train", cache_dir=tmp_path / "cache")
    assert ds.meta.class_names == ["background", "person", "car", "road"]
    for i in range(len(ds)):
        expected = np.full((H, W), 255, np.uint8)  # void
        expected[20:] = 3
        expected[25:35, 10 + i:20 + i] = 2
        expected[0:8, 0:8] = 1  # a crowd segment is its category
        assert np.array_equal(np.asarray(ds.read_raw(i)[1]), expected)
    assert not (tmp_path / "cache").exists()  # read from the PNGs, nothing rendered
    roads = build_dataset("coco", tmp_path / "pan", "train", categories="road")
    assert set(np.unique(roads.read_raw(0)[1])) == {0, 1, 255}


@pytest.mark.parametrize("edit,needle", [
    (lambda s: s["annotations"][0]["segments_info"].pop(), "segment id 131079 is not in"),
    (lambda s: s["annotations"][0]["segments_info"][0].update(category_id=9),
     "segment 5 of image 0 has category id 9"),
    (lambda s: s["annotations"][0].update(file_name="gone.png"), "gone.png: file not found"),
    (lambda s: s["annotations"].pop(), "image 2 has 0 annotations; a panoptic file needs one"),
    (lambda s: s["annotations"][1].pop("file_name"), "image 1 has 1 annotations; a panoptic"),
    (lambda s: s["images"][1].update(height=H + 1), "is not that image's segment PNG"),
])
def test_bad_panoptic_annotations_are_one_line(tmp_path, capsys, edit, needle):
    path = make_panoptic(tmp_path / "pan")
    spec = json.loads(path.read_text())
    edit(spec)
    path.write_text(json.dumps(spec))
    assert main(["train", "--dataset", "coco", "--data-dir", str(tmp_path / "pan"),
                 "--out", str(tmp_path / "run"), "--no-pretrained", "--backbone", "tiny",
                 "--epochs", "1", "--device", "cpu", "--val-split", "train",
                 "--crop", "32", "32", "--batch-size", "2", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1
