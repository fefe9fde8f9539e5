"""Joint transforms: masks keep valid ids, image and mask stay aligned, padding is ignored."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from fcnseg.data import DatasetMeta, eval_transform, train_transform

H, W, BLOCK = 48, 72, 12


def _position_pair() -> tuple[np.ndarray, np.ndarray, DatasetMeta]:
    """Image whose red/green encode x/y, mask whose label encodes the 12x12 block."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 3, yy * 4, np.full_like(xx, 128)], -1).astype(np.uint8)
    mask = (yy // BLOCK) * (W // BLOCK) + xx // BLOCK
    n = int(mask.max()) + 1
    meta = DatasetMeta("pos", [f"b{i}" for i in range(n)], [(i, i, i) for i in range(n)],
                       mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return img, mask.astype(np.int64), meta


@pytest.mark.parametrize("crop", [(40, 56), (96, 120), None])
def test_image_and_mask_stay_aligned(crop):
    img, mask, meta = _position_pair()
    tf = train_transform(meta, crop=crop, scale=(0.5, 2.0), flip=True)
    random.seed(0)
    flips = 0
    for _ in range(25):
        x, y = tf(img, mask)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == y.shape
        if crop is not None:
            assert tuple(y.shape) == crop
        valid = y != 255
        assert valid.sum() > 0
        assert set(y.unique().tolist()) <= set(range(meta.num_classes)) | {255}
        px = x[0][valid] * 255 / 3  # position recovered from the image
        py = x[1][valid] * 255 / 4
        lab = y[valid]
        bx, by = (lab % (W // BLOCK)) * BLOCK, (lab // (W // BLOCK)) * BLOCK
        tol = 2.5  # bilinear / antialias smoothing near block and image borders
        assert ((px >= bx - tol) & (px <= bx + BLOCK - 1 + tol)).all()
        assert ((py >= by - tol) & (py <= by + BLOCK - 1 + tol)).all()
        # Padding (ignored) shows the mean colour, i.e. zero after normalisation.
        assert (x[:, ~valid] == 0).all()
        flips += int(x[0, valid][0] > x[0, valid][-1])  # x decreasing: flipped
    assert 0 < flips < 25, "flip should happen sometimes, not always"


def test_small_image_is_padded_with_ignore_not_dropped():
    img, mask, meta = _position_pair()
    tf = train_transform(meta, crop=(100, 110), scale=None, flip=False)
    x, y = tf(img, mask)
    assert tuple(y.shape) == (100, 110)
    assert int((y != 255).sum()) == H * W  # every labelled pixel kept, once
    assert sorted(y[y != 255].unique().tolist()) == sorted(np.unique(mask).tolist())


def test_eval_transform_is_normalisation_only():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (30, 41))
    meta = DatasetMeta("m", ["a", "b", "c"], [(0, 0, 0)] * 3)
    x, y = eval_transform(meta)(img, mask)
    expect = (img / 255.0 - np.array(meta.mean)) / np.array(meta.std)
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), expect, atol=1e-5)
    assert x.is_contiguous() and y.dtype == torch.int64
    np.testing.assert_array_equal(y.numpy(), mask)


def test_color_jitter_changes_image_only_and_validates_args():
    img, mask, meta = _position_pair()
    random.seed(1)
    x0, y0 = train_transform(meta, crop=None, scale=None, flip=False)(img, mask)
    x1, y1 = train_transform(meta, crop=None, scale=None, flip=False, color_jitter=0.4)(img, mask)
    assert torch.equal(y0, y1) and not torch.allclose(x0, x1)
    assert x1.min() >= 0 and x1.max() <= 1  # clamped to the valid colour range
    with pytest.raises(ValueError):
        train_transform(meta, scale=(2.0, 1.0))
    with pytest.raises(ValueError, match="sizes differ"):
        train_transform(meta)(img, mask[:-1])


@pytest.mark.parametrize("crop", [(16, 24), (96, 120)])
def test_the_crop_holds_its_focus(crop):
    # class-balanced sampling crops around a pixel of the class it drew: at every scale and
    # flip, the 3 x 3 block around the focus must be in the crop (smaller crop than image,
    # and larger)
    img, _, meta = _position_pair()
    mask = np.zeros((H, W), np.int64)
    mask[40:43, 60:63] = 1
    tf = train_transform(meta, crop=crop, scale=(0.5, 2.0), flip=True)
    unfocused = 0
    for seed in range(200):
        random.seed(seed)
        _, m = tf(img, mask, focus=(41, 61))
        assert (m == 1).any(), seed
        random.seed(seed)
        unfocused += bool((tf(img, mask)[1] == 1).any())
    if crop[0] < H:  # without a focus, a small crop often leaves the block out
        assert unfocused < 150
