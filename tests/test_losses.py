"""The training losses: cross entropy + Lovasz-softmax (training/losses.py)."""

from __future__ import annotations

import pytest
import torch

from fcnseg.metrics import ConfusionMatrix
from fcnseg.training.losses import boundary_mask, build_loss, lovasz_softmax, segmentation_loss


def _iou_loss(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean over the classes present in ``target`` of 1 - IoU, from a confusion matrix."""
    cm = ConfusionMatrix(num_classes)
    cm.update(pred, target)
    iou = cm.compute()["per_class_iou"]
    present = torch.bincount(target[target != 255], minlength=num_classes) > 0
    return float(sum(1 - iou[c] for c in range(num_classes) if present[c]) / present.sum())


def _reference_lovasz(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's algorithm, written plainly: sort each class's errors, weight them by the
    increments of the Jaccard loss (Berman et al. 2018, Alg. 1), average the classes."""
    probs = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    target = target.reshape(-1)
    probs, target = probs[target != 255], target[target != 255]
    losses = []
    for c in range(probs.shape[1]):
        fg = (target == c).to(probs.dtype)
        if fg.sum() == 0:
            continue
        errors, order = torch.sort((fg - probs[:, c]).abs(), descending=True)
        fg_sorted = fg[order]
        jaccard = 1 - (fg.sum() - fg_sorted.cumsum(0)) / (fg.sum() + (1 - fg_sorted).cumsum(0))
        increments = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(errors, increments))
    return torch.stack(losses).mean()


def test_lovasz_softmax_matches_the_sorting_algorithm():
    torch.manual_seed(0)
    logits = (torch.randn(2, 4, 12, 10, dtype=torch.double) * 3).requires_grad_()
    target = torch.randint(0, 4, (2, 12, 10))
    target[1, :3] = 255
    target[target == 2] = 1  # class 2 absent: left out of the mean
    ours = lovasz_softmax(logits, target)
    (grad,) = torch.autograd.grad(ours, logits)
    ref = _reference_lovasz(logits, target)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    # Binning the errors into 4096 levels moves the value by < 1/4096 and only averages the
    # gradient between pixels whose errors share a level.
    assert ours.item() == pytest.approx(ref.item(), abs=1 / 4096)
    scale = ref_grad.abs().max()
    assert scale > 1e-4 and (grad - ref_grad).abs().max() < 0.02 * scale
    assert not grad.permute(0, 2, 3, 1)[target == 255].any()  # ignored: exactly no gradient
    # An ignore label that is also a class index: those pixels are ignored all the same.
    relabelled = target.clone()
    relabelled[relabelled == 0], relabelled[target == 255] = 3, 0
    assert lovasz_softmax(logits, relabelled, ignore_index=0).item() == pytest.approx(
        _reference_lovasz(logits, torch.where(relabelled == 0, 255, relabelled)).item(),
        abs=1 / 4096)


def test_lovasz_softmax_equals_1_minus_iou_for_confident_predictions():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 9, 11))
    target[0, :2] = 255  # ignored pixels count nowhere
    pred = torch.where(torch.rand(target.shape) < 0.7, target, torch.randint(0, 4, target.shape))
    pred[target == 255] = 0
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).double() * 60.0
    # At 0/1 probabilities the Lovasz extension is the set function itself: 1 - IoU.
    expected = _iou_loss(pred, target, 4)
    assert lovasz_softmax(logits, target).item() == pytest.approx(expected, abs=1e-6)  # fp32 IoU
    perfect = torch.nn.functional.one_hot(target.clamp(max=3), 4).permute(0, 3, 1, 2) * 60.0
    assert lovasz_softmax(perfect.double(), target).item() == pytest.approx(0.0, abs=1e-9)


def test_lovasz_softmax_gradient_and_edge_cases():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 4, 5, dtype=torch.double, requires_grad=True)
    target = torch.randint(0, 3, (1, 4, 5))
    # A better prediction (the true class raised everywhere) costs less.
    boost = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).double()
    assert lovasz_softmax(logits + 2 * boost, target) < lovasz_softmax(logits, target)
    # bf16 logits are computed in fp32; an all-ignored batch gives 0 and still backpropagates.
    half = torch.randn(1, 3, 4, 5).bfloat16().requires_grad_()
    assert lovasz_softmax(half, target).dtype == torch.float32
    empty = lovasz_softmax(half, torch.full_like(target, 255))
    empty.backward()
    assert empty.item() == 0.0 and half.grad is not None
    # Diverged (NaN) scores give a NaN loss, which the training loop reports, not a crash.
    assert torch.isnan(lovasz_softmax(torch.full((1, 3, 4, 5), float("nan")), target))


def test_build_loss():
    logits, target = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    assert torch.equal(build_loss("ce")(logits, target), segmentation_loss(logits, target))
    logits.requires_grad_()
    both = build_loss("ce+lovasz")(logits, target)  # one log-softmax for both terms
    (grad,) = torch.autograd.grad(both, logits)
    apart = segmentation_loss(logits, target) + lovasz_softmax(logits, target)
    assert both.item() == pytest.approx(apart.item())
    torch.testing.assert_close(grad, torch.autograd.grad(apart, logits)[0])
    with pytest.raises(KeyError, match="ce, ce\\+lovasz"):
        build_loss("dice")


def test_channels_last_scores_scaled_losses_and_ignored_nan():
    torch.manual_seed(2)
    target = torch.randint(0, 5, (2, 6, 8)).repeat_interleave(2, 1).repeat_interleave(2, 2)
    target[0, :3] = 255
    logits = torch.randn(2, 5, 12, 16) * 3
    loss_fn = build_loss("ce+lovasz", boundary_weight=4.0)
    grads = []
    for layout in (torch.contiguous_format, torch.channels_last):  # the model's output layout
        scores = logits.clone().contiguous(memory_format=layout).requires_grad_()
        loss = loss_fn(scores, target)
        (2.0 * loss).backward()  # a scaled loss scales the gradient
        assert scores.grad.is_contiguous(memory_format=layout)
        grads.append((loss.item(), scores.grad))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1])
    plain = logits.clone().requires_grad_()
    loss_fn(plain, target).backward()
    torch.testing.assert_close(grads[0][1], 2.0 * plain.grad)
    # Scores of ignored pixels are read by nothing: not even NaN reaches the loss.
    broken = logits.clone()
    broken[0, :, :3] = float("nan")
    assert loss_fn(broken, target).item() == pytest.approx(grads[0][0], rel=1e-6)


def test_boundary_mask_and_boundary_weighted_cross_entropy():
    target = torch.zeros(1, 12, 12, dtype=torch.long)
    target[0, 4:8, 4:8] = 2  # a 4 x 4 square
    edge = boundary_mask(target)[0]
    rows = edge.any(dim=1).nonzero().ravel().tolist()
    assert rows == list(range(2, 10))  # within 2 px of the square's outline, both sides
    assert not edge[0].any() and not edge[:, 11].any()
    assert edge[2, 2] and edge[5, 5]  # a diagonal neighbour counts; the 4 x 4 inside too
    # Dilating the neighbour label changes finds what a (2r + 1)^2 window of labels finds
    # (max != min over the window, the image's border excluded), ignore label included.
    labels = torch.randint(0, 4, (2, 20, 17))
    labels[labels == 3] = 255
    for radius in (1, 2, 3):
        window = torch.nn.functional.unfold(labels[:, None].float(), 2 * radius + 1,
                                            padding=radius)  # zero padding: masked out
        inside = torch.nn.functional.unfold(torch.ones(2, 1, 20, 17), 2 * radius + 1,
                                            padding=radius).bool()
        high = window.masked_fill(~inside, -1).amax(1)
        low = window.masked_fill(~inside, 1e9).amin(1)
        assert torch.equal(boundary_mask(labels, radius), (high != low).view(2, 20, 17))
    logits = torch.randn(1, 3, 12, 12)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    pixel_weight = 1.0 + 4.0 * edge.float()[None]
    expected = (ce * pixel_weight).sum() / pixel_weight.sum()
    assert torch.allclose(segmentation_loss(logits, target, pixel_weight=pixel_weight), expected)
    assert torch.allclose(build_loss("ce", boundary_weight=4.0)(logits, target), expected)
    # Ignored pixels count neither in the sum nor in the mean's weights.
    target[0, 0] = 255
    valid = (target != 255).float()
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none", ignore_index=255)
    pixel_weight = 1.0 + 4.0 * boundary_mask(target).float()
    expected = (ce * pixel_weight).sum() / (pixel_weight * valid).sum()
    assert torch.allclose(build_loss("ce", boundary_weight=4.0)(logits, target), expected)
