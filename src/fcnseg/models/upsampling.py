"""Upsampling by transposed convolution, as the D2L "Fully Convolutional Networks" chapter
teaches it.

* :func:`bilinear_kernel` is the chapter's kernel, which makes a transposed convolution
  perform bilinear interpolation.
* :func:`conv2d_matrix` writes a 2-D convolution as an explicit sparse matrix ``W`` so that
  one can *see* that a transposed convolution is multiplication by ``W.T``.
* :func:`upsampler` / :func:`bilinear_upsampler` build the ``nn.ConvTranspose2d`` layers
  used by :class:`fcnseg.models.FCN` and by ``fcnseg upsample``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FcnsegError, UnknownNameError

UPSAMPLE_INITS = ("bilinear", "xavier")


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> Tensor:
    """The D2L bilinear kernel: weight ``(in_channels, out_channels, k, k)``.

    Only the "diagonal" channel pairs ``(i, i)`` get the 2-D tent filter, so each channel is
    interpolated on its own (colour channels or class scores do not mix).
    """
    factor = (kernel_size + 1) // 2
    if kernel_size % 2 == 1:
        center = factor - 1
    else:
        center = factor - 0.5
    og = (torch.arange(kernel_size).reshape(-1, 1), torch.arange(kernel_size).reshape(1, -1))
    filt = (1 - torch.abs(og[0] - center) / factor) * (1 - torch.abs(og[1] - center) / factor)
    weight = torch.zeros((in_channels, out_channels, kernel_size, kernel_size))
    weight[range(in_channels), range(out_channels), :, :] = filt
    return weight


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def conv2d_matrix(
    weight: Tensor,
    input_size: tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> Tensor:
    """The sparse matrix ``W`` of the convolution ``F.conv2d(X, weight, stride, padding)``.

    ``weight`` is ``(Cout, Cin, kh, kw)`` and ``X`` is ``(Cin, H, W)`` with
    ``input_size = (H, W)``. Returns a sparse COO tensor of shape
    ``(Cout * Ho * Wo, Cin * H * W)`` such that, with ``vec`` the row-major flattening,

    * ``conv2d(X) == (W @ vec(X)).reshape(Cout, Ho, Wo)``, and
    * ``conv_transpose2d(Y, weight, stride, padding, output_padding) ==
      (W.T @ vec(Y)).reshape(Cin, H, W)`` (``output_padding`` picks the output size H x W
      when several input sizes give the same ``Ho x Wo``).

    Why the *transposed* convolution is ``W.T``: a convolution is linear, ``Y = W X``, so the
    gradient of a loss with respect to its input is ``dL/dX = W.T dL/dY``. Autograd computes
    that gradient with exactly the operation PyTorch exposes as ``conv_transpose2d``: it
    scatters every input value back to the k x k output positions that it was gathered from
    in the forward convolution. With stride s, ``W`` maps a large map to a small one
    (downsampling), so ``W.T`` maps the small one back to the large one: upsampling.
    Padding ``p`` of the convolution becomes *cropping* ``p`` pixels in the transpose.
    """
    if weight.dim() != 4:
        raise ValueError(f"weight must be (Cout, Cin, kh, kw), got shape {tuple(weight.shape)}")
    c_out, c_in, kh, kw = weight.shape
    height, width = _pair(input_size)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    out_h = (height + 2 * ph - kh) // sh + 1
    out_w = (width + 2 * pw - kw) // sw + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"kernel {kh}x{kw} does not fit input {height}x{width} with padding")

    # One entry per (co, ci, p, q, i, j): output pixel (co, i, j) reads input pixel
    # (ci, i*s - pad + p, j*s - pad + q) with weight[co, ci, p, q]. Broadcasting builds all
    # combinations at once; entries that fall into the zero padding are simply dropped,
    # which is what padding with zeros means for a linear map.
    co, ci, p, q, i, j = torch.meshgrid(
        torch.arange(c_out),
        torch.arange(c_in),
        torch.arange(kh),
        torch.arange(kw),
        torch.arange(out_h),
        torch.arange(out_w),
        indexing="ij",
    )
    y = i * sh - ph + p
    x = j * sw - pw + q
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    rows = (co * out_h + i) * out_w + j
    cols = (ci * height + y) * width + x
    values = weight.detach()[co, ci, p, q]
    indices = torch.stack([rows[inside], cols[inside]])
    shape = (c_out * out_h * out_w, c_in * height * width)
    return torch.sparse_coo_tensor(
        indices, values[inside], shape, check_invariants=True
    ).coalesce()


def upsampler(
    channels: int, scale: int, init: str = "bilinear", learnable: bool = True
) -> nn.ConvTranspose2d:
    """A transposed convolution that enlarges ``H x W`` to exactly ``sH x sW``.

    For even ``s`` this is the chapter's layer: kernel ``2s``, stride ``s``, padding ``s/2``.
    ``s/2`` is not an integer for odd ``s``, so there the kernel is ``2s - 1`` with padding
    ``(s - 1)/2``; the bilinear kernel of that odd size is again exact bilinear
    interpolation (and ``s = 1`` is the identity).

    ``init`` is ``"bilinear"`` (:func:`bilinear_kernel`) or ``"xavier"`` (the chapter's
    exercise). ``learnable=False`` freezes the weight (``requires_grad`` False). No bias:
    interpolation has none, and the FCN score convolutions before it already have one.
    """
    if init not in UPSAMPLE_INITS:
        raise UnknownNameError("upsample init", init, UPSAMPLE_INITS)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise FcnsegError(f"upsampling scale must be an integer >= 1, got {scale!r}")
    kernel = 2 * scale - scale % 2
    layer = nn.ConvTranspose2d(
        channels, channels, kernel_size=kernel, stride=scale, padding=scale // 2, bias=False
    )
    with torch.no_grad():
        if init == "bilinear":
            layer.weight.copy_(bilinear_kernel(channels, channels, kernel))
        else:
            nn.init.xavier_uniform_(layer.weight)
    layer.weight.requires_grad_(learnable)
    return layer


def bilinear_upsampler(channels: int, scale: int, learnable: bool = True) -> nn.ConvTranspose2d:
    """A bilinear-initialised transposed convolution enlarging by ``scale`` (see :func:`upsampler`).

    Away from the border it equals ``F.interpolate(mode="bilinear", align_corners=False)``.
    The outermost ``s/2`` pixels differ: the transposed convolution treats pixels outside
    the image as zeros (its implicit zero padding), while ``F.interpolate`` clamps to the
    edge pixel, so the raw layer darkens a thin frame. :func:`bilinear_upsample` fixes that.
    """
    return upsampler(channels, scale, init="bilinear", learnable=learnable)


def bilinear_upsample(x: Tensor, scale: int) -> Tensor:
    """Enlarge ``x`` (N x C x H x W) by ``scale`` with a bilinear transposed convolution.

    The input is first padded by one *replicated* pixel on each side and the result cropped
    by ``scale`` pixels: the out-of-image neighbours then equal the edge pixels instead of
    zeros, which is exactly the edge clamping of ``F.interpolate(align_corners=False)``, so
    the whole image (border included) matches bilinear interpolation.
    """
    layer = bilinear_upsampler(x.shape[1], scale, learnable=False).to(x.device, x.dtype)
    with torch.no_grad():
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        out = layer(padded)
    return out[..., scale:-scale, scale:-scale]
