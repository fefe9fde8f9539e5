"""The synthetic shapes data set: determinism, masks that follow the drawn shapes, reuse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fcnseg.data import build_dataset, render_sample
from fcnseg.data.shapes import RADIUS, SHAPES_CLASSES, generate_shapes
from fcnseg.errors import DataError

DISK, SQUARE, TRIANGLE, RING = (SHAPES_CLASSES.index(n) for n in
                                ("disk", "square", "triangle", "ring"))
SMALL = {"size": 6, "image_size": 64, "val_size": 2}


def test_render_is_deterministic_per_seed():
    a = render_sample(np.random.default_rng([3, 1, 0]), 64)
    b = render_sample(np.random.default_rng([3, 1, 0]), 64)
    c = render_sample(np.random.default_rng([4, 1, 0]), 64)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_mask_follows_drawn_shapes_and_occlusion():
    classes_seen = set()
    for i in range(20):
        img, mask, shapes = render_sample(np.random.default_rng([0, 9, i]), 96)
        assert mask.dtype == np.uint8 and img.shape == (96, 96, 3)
        assert set(np.unique(mask)) <= set(range(len(SHAPES_CLASSES)))
        assert 1 <= len(shapes) <= 3  # 1-3 shapes per image (the first always fits)
        # Pixel counts per class == what stayed visible of each shape after occlusion.
        for cls in range(1, len(SHAPES_CLASSES)):
            visible = sum(s["visible"] for s in shapes if s["cls"] == cls)
            assert int((mask == cls).sum()) == visible
        yy, xx = np.mgrid[0:96, 0:96] + 0.5
        for k, s in enumerate(shapes):
            classes_seen.add(s["cls"])
            assert s["r"] >= RADIUS[0] * 96 / 128 - 1e-6  # shapes are large enough to learn
            assert s["visible"] >= 0.7 * s["area"] > 0  # never mostly hidden
            d = np.hypot(yy - s["cy"], xx - s["cx"])
            later = np.zeros_like(mask, dtype=bool)
            for t in shapes[k + 1:]:  # a generous cover of every later shape
                later |= np.hypot(yy - t["cy"], xx - t["cx"]) <= 1.25 * t["r"] + 1
            # Independent geometry: no pixel of this shape's class lies outside its radius
            # unless another shape of the same class is there, and the centre is labelled
            # as the shape (or, for a ring, shows its hole) when nothing covers it.
            same = [t for t in shapes if t["cls"] == s["cls"] and t is not s]
            if not same:
                outside = (mask == s["cls"]) & (d > 1.25 * s["r"] + 1)
                assert not outside.any()
            cy, cx = int(s["cy"]), int(s["cx"])
            if not later[cy, cx]:
                if s["cls"] == RING:
                    assert mask[cy, cx] != RING or same
                    ring = (d >= s["r"] * s["inner"] + 1) & (d <= s["r"] - 1) & ~later
                    assert (mask[ring] == RING).all()
                else:
                    assert mask[cy, cx] == s["cls"]
                    if s["cls"] == DISK:
                        assert (mask[(d <= s["r"] - 1) & ~later] == DISK).all()
    assert classes_seen == {DISK, SQUARE, TRIANGLE, RING}


def test_colour_does_not_identify_class():
    colours = {c: [] for c in (DISK, SQUARE, TRIANGLE, RING)}
    for i in range(30):
        img, mask, shapes = render_sample(np.random.default_rng([1, 1, i]), 64)
        for c in colours:
            if (mask == c).any():
                colours[c].append(img[mask == c].mean(axis=0))
    for c, vals in colours.items():
        assert np.std(np.array(vals), axis=0).min() > 30, f"class {c} colours too uniform"


def test_generated_files_are_byte_identical_and_reused(tmp_path):
    a = generate_shapes(tmp_path / "a", seed=5, **SMALL)
    b = generate_shapes(tmp_path / "b", seed=5, **SMALL)
    c = generate_shapes(tmp_path / "c", seed=6, **SMALL)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 * 8 + 4  # images + masks, 2 lists, classes.json, shapes.json
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    img = "JPEGImages/train_00000.png"
    assert (a / img).read_bytes() != (c / img).read_bytes()
    # Reused: nothing rewritten on the second call.
    mtime = (a / img).stat().st_mtime_ns
    generate_shapes(tmp_path / "a", seed=5, **SMALL)
    assert (a / img).stat().st_mtime_ns == mtime
    # Other parameters: regenerated in place, no temp folders left behind.
    generate_shapes(tmp_path / "a", seed=5, size=3, image_size=48, val_size=1)
    assert json.loads((a / "shapes.json").read_text())["image_size"] == 48
    assert len(list((a / "JPEGImages").glob("*.png"))) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_incomplete_or_foreign_directory_is_not_reused(tmp_path):
    root = tmp_path / "d"
    generate_shapes(root, **SMALL)
    (root / "shapes.json").unlink()  # as if interrupted before completion
    with pytest.raises(DataError, match="not empty and holds no shapes"):
        generate_shapes(root, **SMALL)


def test_build_dataset_shapes(tmp_path):
    train = build_dataset("shapes", tmp_path / "s", "train", **SMALL)
    val = build_dataset("shapes", tmp_path / "s", "val", **SMALL)
    assert (len(train), len(val)) == (6, 2)
    assert train.meta.class_names == SHAPES_CLASSES and train.meta.num_classes == 5
    img, mask = train.read_raw(0)
    assert img.shape == (64, 64, 3) and mask.max() < 5
    ref = render_sample(np.random.default_rng([0, 1, 0]), 64)
    np.testing.assert_array_equal(img, ref[0])
    np.testing.assert_array_equal(mask, ref[1])
    with pytest.raises(DataError, match="splits train and val"):
        build_dataset("shapes", tmp_path / "s", "test", **SMALL)
