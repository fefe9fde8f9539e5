"""read_image / read_mask: modes, bit depths, EXIF, and errors that name the file."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from fcnseg.data.io import read_image, read_mask, write_mask
from fcnseg.errors import DataError


def _rgb(h=6, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_roundtrip(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out, arr)


def test_grayscale_and_la_become_rgb(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(gray).save(tmp_path / "g.png")
    la = Image.fromarray(np.stack([gray, np.full_like(gray, 9)], -1), mode="LA")
    la.save(tmp_path / "la.png")
    for name in ("g.png", "la.png"):
        out = read_image(tmp_path / name)
        assert out.shape == (6, 8, 3)
        for c in range(3):
            np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_drops_alpha_keeping_colour(tmp_path):
    arr = _rgb()
    alpha = np.zeros((6, 8), np.uint8)  # fully transparent: colours must still be kept
    Image.fromarray(np.dstack([arr, alpha]), mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), arr)


def test_cmyk_and_palette_convert(tmp_path):
    Image.new("CMYK", (5, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == (4, 5, 3)
    assert out[..., 0].min() > 200 and out[..., 1:].max() < 60  # cyan-free, magenta+yellow: red
    p = Image.new("P", (5, 4), 3)
    p.putpalette([0, 0, 0] * 3 + [10, 20, 30] + [0, 0, 0] * 252)
    p.save(tmp_path / "p.png")
    assert (read_image(tmp_path / "p.png") == [10, 20, 30]).all()


def test_16bit_grayscale_scaled_not_clipped(tmp_path):
    vals = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(vals).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 128, 255])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def _png16_rgb(arr: np.ndarray, path) -> None:
    """Write a 16-bit-per-channel RGB PNG by hand (PIL cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16bit_rgb_scaled(tmp_path):
    arr = np.zeros((3, 4, 3), np.uint16)
    arr[..., 0], arr[..., 1], arr[..., 2] = 65535, 0x8000, 0x00FF
    _png16_rgb(arr, tmp_path / "c16.png")
    out = read_image(tmp_path / "c16.png")
    assert out.shape == (3, 4, 3)
    assert (out[..., 0] == 255).all() and (out[..., 1] == 128).all() and (out[..., 2] == 0).all()


def test_exif_rotation_applied(tmp_path):
    arr = np.zeros((2, 3, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)  # stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(arr).save(tmp_path / "r.png", exif=exif)
    out = read_image(tmp_path / "r.png")
    assert out.shape == (3, 2, 3)
    np.testing.assert_array_equal(out[0, 1], [255, 0, 0])  # displayed top-right
    assert out.sum() == 255


@pytest.mark.parametrize("kind", ["corrupt", "truncated_png", "truncated_jpg", "text", "missing"])
def test_bad_files_name_the_file(tmp_path, kind):
    path = tmp_path / f"bad_{kind}.png"
    if kind == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    elif kind.startswith("truncated"):
        fmt = "PNG" if kind.endswith("png") else "JPEG"
        Image.fromarray(_rgb(64, 64)).save(path, format=fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("not an image")
    with pytest.raises(DataError, match=f"bad_{kind}.png"):
        read_image(path)
    with pytest.raises(DataError, match=f"bad_{kind}.png"):
        read_mask(path)


def test_truncated_fails_even_if_someone_enabled_truncated_loading(tmp_path, monkeypatch):
    path = tmp_path / "t.jpg"
    Image.fromarray(_rgb(64, 64)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match="t.jpg"):
        read_image(path)


def test_palette_mask_gives_indices_not_colours(tmp_path):
    mask = np.array([[0, 1, 2], [255, 7, 1]], dtype=np.int64)
    # Classes 1 and 7 share a colour: an RGB look-up could not tell them apart.
    pal = [(0, 0, 0)] * 256
    pal[1] = pal[7] = (128, 0, 0)
    write_mask(tmp_path / "m.png", mask, pal)
    assert Image.open(tmp_path / "m.png").mode == "P"
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, mask)


def test_gray_and_rgb_masks(tmp_path):
    vals = np.array([[0, 3], [11, 255]], dtype=np.uint8)
    Image.fromarray(vals).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "l.png"), vals)
    Image.fromarray(np.dstack([vals] * 3)).save(tmp_path / "g.png")  # RGB but gray
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png"), vals)
    colours = [(0, 0, 0), (200, 10, 10), (10, 200, 10)]
    rgb = np.array([[colours[0], colours[2]], [colours[1], (9, 9, 9)]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    out = read_mask(tmp_path / "c.png", colors=colours, ignore_color=(9, 9, 9))
    np.testing.assert_array_equal(out, [[0, 2], [1, 255]])
    with pytest.raises(DataError, match=r"c\.png.*\(9, 9, 9\)"):
        read_mask(tmp_path / "c.png", colors=colours)
    with pytest.raises(DataError, match="c.png"):
        read_mask(tmp_path / "c.png")  # colour mask without colours
