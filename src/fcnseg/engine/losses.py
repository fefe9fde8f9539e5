"""Per-pixel training losses: cross entropy (optionally boundary-weighted) + Lovász-softmax.

Cross entropy is the paper's and the chapter's loss. Lovász-softmax (Berman, Rannen Triki &
Blaschko, CVPR 2018) is a convex surrogate of each class's Jaccard loss (1 - IoU), the very
quantity that mIoU averages; added to cross entropy it spends the gradient on the pixels
that cost IoU (shape boundaries, small classes) rather than on the easy bulk of background.
Weighting the cross entropy of the pixels near a label boundary aims at the same errors.
Measured on the demo's synthetic data after the same 8 epochs (benchmarks/RESULTS.md): mIoU
0.841 with cross entropy, 0.860 with + Lovász-softmax, 0.878 with boundary weight 4 as well
(and weight decay 0.05, which alone added 0.004).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .config import CHOICES

LOSSES = CHOICES["loss"]
# --boundary-weight applies to the pixels this close to a label boundary: from scratch, an
# FCN-8s gets most pixels right early and keeps ~80 % of its errors within 2 px of a shape's
# outline, where its stride-8 scores must be interpolated most precisely.
BOUNDARY_RADIUS = 2


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor,
                      weight: torch.Tensor | None = None, ignore_index: int = 255,
                      pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel cross entropy over the class dimension of N x C x H x W logits, in fp32.

    Equal to ``F.cross_entropy(..., reduction="mean")`` except that a batch whose pixels are
    all ignored gives 0 instead of 0/0 = NaN (which would stop the run as a diverged loss).
    ``pixel_weight`` (N x H x W) weights pixels on top of the class ``weight``; the mean is
    then taken over the weights, as ``F.cross_entropy`` does with class weights.
    """
    logits = logits.float()
    per_pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index,
                                reduction="none")
    valid = target != ignore_index
    if weight is None:
        denom = valid.to(per_pixel.dtype)
    else:
        safe = torch.where(valid, target, torch.zeros_like(target))
        denom = weight[safe] * valid
    if pixel_weight is not None:
        per_pixel, denom = per_pixel * pixel_weight, denom * pixel_weight
    return per_pixel.sum() / denom.sum().clamp_min(1e-12).to(per_pixel.dtype)


def boundary_mask(target: torch.Tensor, radius: int = BOUNDARY_RADIUS) -> torch.Tensor:
    """Pixels of N x H x W labels with a different label (the ignore label included) at most
    ``radius`` pixels away, horizontally, vertically or diagonally."""
    labels = target[:, None].float()
    size = 2 * radius + 1
    high = F.max_pool2d(labels, size, stride=1, padding=radius)
    low = -F.max_pool2d(-labels, size, stride=1, padding=radius)
    return (high != low)[:, 0]


# Errors are binned into 2^12 levels to order them without sorting (see _lovasz_weights).
_BINS = 1 << 12


def _lovasz_weights(errors: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """Weights ``w`` (C x P) with ``loss_c = sum_i errors[c, i] * w[c, i]``: the gradient of
    the Lovász extension of the Jaccard loss of class ``c`` at ``errors`` (no autograd).

    The extension visits the pixels from the largest error to the smallest; the ``i``-th
    pixel's weight is how much the Jaccard loss ``J = 1 - |fg \\ E| / |fg U E|`` grows when it
    joins the error set ``E``. The reference algorithm sorts each class's P errors; here
    they are binned into ``_BINS`` (4096) levels and counted (``bincount``, then ``cumsum``
    over the bins): no sort, which on a CPU took ~12 ms per class for a batch of 8 x 96 x 96.
    Inside a bin the foreground pixels come first and share their bin's weight equally, as
    do the background ones: an average over orderings of near-equal errors (< 1/4095 apart),
    so the loss moves by less than 1/4095 (tests/test_losses.py compares with the sort).
    """
    num_classes = errors.shape[0]
    # Bin 0 holds the largest errors; each class has a background row and a foreground row.
    level = errors.mul(1 - _BINS).add_(_BINS - 0.5).long()  # round((1 - e) * (BINS - 1))
    row = torch.arange(0, 2 * num_classes, 2, device=errors.device)[:, None] + fg.long()
    slot = level.add_(row * _BINS)
    counts = torch.bincount(slot.reshape(-1), minlength=num_classes * 2 * _BINS)
    counts = counts.reshape(num_classes, 2, _BINS).to(errors.dtype)
    bg_in, fg_in = counts[:, 0], counts[:, 1]
    fg_total = fg_in.sum(dim=1, keepdim=True)
    fg_before, bg_before = fg_in.cumsum(dim=1) - fg_in, bg_in.cumsum(dim=1) - bg_in

    def jaccard(fg_errors: torch.Tensor, bg_errors: torch.Tensor) -> torch.Tensor:
        return 1.0 - (fg_total - fg_errors) / (fg_total + bg_errors).clamp_min(1.0)

    j_start = jaccard(fg_before, bg_before)
    j_mid = jaccard(fg_before + fg_in, bg_before)  # after the bin's foreground pixels
    j_end = jaccard(fg_before + fg_in, bg_before + bg_in)
    per_pixel = torch.stack([(j_end - j_mid) / bg_in.clamp_min(1.0),
                             (j_mid - j_start) / fg_in.clamp_min(1.0)], dim=1)
    return per_pixel.reshape(-1)[slot]


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor,
                   ignore_index: int = 255) -> torch.Tensor:
    """Lovász-softmax loss of N x C x H x W logits over the whole batch, in fp32.

    The mean over the classes present in ``target`` of the Lovász extension of ``1 - IoU``
    evaluated at the per-pixel errors ``|[y = c] - p_c|``. 0 when every pixel is ignored.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 -> fp32
    num_classes = logits.shape[1]
    probs = logits.softmax(dim=1).transpose(0, 1).reshape(num_classes, -1)  # C x pixels
    target = target.reshape(-1)
    valid = target != ignore_index
    if not bool(valid.all()):
        probs, target = probs[:, valid], target[valid]
    classes = torch.arange(num_classes, device=target.device)
    fg = (target[None, :] == classes[:, None]).to(probs.dtype)
    # Absent classes are left out: for them the loss would only reward predicting nothing.
    present = fg.sum(dim=1) > 0
    if not bool(present.any()):
        return logits.sum() * 0.0  # keeps the graph: backward() still works
    errors = (fg - probs).abs()
    with torch.no_grad():  # the weights depend on the order of the errors only
        weights = _lovasz_weights(errors.detach(), fg)
    return (errors * weights).sum(dim=1)[present].mean()


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_loss(name: str, weight: torch.Tensor | None = None, ignore_index: int = 255,
               boundary_weight: float = 0.0) -> LossFn:
    """``loss_fn(logits, target)`` for a name in :data:`LOSSES`.

    ``weight``: class weights of the cross entropy. ``boundary_weight``: extra cross-entropy
    weight of the pixels near a label boundary (:func:`boundary_mask`; 0: none, 4: such a
    pixel counts 5 times).
    """
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}: choose one of {', '.join(LOSSES)}")

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pixel_weight = None
        if boundary_weight:
            pixel_weight = 1.0 + boundary_weight * boundary_mask(target).to(torch.float32)
        loss = segmentation_loss(logits, target, weight, ignore_index, pixel_weight)
        if name == "ce+lovasz":
            loss = loss + lovasz_softmax(logits, target, ignore_index)
        return loss
    return loss_fn
