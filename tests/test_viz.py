"""Pictures: colours, overlays, palette PNGs that read back as indices, figures, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.data import DatasetMeta
from fcnseg.data.io import write_mask
from fcnseg.errors import FcnsegError
from fcnseg.viz import (
    IGNORE_COLOR,
    colorize,
    confusion_matrix_figure,
    denormalize,
    legend_figure,
    overlay,
    plot_training_curves,
    prediction_grid,
    save_image,
)

PALETTE = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
META = DatasetMeta("toy", ["background", "red", "green"], PALETTE)


def _png_ok(path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.load()
        return img.size


def test_colorize_maps_classes_and_ignore():
    mask = np.array([[0, 1], [2, 255]])
    rgb = colorize(mask, PALETTE)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 1].tolist() == [255, 0, 0] and rgb[1, 0].tolist() == [0, 255, 0]
    assert rgb[1, 1].tolist() == list(IGNORE_COLOR)
    assert colorize(torch.tensor(mask), PALETTE).tolist() == rgb.tolist()  # tensors too
    with pytest.raises(ValueError, match="label 7"):
        colorize(np.array([[7]]), PALETTE)


def test_overlay_blends_and_keeps_ignored_pixels():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    mask = np.array([[1, 1], [255, 0]])
    out = overlay(image, mask, PALETTE, alpha=0.5)
    assert out[0, 0].tolist() == [178, 50, 50]  # (100 + 255) / 2 rounded, 100 / 2
    assert out[1, 0].tolist() == [100, 100, 100]  # ignored: the image unchanged
    assert out[1, 1].tolist() == [50, 50, 50]
    with pytest.raises(ValueError, match="sizes differ"):
        overlay(image, np.zeros((3, 2), dtype=int), PALETTE)


@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.77])
def test_overlay_tables_equal_blending_the_arrays(alpha):
    """The looked-up blend is the float32 blend of the arrays, rounded, pixel for pixel."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(45, 61, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, size=(45, 61)).astype(np.uint8)
    mask[::7] = 255
    colour = colorize(mask, PALETTE).astype(np.float32)
    expected = np.rint(image.astype(np.float32) * (1 - alpha) + colour * alpha)
    expected[mask == 255] = image[mask == 255]
    assert np.array_equal(overlay(image, mask, PALETTE, alpha=alpha), expected.astype(np.uint8))
    with pytest.raises(ValueError, match="label 3"):
        overlay(image, np.full((45, 61), 3, np.uint8), PALETTE)


def test_palette_png_reads_back_as_indices(tmp_path):
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, size=(37, 53))
    mask[0, :5] = 255
    path = write_mask(tmp_path / "m.png", mask, PALETTE)
    with Image.open(path) as img:
        assert img.mode == "P" and img.size == (53, 37)
        assert np.array_equal(np.asarray(img), mask)
        pal = img.getpalette()
    assert pal[3:6] == [255, 0, 0]  # class 1's colour
    assert pal[255 * 3:255 * 3 + 3] == list(IGNORE_COLOR)  # VOC's boundary colour
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_denormalize_inverts_normalisation():
    img = np.random.default_rng(1).integers(0, 256, size=(5, 7, 3)).astype(np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    t = (torch.from_numpy(img).permute(2, 0, 1).float() / 255
         - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert np.array_equal(denormalize(t, mean, std), img)


def test_figures_are_written(tmp_path):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, size=(24, 32, 3)).astype(np.uint8) for _ in range(3)]
    preds = [rng.integers(0, 3, size=(24, 32)) for _ in range(3)]
    truths = [np.where(p == 0, 255, p) for p in preds]
    prediction_grid(images, preds, truths, meta=META, path=tmp_path / "grid.png")
    prediction_grid(images[:1], preds[:1], meta=META, path=tmp_path / "grid2.png")
    w3, h3 = _png_ok(tmp_path / "grid.png")
    w2, h2 = _png_ok(tmp_path / "grid2.png")
    assert h3 > h2 and w3 > w2  # a truth row and more columns make a bigger figure
    legend_figure(META.class_names, META.palette, tmp_path / "legend.png")
    _png_ok(tmp_path / "legend.png")
    mat = torch.tensor([[5, 1, 0], [0, 3, 2], [0, 0, 0]])
    confusion_matrix_figure(mat, META.class_names, tmp_path / "cm.png")
    _png_ok(tmp_path / "cm.png")
    with pytest.raises(ValueError, match="3 class names"):
        confusion_matrix_figure(torch.zeros(2, 2), META.class_names)
    with pytest.raises(ValueError):
        prediction_grid(images, preds[:2], meta=META)


def test_training_curves_with_and_without_validation(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 1.2},
        {"epoch": 2, "train_loss": 0.9, "val_pixel_accuracy": 0.6, "val_miou": 0.3},
        {"epoch": 3, "train_loss": 0.7, "val_pixel_accuracy": 0.7, "val_miou": float("nan")},
    ]
    fig = plot_training_curves(history, tmp_path / "curves.png")
    _png_ok(tmp_path / "curves.png")
    loss_ax, acc_ax = fig.axes[:2]
    assert list(loss_ax.lines[0].get_xdata()) == [1, 2, 3]
    labels = [line.get_label() for line in acc_ax.lines]
    assert labels == ["val pixel acc", "val mIoU"]
    assert list(acc_ax.lines[1].get_xdata()) == [2]  # the NaN mIoU is not plotted
    with pytest.raises(ValueError):
        plot_training_curves([], tmp_path / "empty.png")


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    # a folder under a regular file cannot be created, even by root
    with pytest.raises(FcnsegError, match="a_file"):
        write_mask(blocker / "sub" / "m.png", np.zeros((2, 2), dtype=int), PALETTE)
    with pytest.raises(FcnsegError, match="a_file"):
        save_image(np.zeros((2, 2, 3), dtype=np.uint8), blocker / "x.png")


def test_failed_write_leaves_no_file(tmp_path):
    class Boom(Exception):
        pass

    from fcnseg.fileio import atomic_write

    def write(f):
        f.write(b"partial")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(tmp_path / "x.png", write)
    assert list(tmp_path.iterdir()) == []
