"""Per-pixel training losses: cross entropy (optionally boundary-weighted) + Lovász-softmax.

Cross entropy is the paper's and the chapter's loss. Lovász-softmax (Berman, Rannen Triki &
Blaschko, CVPR 2018) is a convex surrogate of each class's Jaccard loss (1 - IoU), the very
quantity that mIoU averages; added to cross entropy it spends the gradient on the pixels
that cost IoU (shape boundaries, small classes) rather than on the easy bulk of background.
Weighting the cross entropy of the pixels near a label boundary aims at the same errors.
Both are in the ``fcnseg`` recipe because they lifted mIoU on the demo's data and on CamVid
under the same budget (benchmarks/RESULTS.md has the runs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..data.meta import IGNORE_INDEX
from ..errors import UnknownNameError

# name -> the extra term added to the (weighted) cross entropy, a function of the fp32
# log-probabilities the cross entropy has computed (one log-softmax over the full-size
# scores for both terms, not a log-softmax and a softmax); the one list of losses
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None] = {
    "ce": None,
    "ce+lovasz": lambda log_probs, target, ignore: _lovasz(log_probs.exp(), target, ignore),
}
# --boundary-weight applies to the pixels this close to a label boundary: from scratch, an
# FCN-8s gets most pixels right early and keeps ~80 % of its errors within 2 px of a shape's
# outline, where its stride-8 scores must be interpolated most precisely.
BOUNDARY_RADIUS = 2


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor,
                      weight: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX,
                      pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel cross entropy over the class dimension of N x C x H x W logits, in fp32.

    Equal to ``F.cross_entropy(..., reduction="mean")`` except that a batch whose pixels are
    all ignored gives 0 instead of 0/0 = NaN (which would stop the run as a diverged loss).
    ``pixel_weight`` (N x H x W) weights pixels on top of the class ``weight``; the mean is
    then taken over the weights, as ``F.cross_entropy`` does with class weights.
    """
    return _nll(logits.float().log_softmax(dim=1), target, weight, ignore_index, pixel_weight)


def _nll(log_probs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
         ignore_index: int, pixel_weight: torch.Tensor | None) -> torch.Tensor:
    """:func:`segmentation_loss` of log-probabilities (``F.cross_entropy`` is exactly
    ``F.nll_loss`` of ``log_softmax``)."""
    per_pixel = F.nll_loss(log_probs, target, weight=weight, ignore_index=ignore_index,
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
    if radius < 1:
        return torch.zeros_like(target, dtype=torch.bool)
    # A (2r + 1)^2 square holds two different labels exactly when it holds two *adjacent*
    # pixels with different labels (walk from one to the other inside the square). So mark
    # the label changes between neighbours and dilate the marks: boolean shifts, where
    # max-pooling the labels took ~100 ms for a batch of 8 CamVid crops.
    change_x = target[:, :, 1:] != target[:, :, :-1]  # between columns j and j + 1
    change_y = target[:, 1:, :] != target[:, :-1, :]  # between rows i and i + 1
    # Pixel j sees the pairs (j', j' + 1) with j - r <= j' <= j + r - 1: a window of 2r
    # pairs; across the pairs it sees rows i - r ... i + r: a window of 2r + 1.
    near_x = _window_any(_window_any(change_x, 2, radius, 2 * radius), 1, radius, 2 * radius + 1)
    near_y = _window_any(_window_any(change_y, 1, radius, 2 * radius), 2, radius, 2 * radius + 1)
    return near_x | near_y


def _window_any(marks: torch.Tensor, dim: int, pad: int, window: int) -> torch.Tensor:
    """``out[j] = any(padded[j : j + window])`` along ``dim``, ``marks`` padded with ``pad``
    False values on both sides."""
    shape = list(marks.shape)
    shape[dim] += 2 * pad
    padded = marks.new_zeros(shape)
    padded.narrow(dim, pad, marks.shape[dim]).copy_(marks)
    length = shape[dim] - window + 1
    out = padded.narrow(dim, 0, length).clone()
    for k in range(1, window):
        out |= padded.narrow(dim, k, length)
    return out


# Errors are binned into 2^12 levels to order them without sorting (see _lovasz_weights).
_BINS = 1 << 12


def _lovasz_weights(errors: torch.Tensor, fg: torch.Tensor,
                    valid: torch.Tensor | None) -> torch.Tensor:
    """Weights ``w`` (N x C x P, like ``errors``) with ``loss_c = sum_{n,i} errors * w``: the
    gradient of the Lovász extension of class ``c``'s Jaccard loss at ``errors`` (no autograd).

    The extension visits the pixels from the largest error to the smallest; a pixel's weight
    is how much the Jaccard loss ``J = 1 - |fg \\ E| / |fg U E|`` grows when it joins the
    error set ``E``. The reference algorithm sorts each class's errors; here they are binned
    into ``_BINS`` (4096) levels and counted (``bincount``, then ``cumsum`` over the bins): no
    sort, which on a CPU took ~12 ms per class for a batch of 8 x 96 x 96. Inside a bin the
    foreground pixels come first and share their bin's weight equally, as do the background
    ones: an average over orderings of near-equal errors (< 1/4095 apart), so the loss moves
    by less than 1/4095 (tests/test_losses.py compares with the sort). Ignored pixels
    (``valid`` False) go to one more bin, visited last: they change no other pixel's weight,
    and the batch needs no compacting copy.
    """
    num_classes = errors.shape[1]
    stride = _BINS + 1  # per (class, fg/bg) row: the bins, then the ignored pixels' bin
    # int32 slots: half the memory traffic of int64 on these C x (pixels of the batch) maps.
    slot = errors.mul(1 - _BINS).add_(_BINS - 0.5).to(torch.int32)  # round((1 - e)(BINS - 1))
    # NaN errors (a diverged model) become some int: keep it a valid bin, so that the loss
    # comes out NaN and the training loop reports the divergence, instead of bincount failing.
    slot.clamp_(0, _BINS - 1)
    if valid is not None:
        slot.masked_fill_(~valid, _BINS)
    slot.add_(fg.to(torch.int32), alpha=stride)  # bin 0 holds the largest errors
    slot.add_(torch.arange(0, 2 * num_classes * stride, 2 * stride, dtype=torch.int32,
                           device=errors.device).view(1, num_classes, 1))
    counts = torch.bincount(slot.view(-1), minlength=num_classes * 2 * stride)
    counts = counts.view(num_classes, 2, stride).to(errors.dtype)
    bg_in, fg_in = counts[:, 0], counts[:, 1]
    fg_total = fg_in.sum(dim=1, keepdim=True)
    fg_before, bg_before = fg_in.cumsum(dim=1) - fg_in, bg_in.cumsum(dim=1) - bg_in

    def jaccard(fg_errors: torch.Tensor, bg_errors: torch.Tensor) -> torch.Tensor:
        return 1.0 - (fg_total - fg_errors) / (fg_total + bg_errors).clamp_min(1.0)

    j_start = jaccard(fg_before, bg_before)
    j_mid = jaccard(fg_before + fg_in, bg_before)  # after the bin's foreground pixels
    j_end = jaccard(fg_before + fg_in, bg_before + bg_in)
    per_slot = torch.stack([(j_end - j_mid) / bg_in.clamp_min(1.0),
                            (j_mid - j_start) / fg_in.clamp_min(1.0)], dim=1)
    # index_select: ~1.5x faster than advanced indexing for millions of int32 indices.
    return torch.index_select(per_slot.view(-1), 0, slot.view(-1)).view_as(errors)


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor,
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Lovász-softmax loss of N x C x H x W logits over the whole batch, in fp32.

    The mean over the classes present in ``target`` of the Lovász extension of ``1 - IoU``
    evaluated at the per-pixel errors ``|[y = c] - p_c|``. 0 when every pixel is ignored.
    Works on the N x C x (H W) layout as it comes (no transposed copy of the scores).
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 -> fp32
    return _lovasz(logits.softmax(dim=1), target, ignore_index)


def _lovasz(probs: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """:func:`lovasz_softmax` of N x C x H x W class probabilities."""
    n, num_classes = probs.shape[:2]
    probs = probs.reshape(n, num_classes, -1)
    target = target.reshape(n, 1, -1)
    classes = torch.arange(num_classes, device=target.device).view(1, num_classes, 1)
    fg = target == classes  # N x C x P
    valid: torch.Tensor | None = target != ignore_index
    if bool(valid.all()):
        valid = None
    else:
        fg &= valid  # an ignore label that is also a class index is still ignored
    # Absent classes are left out: for them the loss would only reward predicting nothing.
    present = fg.any(dim=2).any(dim=0)
    if not bool(present.any()):
        return probs.sum() * 0.0  # keeps the graph: backward() still works
    errors = (fg.to(probs.dtype) - probs).abs()
    # Ignored pixels need no masking here: _lovasz_weights gives them a weight of exactly 0
    # (they come after every foreground pixel, where the Jaccard loss is already 1), so they
    # add no loss and get no gradient.
    with torch.no_grad():  # the weights depend on the order of the errors only
        weights = _lovasz_weights(errors.detach(), fg, valid)
    return (errors * weights).sum(dim=(0, 2))[present].mean()


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_loss(name: str, weight: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX,
               boundary_weight: float = 0.0) -> LossFn:
    """``loss_fn(logits, target)`` for a name in :data:`LOSSES`.

    ``weight``: class weights of the cross entropy. ``boundary_weight``: extra cross-entropy
    weight of the pixels near a label boundary (:func:`boundary_mask`; 0: none, 4: such a
    pixel counts 5 times).
    """
    if name not in LOSSES:
        raise UnknownNameError("loss", name, LOSSES)
    extra = LOSSES[name]

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pixel_weight = None
        if boundary_weight:
            pixel_weight = 1.0 + boundary_weight * boundary_mask(target).to(torch.float32)
        log_probs = logits.float().log_softmax(dim=1)
        loss = _nll(log_probs, target, weight, ignore_index, pixel_weight)
        if extra is not None:
            loss = loss + extra(log_probs, target, ignore_index)
        return loss
    return loss_fn
