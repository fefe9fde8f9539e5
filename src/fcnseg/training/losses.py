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

from ..data.meta import IGNORE_INDEX
from ..errors import UnknownNameError

# name -> the weight of the Lovász-softmax term added to the (weighted) cross entropy; the
# one list of losses. Both terms come from one log-softmax and one pass of their own over
# the full-size scores, gradient included (:class:`_SegmentationLoss`).
LOSSES: dict[str, float] = {"ce": 0.0, "ce+lovasz": 1.0}
# --boundary-weight applies to the pixels this close to a label boundary: from scratch, an
# FCN-8s gets most pixels right early and keeps ~80 % of its errors within 2 px of a shape's
# outline, where its stride-8 scores must be interpolated most precisely.
BOUNDARY_RADIUS = 2
# Lovász-softmax orders each class's errors by binning them into 2^12 levels (no sort).
_BINS = 1 << 12
_ROW = _BINS + 1  # per (class, background/foreground): the bins, then the ignored pixels' bin


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor,
                      weight: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX,
                      pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel cross entropy over the class dimension of N x C x H x W logits, in fp32.

    Equal to ``F.cross_entropy(..., reduction="mean")`` except that a batch whose pixels are
    all ignored gives 0 instead of 0/0 = NaN (which would stop the run as a diverged loss).
    ``pixel_weight`` (N x H x W) weights pixels on top of the class ``weight``; the mean is
    then taken over the weights, as ``F.cross_entropy`` does with class weights.
    """
    return _SegmentationLoss.apply(logits, target, weight, pixel_weight, ignore_index, 1.0, 0.0)


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor,
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Lovász-softmax loss of N x C x H x W logits over the whole batch, in fp32.

    The mean over the classes present in ``target`` of the Lovász extension of ``1 - IoU``
    evaluated at the per-pixel errors ``|[y = c] - p_c|``. 0 when every pixel is ignored.
    """
    return _SegmentationLoss.apply(logits, target, None, None, ignore_index, 0.0, 1.0)


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


class _SegmentationLoss(torch.autograd.Function):
    """``ce_weight`` x weighted cross entropy + ``lovasz_weight`` x Lovász-softmax.

    The gradient with respect to the logits is written out (``p (G - sum_c p_c G_c) +
    coef (p - onehot)``, ``G`` the Lovász gradient with respect to the probabilities) rather
    than recorded op by op: autograd's chain of a dozen elementwise ops over the full-size
    scores took 90-130 ms of a CamVid training step on two cores (PyTorch at AVX2).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor,  # type: ignore[override]
                class_weight: torch.Tensor | None, pixel_weight: torch.Tensor | None,
                ignore_index: int, ce_weight: float, lovasz_weight: float) -> torch.Tensor:
        n, num_classes = logits.shape[:2]
        dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16/fp16 -> fp32
        scores = logits.to(dtype)
        # Work in the layout the scores come in (a channels-last copy to N x C x H x W and
        # back cost two thirds as much as the whole loss): N x C x P, or N x P x C.
        dim = 2 if _channels_last(scores) else 1
        if dim == 2:
            scores = scores.permute(0, 2, 3, 1).reshape(n, -1, num_classes)  # a view
        log_probs = scores.reshape(n, num_classes, -1).log_softmax(1) if dim == 1 else \
            scores.log_softmax(2)
        target = target.reshape(n, -1).unsqueeze(dim).long()
        valid: torch.Tensor | None = target != ignore_index
        if bool(valid.all()):
            valid, index = None, target
        else:
            index = target.masked_fill(~valid, 0)  # any class: these pixels weigh 0
        nll = log_probs.gather(dim, index).neg_()
        probs = log_probs.exp_()  # in place: the log-probabilities are no longer needed
        weight = torch.ones_like(nll) if valid is None else valid.to(dtype)
        if valid is not None:
            nll.masked_fill_(~valid, 0.0)  # ignored: even a -inf score adds nothing
        if class_weight is not None:
            weight = weight * class_weight.to(dtype)[index]
        if pixel_weight is not None:
            weight = weight * pixel_weight.reshape(n, -1).unsqueeze(dim)
        coef = weight / weight.sum().clamp_min(1e-12)  # each pixel's share of the mean
        ce = (nll * coef).sum()
        loss, lovasz_grad = ce_weight * ce, None
        if lovasz_weight:
            if bool(torch.isfinite(ce)):  # NaN scores (a diverged model): the loss says NaN
                lovasz, lovasz_grad = _lovasz(probs, index, valid, dim, lovasz_weight)
                loss = loss + lovasz
            else:
                loss = loss + float("nan")
        ctx.save_for_backward(probs, lovasz_grad, coef * ce_weight, index)
        ctx.dim, ctx.shape, ctx.dtype = dim, logits.shape, logits.dtype  # not the scores
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        probs, lovasz_grad, coef, index = ctx.saved_tensors
        dim = ctx.dim
        if lovasz_grad is None:
            grad = probs * coef
        else:  # through the softmax: p_j (G_j - sum_c p_c G_c)
            grad = lovasz_grad * probs
            grad.addcmul_(probs, coef - _class_sum(grad, dim))
        grad.scatter_add_(dim, index, -coef)  # cross entropy: coef (p - onehot)
        if grad_output.item() != 1.0:  # 1 unless the loss was scaled
            grad.mul_(grad_output)
        grad = grad.to(ctx.dtype)
        if dim == 2:  # back to N x C x H x W, laid out channels-last as the scores were
            n, c, h, w = ctx.shape
            return grad.view(n, h, w, c).permute(0, 3, 1, 2), None, None, None, None, None, None
        return grad.view(ctx.shape), None, None, None, None, None, None


def _lovasz(probs: torch.Tensor, index: torch.Tensor, valid: torch.Tensor | None, dim: int,
            scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale`` x Lovász-softmax of N x C x P (``dim`` 1) or N x P x C (``dim`` 2)
    probabilities, and its gradient ``G`` with respect to them.

    The Lovász extension of class ``c``'s Jaccard loss ``J = 1 - |fg \\ E| / |fg U E|`` visits
    the pixels from the largest error ``|[y = c] - p_c|`` to the smallest; a pixel's weight
    is how much ``J`` grows when it joins the error set ``E``. The reference algorithm sorts
    each class's errors; here they are binned into ``_BINS`` (4096) levels and counted
    (``bincount``, then ``cumsum`` over the bins): no sort, which on a CPU took ~12 ms per
    class for a batch of 8 x 96 x 96. Inside a bin the foreground pixels come first and
    share their bin's weight equally, as do the background ones: an average over orderings
    of near-equal errors (< 1/4095 apart), so the loss moves by less than 1/4095
    (tests/test_losses.py compares with the sort). Ignored pixels (``valid`` False) go to one
    more bin, visited last: they change no other pixel's weight and get a weight of 0.
    Changes ``probs`` at ignored pixels (their values matter nowhere).
    """
    num_classes = probs.shape[dim]
    offsets = torch.arange(0, 2 * num_classes * _ROW, 2 * _ROW, dtype=probs.dtype,
                           device=probs.device)
    if valid is not None:
        probs.masked_fill_(~valid, -1 / (_BINS - 1))  # lands in the ignored pixels' bin
    # Every class as background first: error p, bin round((1 - p)(BINS - 1)) of row 0...
    slot = _add_per_class(offsets + (_BINS - 0.5), probs, 1 - _BINS, dim).to(torch.int32)
    # ...then each valid pixel's own class: error 1 - p, bin round(p (BINS - 1)) of row 1.
    own = probs.gather(dim, index).mul_(_BINS - 1).add_(_ROW + 0.5).to(torch.int32)
    own.add_((index * (2 * _ROW)).to(torch.int32))
    if valid is not None:
        own.masked_fill_(~valid, _BINS)  # index 0: class 0's slot for ignored pixels, as is
    slot.scatter_(dim, index, own)
    counts = torch.bincount(slot.view(-1), minlength=num_classes * 2 * _ROW)
    table, constant = _lovasz_table(counts.view(num_classes, 2, _ROW).to(probs.dtype), scale)
    # index_select: ~1.5x faster than advanced indexing for millions of int32 indices.
    grad = torch.index_select(table.view(-1), 0, slot.view(-1)).view_as(probs)
    # sum_i G_i e_i with e = p (background), 1 - p (foreground, where G = -w): G . p + const
    return torch.dot(grad.view(-1), probs.view(-1)) + constant, grad


def _channels_last(scores: torch.Tensor) -> bool:
    """Whether N x C x H x W ``scores`` lie in memory as N x H x W x C."""
    return (scores.dim() == 4 and not scores.is_contiguous()
            and scores.is_contiguous(memory_format=torch.channels_last))


def _add_per_class(values: torch.Tensor, x: torch.Tensor, alpha: float, dim: int) -> torch.Tensor:
    """``values[c] + alpha * x`` for N x C x P (``dim`` 1) or N x P x C (``dim`` 2) ``x``.

    With the classes innermost, the 11 values repeat every 11 elements, which elementwise
    kernels do not vectorise (7 ms against 1.3 for 8 CamVid crops): tile them 64 pixels wide.
    """
    if dim == 1:
        return torch.add(values.view(1, -1, 1), x, alpha=alpha)
    n, pixels, classes = x.shape
    tile = next(k for k in (64, 16, 4, 1) if pixels % k == 0)
    return torch.add(values.repeat(tile), x.view(n, -1, tile * classes), alpha=alpha).view_as(x)


def _class_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x.sum(dim, keepdim=True)``; over an innermost class dimension as a matrix product
    (a reduction over 11 contiguous values runs ~6x slower)."""
    if dim == 1:
        return x.sum(1, keepdim=True)
    return x @ torch.ones(x.shape[2], 1, dtype=x.dtype, device=x.device)


def _lovasz_table(counts: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """From C x 2 x ROW counts (background / foreground row per class), ``d loss / d p`` per
    slot (the Jaccard increments, signed, averaged over the classes present, times ``scale``)
    and the loss's constant part (``sum w`` over the foreground pixels, likewise)."""
    bg_in, fg_in = counts[:, 0], counts[:, 1]
    fg_total = fg_in.sum(dim=1, keepdim=True)
    fg_before, bg_before = fg_in.cumsum(dim=1) - fg_in, bg_in.cumsum(dim=1) - bg_in

    def jaccard(fg_errors: torch.Tensor, bg_errors: torch.Tensor) -> torch.Tensor:
        return 1.0 - (fg_total - fg_errors) / (fg_total + bg_errors).clamp_min(1.0)

    j_start = jaccard(fg_before, bg_before)
    j_mid = jaccard(fg_before + fg_in, bg_before)  # after the bin's foreground pixels
    j_end = jaccard(fg_before + fg_in, bg_before + bg_in)
    w_bg, w_fg = (j_end - j_mid) / bg_in.clamp_min(1.0), (j_mid - j_start) / fg_in.clamp_min(1.0)
    # Absent classes are left out: for them the loss would only reward predicting nothing.
    present = (fg_total[:, 0] > 0).to(counts.dtype)
    scale = (scale * present / present.sum().clamp_min(1.0)).view(-1, 1)
    table = torch.stack([w_bg * scale, -w_fg * scale], dim=1)
    return table, (fg_in * w_fg * scale).sum()


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
    lovasz_weight = LOSSES[name]

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pixel_weight = None
        if boundary_weight:
            pixel_weight = 1.0 + boundary_weight * boundary_mask(target).to(torch.float32)
        return _SegmentationLoss.apply(logits, target, weight, pixel_weight, ignore_index, 1.0,
                                       lovasz_weight)
    return loss_fn
