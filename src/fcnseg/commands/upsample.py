"""``fcnseg upsample IMAGE --scale 2 --out OUT.png``: the chapter's upsampling lesson.

Enlarges a photo with a transposed convolution initialised by the bilinear kernel (the same
layer FCN uses to bring class scores back to full resolution), prints the shapes and writes
the result, and with ``--figure`` the input and output side by side.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import FcnsegError


def add_parser(subparsers: argparse._SubParsersAction, help_text: str) -> None:
    """Register the ``upsample`` sub-command."""
    p = subparsers.add_parser("upsample", help=help_text, description=help_text)
    p.add_argument("image", type=Path, help="image to enlarge (PNG, JPEG, ...)")
    p.add_argument(
        "--scale", type=int, default=2, help="integer enlargement factor >= 1 (default 2)"
    )
    p.add_argument("--out", type=Path, required=True, help="where to write the enlarged PNG")
    p.add_argument("--figure", type=Path, default=None, help="also write a side-by-side figure")
    p.set_defaults(func=run)


def _write_figure(path: Path, original, enlarged, scale: int) -> None:
    from ..viz import new_figure, save_figure

    fig = new_figure(10, 4)
    axes = fig.subplots(1, 2)
    titles = (
        f"input {original.shape[0]} x {original.shape[1]}",
        f"x{scale} transposed conv {enlarged.shape[0]} x {enlarged.shape[1]}",
    )
    for ax, img, title in zip(axes, (original, enlarged), titles, strict=True):
        ax.imshow(img)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def run(args: argparse.Namespace) -> int:
    """Enlarge ``args.image`` by ``args.scale``; returns the exit status."""
    if args.scale < 1:
        raise FcnsegError(f"--scale must be an integer >= 1, got {args.scale}")
    if args.out.suffix.lower() != ".png":
        raise FcnsegError(f"--out {args.out}: the output is written as PNG, name it *.png")
    if args.figure is not None and args.figure.suffix.lower() != ".png":
        raise FcnsegError(f"--figure {args.figure}: the figure is written as PNG, name it *.png")

    import torch

    from ..data.io import read_image
    from ..device import available_memory, fits_in_memory
    from ..models.upsampling import bilinear_upsample
    from ..viz import save_image

    image = read_image(args.image)  # uint8 H x W x 3; DataError naming the file otherwise
    h, w = image.shape[0] * args.scale, image.shape[1] * args.scale
    need = h * w * 3 * 4 * 3  # fp32 output, its rounded copy and the uint8 image, roughly
    if not fits_in_memory(need):
        raise FcnsegError(f"--scale {args.scale} would make {args.image} a {h} x {w} image "
                          f"(about {need / 2**30:.1f} GiB to compute), more than half the free "
                          f"memory ({available_memory() / 2**30:.1f} GiB): use a smaller --scale")
    x = torch.from_numpy(image.copy()).permute(2, 0, 1).unsqueeze(0).float()
    y = bilinear_upsample(x, args.scale)
    print(
        f"input: {x.shape[1]} x {x.shape[2]} x {x.shape[3]} -> "
        f"output: {y.shape[1]} x {y.shape[2]} x {y.shape[3]}"
    )
    # Bilinear weights are a convex combination, but float rounding can step just outside
    # [0, 255]; round, then clamp so that the uint8 cast never wraps around.
    out = y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    save_image(out, args.out)
    print(f"wrote {args.out}")
    if args.figure is not None:
        _write_figure(args.figure, image, out, args.scale)
        print(f"wrote {args.figure}")
    return 0
