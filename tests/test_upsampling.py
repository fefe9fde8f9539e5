"""Upsampling lesson: bilinear kernel, convolution as a sparse matrix, transposed conv layers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fcnseg.errors import FcnsegError, UnknownNameError
from fcnseg.models import (
    bilinear_kernel,
    bilinear_upsample,
    bilinear_upsampler,
    conv2d_matrix,
    upsampler,
)


def _tent(k: int) -> list[float]:
    """1-D bilinear weights written out from the definition, independently of the code."""
    factor = math.ceil(k / 2)
    center = (k - 1) / 2  # = factor - 1 (odd k) or factor - 0.5 (even k)
    return [1 - abs(i - center) / factor for i in range(k)]


@pytest.mark.parametrize("k", [1, 3, 4, 5, 16])
def test_bilinear_kernel_matches_the_chapter_definition(k):
    weight = bilinear_kernel(3, 3, k)
    assert weight.shape == (3, 3, k, k)
    tent = torch.tensor(_tent(k))
    for c in range(3):
        torch.testing.assert_close(weight[c, c], torch.outer(tent, tent))
    off_diagonal = weight.clone()
    off_diagonal[range(3), range(3)] = 0
    assert torch.count_nonzero(off_diagonal) == 0  # channels are interpolated separately


def test_bilinear_kernel_of_size_4_is_the_classic_stride_2_filter():
    w = bilinear_kernel(1, 1, 4)[0, 0]
    torch.testing.assert_close(w[0], torch.tensor([0.25, 0.75, 0.75, 0.25]) * 0.25)
    # Each phase of the stride-2 transposed conv sums to 1: constant images stay constant.
    assert w[::2, ::2].sum() == pytest.approx(1.0)


CONV_CASES = [  # (cin, cout, kernel, stride, padding, H, W)
    (1, 1, 3, 1, 0, 6, 7),
    (3, 2, 3, 1, 1, 7, 6),
    (2, 4, 3, 2, 1, 9, 8),
    (3, 3, 4, 2, 1, 8, 10),
    (2, 3, (3, 5), (2, 3), (1, 2), 11, 13),
    (4, 2, 5, 3, 2, 10, 9),
]


@pytest.mark.parametrize("cin,cout,kernel,stride,padding,h,w", CONV_CASES)
def test_conv_is_matrix_and_transposed_conv_is_its_transpose(
    cin, cout, kernel, stride, padding, h, w
):
    gen = torch.Generator().manual_seed(hash((cin, cout, h, w)) % 1000)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    weight = torch.randn(cout, cin, kh, kw, generator=gen, dtype=torch.float64)
    x = torch.randn(cin, h, w, generator=gen, dtype=torch.float64)
    mat = conv2d_matrix(weight, (h, w), stride, padding)
    assert mat.is_sparse

    y = F.conv2d(x[None], weight, stride=stride, padding=padding)[0]
    assert mat.shape == (y.numel(), x.numel())
    torch.testing.assert_close((mat @ x.reshape(-1)).reshape(y.shape), y)

    # conv_transpose2d of a random Y back to H x W; output_padding resolves the rounding of
    # the strided conv (several input sizes map to the same output size).
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    ho, wo = y.shape[1:]
    out_pad = (h - ((ho - 1) * sh - 2 * ph + kh), w - ((wo - 1) * sw - 2 * pw + kw))
    z = torch.randn(cout, ho, wo, generator=gen, dtype=torch.float64)
    t = F.conv_transpose2d(
        z[None], weight, stride=stride, padding=padding, output_padding=out_pad
    )[0]
    assert t.shape == x.shape
    torch.testing.assert_close((mat.t() @ z.reshape(-1)).reshape(t.shape), t)


def test_transposed_matrix_is_the_gradient_of_the_convolution():
    torch.manual_seed(0)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    (F.conv2d(x, weight, stride=2, padding=1) * upstream).sum().backward()
    mat = conv2d_matrix(weight, (8, 8), stride=2, padding=1)
    torch.testing.assert_close(x.grad.reshape(-1), mat.t() @ upstream.reshape(-1))


def test_conv2d_matrix_rejects_a_kernel_larger_than_the_input():
    with pytest.raises(ValueError):
        conv2d_matrix(torch.ones(1, 1, 5, 5), (3, 3))


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_bilinear_transposed_conv_equals_interpolate_away_from_the_border(scale):
    torch.manual_seed(scale)
    x = torch.rand(2, 3, 12, 9)
    layer = bilinear_upsampler(3, scale)
    assert (layer.kernel_size, layer.stride, layer.padding) == (
        (2 * scale, 2 * scale),
        (scale, scale),
        (scale // 2, scale // 2),
    )
    with torch.no_grad():
        y = layer(x)
    ref = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    assert y.shape == ref.shape == (2, 3, 12 * scale, 9 * scale)
    b = scale  # one input pixel's worth of output pixels from each side
    torch.testing.assert_close(y[..., b:-b, b:-b], ref[..., b:-b, b:-b])
    # At the border they differ: the transposed conv sees zeros outside the image (its
    # implicit zero padding) where interpolate clamps to the edge pixel, so it is darker.
    assert (ref[..., 0, :] - y[..., 0, :]).min() > 0


@pytest.mark.parametrize("scale", [1, 2, 3, 5])
def test_bilinear_upsample_with_replicated_border_equals_interpolate_everywhere(scale):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 7, 10)
    y = bilinear_upsample(x, scale)
    ref = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    torch.testing.assert_close(y, ref)


def test_learnable_frozen_and_xavier_upsamplers():
    assert bilinear_upsampler(4, 2).weight.requires_grad
    frozen = bilinear_upsampler(4, 2, learnable=False)
    assert not frozen.weight.requires_grad
    assert frozen.bias is None
    torch.manual_seed(0)
    xavier = upsampler(4, 2, init="xavier")
    assert xavier.weight.shape == frozen.weight.shape
    assert not torch.allclose(xavier.weight, frozen.weight)
    assert torch.count_nonzero(xavier.weight[0, 1]) > 0  # xavier mixes channels, bilinear not


def test_upsampler_rejects_bad_scale_and_init():
    with pytest.raises(FcnsegError, match="scale"):
        bilinear_upsampler(3, 0)
    with pytest.raises(FcnsegError, match="scale"):
        bilinear_upsampler(3, 1.5)
    with pytest.raises(UnknownNameError, match="bilinear, xavier"):
        upsampler(3, 2, init="nearest")
