"""ConfusionMatrix against small confusion matrices worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from fcnseg.distributed import all_reduce_sum
from fcnseg.metrics import ConfusionMatrix


def test_hand_computed_three_classes_with_ignore():
    # truth row by row, 255 = ignored (its prediction must not count anywhere)
    target = torch.tensor([[0, 0, 0, 1], [1, 1, 2, 255]])
    pred = torch.tensor([[0, 0, 1, 1], [1, 2, 2, 0]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # rows = truth: class 0 -> (2 as 0, 1 as 1); class 1 -> (2 as 1, 1 as 2); class 2 -> (1 as 2)
    assert cm.mat.tolist() == [[2, 1, 0], [0, 2, 1], [0, 0, 1]]
    r = cm.compute()
    assert r["pixel_accuracy"] == pytest.approx(5 / 7)
    # recalls 2/3, 2/3, 1
    assert r["per_class_accuracy"] == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert r["mean_accuracy"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    # IoU = tp / (truth + pred - tp): 2/(3+2-2), 2/(3+3-2), 1/(1+2-1)
    iou = [2 / 3, 2 / 4, 1 / 2]
    assert r["per_class_iou"] == pytest.approx(iou)
    assert r["miou"] == pytest.approx(sum(iou) / 3)
    # frequency weights 3/7, 3/7, 1/7
    assert r["fwiou"] == pytest.approx(3 / 7 * iou[0] + 3 / 7 * iou[1] + 1 / 7 * iou[2])
    assert r["mat"].dtype == torch.int64


def test_absent_class_is_nan_and_left_out_of_means():
    cm = ConfusionMatrix(4, ignore_index=255)
    # class 3 never appears in truth nor prediction; class 2 only predicted (false positive)
    cm.update(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 1, 1]))
    r = cm.compute()
    iou = r["per_class_iou"]
    assert math.isnan(iou[3])
    assert iou[:3] == pytest.approx([1.0, 2 / 3, 0.0])
    assert r["miou"] == pytest.approx((1 + 2 / 3 + 0) / 3)  # 3 classes, not 4
    acc = r["per_class_accuracy"]
    # class 2 absent from the truth: no recall, excluded from the mean accuracy
    assert math.isnan(acc[2]) and math.isnan(acc[3])
    assert r["mean_accuracy"] == pytest.approx((1 + 2 / 3) / 2)


def test_accumulates_pixels_not_per_image_averages():
    cm = ConfusionMatrix(2)
    # image A: 1 pixel, wrong; image B: 9 pixels, right. Per-image mean accuracy would be 0.5.
    cm.update(torch.tensor([1]), torch.tensor([0]))
    cm.update(torch.zeros(3, 3, dtype=torch.long), torch.zeros(3, 3, dtype=torch.long))
    r = cm.compute()
    assert r["pixel_accuracy"] == pytest.approx(9 / 10)
    assert cm.mat.tolist() == [[9, 1], [0, 0]]
    cm.reset()
    assert int(cm.mat.sum()) == 0
    assert math.isnan(cm.compute()["miou"])


def test_custom_ignore_index_and_merge():
    a, b = ConfusionMatrix(2, ignore_index=-1), ConfusionMatrix(2, ignore_index=-1)
    a.update(torch.tensor([0, 1, 1]), torch.tensor([0, -1, 1]))
    b.update(torch.tensor([0]), torch.tensor([1]))
    a.merge(b)
    assert a.mat.tolist() == [[1, 0], [1, 1]]


def test_out_of_range_values_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="predicted class 3"):
        cm.update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="predicted class -1"):
        cm.update(torch.tensor([-1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="target label 7"):
        cm.update(torch.tensor([0]), torch.tensor([7]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="argmax"):
        cm.update(torch.rand(2), torch.tensor([0, 1]))
    # a prediction under an ignored pixel may be anything valid, nothing was counted
    assert int(cm.mat.sum()) == 0


def test_all_reduce_is_noop_without_distributed():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    assert all_reduce_sum(cm.mat) is cm.mat  # no process group: the counts as they are
    assert cm.mat.tolist() == [[1, 1], [0, 0]]
