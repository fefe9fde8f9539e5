"""Segmentation metrics accumulated in a confusion matrix over all pixels of a split.

Averaging IoU per image or per batch would weight small images (and batches with few
pixels of a class) as much as large ones; the FCN paper and torchvision's reference
accumulate one ``C x C`` matrix over every labelled pixel and derive all figures from it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .data.meta import IGNORE_INDEX


class ConfusionMatrix:
    """A ``num_classes x num_classes`` count matrix: rows are the truth, columns the prediction.

    Pixels whose target is ``ignore_index`` are skipped. A prediction outside
    ``[0, num_classes)`` is a bug in the caller and raises :class:`ValueError`, as does a
    target that is neither a class index nor the ignore index (a label remapping bug).
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        # int64 on the CPU: a split of 1000 full-HD images has ~2e9 pixels, beyond int32.
        self.mat = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64)

    def reset(self) -> None:
        """Forget every pixel counted so far."""
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count the pixels of ``pred`` against ``target`` (integer tensors of the same shape)."""
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target "
                             f"{tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("update() takes class indices, not scores: argmax the logits first")
        n = self.num_classes
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
        valid = target != self.ignore_index
        t, p = target[valid], pred[valid]
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
            bad = t[(t < 0) | (t >= n)][0].item()
            raise ValueError(f"target label {bad} is neither in [0, {n}) nor the ignore index "
                             f"{self.ignore_index}: remap the labels of the data set")
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= n):
            bad = p[(p < 0) | (p >= n)][0].item()
            raise ValueError(f"predicted class {bad} outside [0, {n})")
        # One bincount over (truth, prediction) pairs: the torchvision reference's trick.
        counts = torch.bincount(t * n + p, minlength=n * n).reshape(n, n)
        self.mat += counts.to(self.mat.device, torch.int64)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add the counts of another matrix for the same classes."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.mat += other.mat.to(self.mat.device)

    def compute(self) -> dict:
        """Return the figures as plain Python numbers (NaN where undefined).

        Keys: ``pixel_accuracy``, ``mean_accuracy`` (mean class recall), ``miou``, ``fwiou``,
        ``per_class_iou`` and ``per_class_accuracy`` (lists, NaN for a class absent from both
        prediction and truth, resp. absent from the truth), ``mat`` (the int64 matrix).
        """
        h = self.mat.double()
        tp = torch.diag(h)
        truth = h.sum(1)  # pixels of each class in the ground truth
        predicted = h.sum(0)
        union = truth + predicted - tp
        total = h.sum()
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        # A class never seen in the truth has no recall; one absent from both truth and
        # prediction has no IoU. Both are left out of the means (nanmean), as in the
        # FCN paper's evaluation, instead of counting as 0 or 1.
        acc = torch.where(truth > 0, tp / truth.clamp(min=1), nan)
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        # Frequency-weighted IoU: classes present in the truth, weighted by their pixel share.
        seen = truth > 0
        fw = (truth[seen] / total * iou[seen]).sum() if total > 0 else nan
        return {
            "pixel_accuracy": _item(tp.sum() / total if total > 0 else nan),
            "mean_accuracy": _item(_nanmean(acc)),
            "miou": _item(_nanmean(iou)),
            "fwiou": _item(fw),
            "per_class_iou": [_item(v) for v in iou],
            "per_class_accuracy": [_item(v) for v in acc],
            "mat": self.mat.clone(),
        }

    def __repr__(self) -> str:
        r = self.compute()
        return (f"ConfusionMatrix(num_classes={self.num_classes}, pixels={int(self.mat.sum())}, "
                f"pixel_accuracy={r['pixel_accuracy']:.4f}, miou={r['miou']:.4f})")


def _nanmean(values: torch.Tensor) -> torch.Tensor:
    ok = ~torch.isnan(values)
    if not ok.any():
        return torch.tensor(float("nan"), dtype=torch.float64)
    return values[ok].mean()


def _item(value: torch.Tensor) -> float:
    v = float(value)
    return math.nan if math.isnan(v) else v


def metrics_report(result: dict, class_names: list[str], **info: Any) -> dict[str, Any]:
    """A JSON-ready dict: summary figures, per-class IoU/accuracy by name (NaN -> None)."""
    report: dict[str, Any] = {k: _clean(result[k]) for k in
                              ("pixel_accuracy", "mean_accuracy", "miou", "fwiou")}
    report["per_class_iou"] = {n: _clean(v) for n, v in zip(class_names, result["per_class_iou"],
                                                         strict=True)}
    report["per_class_accuracy"] = {n: _clean(v) for n, v in
                                    zip(class_names, result["per_class_accuracy"], strict=True)}
    report.update(info)
    return report


def format_table(report: dict[str, Any]) -> str:
    """Per-class IoU and accuracy, then the summary figures; '-' marks an absent class."""
    def f(v: float | None) -> str:
        return "     -" if v is None else f"{v:6.4f}"

    names = list(report["per_class_iou"])
    width = max([len(n) for n in names] + [22])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'acc':>6}"]
    for n in names:
        lines.append(f"{n:<{width}}  {f(report['per_class_iou'][n])}  "
                     f"{f(report['per_class_accuracy'][n])}")
    lines.append("-" * (width + 16))
    for key, label in (("pixel_accuracy", "pixel accuracy"), ("mean_accuracy", "mean accuracy"),
                       ("miou", "mean IoU"), ("fwiou", "frequency-weighted IoU")):
        lines.append(f"{label:<{width}}  {f(report[key])}")
    return "\n".join(lines)


def _clean(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else float(v)
