"""``Predictor``: a trained model ready to segment images, whatever file and runtime it is.

The one inference path of fcnseg: ``predict``, ``evaluate``, ``demo``, the training loop's
validation and ``fcnseg serve`` all go through it. Like torchvision's weights, it carries
what the model needs (classes, palette, normalisation); like smp's ``model.predict``,
inference is a method::

    p = Predictor.from_file("runs/camvid/best.pt")      # or model.onnx
    mask = p.predict("street.png")                       # H x W uint8 class ids
    probs = p.predict_proba(image)                       # C x H x W float32
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.io import ImageTooLargeError, read_image
from ..data.meta import DatasetMeta
from ..device import available_memory, fits_in_memory, pass_bytes
from ..errors import OptionError
from .runtimes import load_runtime
from .tiling import InferenceOptions, predict_grouped, slide_labels

ImageLike = Any  # a path (str / Path), a PIL image, or an H x W x 3 uint8 array


class Predictor:
    """A model + its classes + normalisation + precision + inference options, ready to use.

    Build one with :meth:`from_file` (a ``.pt`` checkpoint or an exported model) or
    :meth:`from_model` (a PyTorch model in memory). ``options`` are the pad/slide and
    test-time augmentation settings (:class:`InferenceOptions`), checked once.
    """

    def __init__(self, runtime: Any, meta: DatasetMeta,
                 options: InferenceOptions | None = None, source: str | None = None,
                 info: dict[str, Any] | None = None, reason: str = "") -> None:
        self._runtime, self.meta = runtime, meta
        self.options = options or InferenceOptions()
        self.source, self.info, self.reason = source, info or {}, reason
        # Images smaller than a sliding tile are padded with the mean colour (in 0-255).
        self._fill = np.float32([255 * m for m in meta.mean]).reshape(3, 1, 1)

    @classmethod
    def from_file(cls, path: str | Path, *, runtime: str = "auto", device: str = "auto",
                  precision: str = "auto", streams: int = 1, **options: Any) -> Predictor:
        """Load a checkpoint (``.pt``) or an exported model (``.onnx``).

        ``runtime`` "auto" follows the file type (``.onnx``: OpenVINO where it is
        installed, else ONNX Runtime); ``precision`` "auto" picks bf16 only on CPUs with
        bf16 units. ``streams`` > 1 lets an exported model's runtime serve that many calls
        at once, from as many threads (folders, servers; :attr:`streams`). ``options`` are
        :class:`InferenceOptions` fields.
        """
        rt, meta, info, reason = load_runtime(path, runtime, device, precision, streams)
        return cls(rt, meta, InferenceOptions(**options), str(path), info, reason)

    @classmethod
    def from_model(cls, model: Any, meta: DatasetMeta, dtype: Any = None,
                   **options: Any) -> Predictor:
        """Wrap a PyTorch model in memory (no copy: training validation uses the live model);
        ``dtype`` bf16/fp16 runs it under autocast (default fp32)."""
        import torch

        from .torch_model import TorchRuntime, model_device

        device = model_device(model)
        rt = TorchRuntime(model, meta, device, dtype or torch.float32)
        return cls(rt, meta, InferenceOptions(**options), reason=f"torch on {device}")

    def with_options(self, **changes: Any) -> Predictor:
        """The same model with other inference options (the runtime is shared, not copied)."""
        return Predictor(self._runtime, self.meta, dataclasses.replace(self.options, **changes),
                         self.source, self.info, self.reason)

    # -- what the model is --------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.meta.class_names)

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return [tuple(c) for c in self.meta.palette]

    @property
    def runtime(self) -> str:
        """``"torch"``, ``"onnxruntime"`` or ``"openvino"``."""
        return self._runtime.name

    @property
    def streams(self) -> int:
        """How many calls the runtime serves at once: keep that many images in flight, each
        from its own thread, to use every core (1: one call uses them all)."""
        return getattr(self._runtime, "streams", 1)

    @property
    def precision(self) -> str:
        """``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"int8"``: what the runtime computes in."""
        return self._runtime.precision

    def __repr__(self) -> str:
        return (f"Predictor({self.source or self.meta.name!r}, {self.meta.num_classes} classes, "
                f"runtime={self.runtime}, precision={self.precision}, mode={self.options.mode})")

    # -- inference ----------------------------------------------------------------------------
    def predict_proba(self, image: ImageLike) -> np.ndarray:
        """Class probabilities of one image: ``C x H x W`` float32 at the image's size."""
        return np.ascontiguousarray(self.predict_many([image])[0])

    def predict(self, image: ImageLike) -> np.ndarray:
        """Class ids of one image: ``H x W`` uint8 at the image's exact size."""
        return self.predict_labels([image])[0]

    def predict_labels(self, images: Sequence[ImageLike]) -> list[np.ndarray]:
        """Class ids (``H x W`` uint8 arrays) of images of any sizes.

        A plain whole-image pass asks the runtime for class ids directly (an export computes
        the argmax in its graph, a PyTorch model on its device), so no ``C x H x W``
        probabilities are made; test-time augmentation averages probabilities first, and
        tiles keep them for one band of rows at a time (:func:`slide_labels`).
        """
        return [p if p.ndim == 2 else p.argmax(0).astype(np.uint8)
                for p in self._predict(images, labels=True)]

    def predict_many(self, images: Sequence[ImageLike]) -> list[np.ndarray]:
        """Probabilities (``C x H x W`` float32 arrays) of images of any sizes.

        Images of equal size go through the model together (one batch). An image too large
        for a whole-image pass (:meth:`fits_whole`) is predicted with overlapping tiles.
        """
        return self._predict(images, labels=False)

    def predict_video(self, path: str | Path) -> Iterator[np.ndarray]:
        """Class ids (``H x W`` uint8) of each frame of a video file, frame by frame, in
        order; :attr:`streams` frames in the model at once (PyAV: ``fcnseg[video]``)."""
        from .video import predict_frames

        for _, mask in predict_frames(self, path):
            yield mask

    def _predict(self, images: Sequence[ImageLike], labels: bool) -> list[np.ndarray]:
        """Whole-image passes for the images that fit one (equal sizes batched), tiles for
        the rest; class ids where ``labels`` and nothing needs probabilities."""
        rgb = [to_image(img) for img in images]
        for img in rgb:  # before the float copy of any of them is made
            self.check_memory(*img.shape[:2], labels=labels)
        whole = [i for i, img in enumerate(rgb) if self.fits_whole(*img.shape[:2])]
        opts = self.options
        plain = labels and opts.mode == "pad" and not opts.flip and opts.scales == (1.0,) \
            and hasattr(self._runtime, "labels")
        results = predict_grouped(self._runtime.labels if plain else self._runtime,
                                  [chw(rgb[i]) for i in whole], opts, self._fill)
        out: list[np.ndarray] = [np.empty(0)] * len(rgb)
        for i, p in zip(whole, results, strict=True):
            out[i] = p
        tiled = self.tiled_options
        for i in sorted(set(range(len(rgb))) - set(whole)):
            if labels and opts.scales == (1.0,):  # a band of probabilities at a time
                out[i] = slide_labels(self._runtime, rgb[i], tiled, self._fill)
            else:
                out[i] = predict_grouped(self._runtime, [chw(rgb[i])], tiled, self._fill)[0]
        return out

    def fits_whole(self, height: int, width: int) -> bool:
        """Whether ``height x width`` is predicted in one pass: mode "pad", at most
        ``options.max_whole_pixels`` (when set), and within half the free memory.

        A pass needs :func:`~fcnseg.device.pass_bytes`; sliding tiles need
        :meth:`tiled_need`.
        """
        limit = self.options.max_whole_pixels
        if self.options.mode == "slide" or (limit and height * width > limit):
            return False
        return fits_in_memory(pass_bytes(height * width, self.meta.num_classes))

    def tiled_need(self, height: int, width: int, labels: bool = False) -> int:
        """Bytes a tiled pass over ``height x width`` needs however small its tiles: one
        batch of tiles, and for class ids the image, its ids, an overlay and its encoder's
        copy (10 bytes a pixel) and one band of probabilities (:func:`slide_labels`), else
        the image's float copy, its probabilities and their running sum."""
        pixels, classes = height * width, self.meta.num_classes
        tile_h, tile_w = self.options.tile
        tiles = pass_bytes(self.options.tile_batch * tile_h * tile_w, classes)
        if labels and self.options.scales == (1.0,):
            return pixels * 10 + 3 * classes * tile_h * max(width, tile_w) * 4 + tiles
        return pixels * (12 + 8 * classes) + tiles

    def check_memory(self, height: int, width: int, name: str = "image",
                     labels: bool = False) -> None:
        """Raise :class:`ImageTooLargeError` (one line) when even a tiled pass over a
        ``height x width`` image cannot fit in the memory this process can still use."""
        need, free = self.tiled_need(height, width, labels), available_memory()
        if need > free:
            raise ImageTooLargeError(
                f"{name}: {height} x {width} needs about {need / 2**30:.1f} GiB to predict "
                f"even by tiles, and this process can use {free / 2**30:.1f} GiB: resize it "
                "or split it into parts")

    @property
    def tiled_options(self) -> InferenceOptions:
        """The options with sliding tiles, for images too large for a whole pass."""
        return dataclasses.replace(self.options, mode="slide")


def to_image(image: ImageLike) -> np.ndarray:
    """An ``H x W x 3`` uint8 RGB array from a path, PIL image, array or tensor."""
    if isinstance(image, (str, Path)):
        image = read_image(image)
    elif hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):  # a tensor
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image)
        raise OptionError(f"expected an image path, a PIL image or an H x W x 3 uint8 array, "
                          f"got {got}")
    return image


def chw(image: np.ndarray) -> np.ndarray:
    """The ``3 x H x W`` float32 pixels (0-255) of an ``H x W x 3`` uint8 image."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)

