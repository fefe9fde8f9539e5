"""``fcnseg export``: a trained model as one ONNX file that needs nothing else to run.

The graph is normalisation -> FCN (its pad-to-32 and crop back included) -> softmax, so the
file's contract is plain: input ``image``, float32 ``N x 3 x H x W`` RGB pixels in 0-255,
any N, H and W; output ``probs``, float32 ``N x C x H x W`` class probabilities of the same
size. Class names, palette, normalisation, ignore index, the fcnseg version and the source
checkpoint's sha256 travel as ONNX metadata (``fcnseg.*`` keys).

PyTorch's TorchScript-based exporter (``dynamo=False``) is used: it exports the dynamic
N/H/W of this model, where torch 2.14's default dynamo exporter failed on the batch axis.

Before it reports success, the export runs the file with ONNX Runtime on two sizes (one
odd) and compares it with PyTorch; a disagreement is an error and no file is left.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..data import build_dataset
from ..data.io import read_image
from ..data.meta import DatasetMeta
from ..data.transforms import Normalize
from ..engine.checkpoint import model_from_checkpoint
from ..errors import FcnsegError
from ..fileio import atomic_write, check_output_file
from ..models.fusion import fold_batchnorm
from .batch import collect_inputs
from .runtimes import ARGS_KEY, CONFIG_KEY, META_KEY, PRECISION_KEY, OnnxRuntime, require

OPSET = 17
CHECK_SIZES = ((375, 500), (96, 131))  # an odd VOC-like size and a small one, batch 2
# The exported file must agree with PyTorch: fp32 to rounding; int8 as post-training
# quantization allows (per pixel class agreement on real images).
TOLERANCE = {"fp32": {"max_abs": 1e-3, "agreement": 0.999},
             "int8": {"max_abs": 1.0, "agreement": 0.98}}


class Deployable(nn.Module):
    """Normalisation + the FCN + softmax: what an exported file computes."""

    def __init__(self, model: nn.Module, meta: DatasetMeta) -> None:
        super().__init__()
        self.model = model
        normalize = Normalize(meta.mean, meta.std)  # the training transform's x * a - b
        self.register_buffer("a", normalize.a[None])
        self.register_buffer("b", normalize.b[None])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image * self.a - self.b)["out"].softmax(1)


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how closely it agrees with PyTorch."""

    path: Path
    precision: str
    checks: list[dict[str, Any]]
    calibration_images: int = 0


def export_onnx(checkpoint: str | Path, out: str | Path, *, int8: bool = False,
                calibration: str | Path | None = None, calibration_size: int = 32,
                progress: Any = print) -> ExportReport:
    """Export ``checkpoint`` to ``out`` (.onnx), int8-quantized if ``int8``, checked.

    ``calibration`` is a folder of images for int8 calibration (default: the checkpoint's
    training split); ``calibration_size`` images of it are used.
    """
    onnx = require("onnx")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise FcnsegError(f"--out {out}: an exported model's name ends in .onnx")
    if calibration_size < 1:
        raise FcnsegError(f"--calibration-size {calibration_size} must be at least 1")
    check_output_file(out, "--out")
    model, meta, ckpt = model_from_checkpoint(checkpoint)
    deployable = Deployable(fold_batchnorm(model), meta).eval()
    images = _calibration_images(ckpt.get("config") or {}, calibration, calibration_size) \
        if int8 else []
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fcnseg-export.") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        _trace(deployable, fp32)
        path = fp32
        if int8:
            progress(f"fcnseg: calibrating int8 on {len(images)} images")
            path = _quantize(fp32, Path(tmp) / "int8.onnx", images)
        graph = onnx.load(str(path))
        _add_metadata(graph, meta, ckpt, checkpoint, "int8" if int8 else "fp32")
        checked = Path(tmp) / "checked.onnx"
        onnx.save(graph, str(checked))
        checks = check_export(deployable, checked, "int8" if int8 else "fp32", images, progress)
        data = checked.read_bytes()
        atomic_write(out, lambda f: f.write(data))
    return ExportReport(out, "int8" if int8 else "fp32", checks, len(images))


def _trace(deployable: nn.Module, path: Path) -> None:
    example = torch.rand(1, 3, 64, 96) * 255
    axes = {0: "N", 2: "H", 3: "W"}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns that shape-dependent Python values become constants; the
        # pad amounts are not (they are traced from the input's shape), and the
        # self-check on two sizes proves it.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, by choice
        torch.onnx.export(deployable, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=["probs"],
                          dynamic_axes={"image": axes, "probs": axes})


def _add_metadata(graph: Any, meta: DatasetMeta, ckpt: dict[str, Any], source: str | Path,
                  precision: str) -> None:
    config = ckpt.get("config") or {}
    entries = {
        META_KEY: json.dumps(meta.to_dict()),
        ARGS_KEY: json.dumps(ckpt["model_args"]),
        CONFIG_KEY: json.dumps({k: config.get(k) for k in ("dataset", "data_dir", "split",
                                                            "val_split", "data_options")}),
        PRECISION_KEY: precision,
        "fcnseg.version": __version__,
        "fcnseg.checkpoint_sha256": sha256(source),
        "fcnseg.input": "image: float32 N x 3 x H x W, RGB pixels 0-255 (normalised inside), "
                        "any N, H, W",
        "fcnseg.output": "probs: float32 N x C x H x W softmax probabilities, the input's H x W",
        "fcnseg.classes": json.dumps(meta.class_names),
        "fcnseg.palette": json.dumps([list(c) for c in meta.palette]),
        "fcnseg.ignore_index": str(meta.ignore_index),
    }
    del graph.metadata_props[:]
    for key, value in entries.items():
        prop = graph.metadata_props.add()
        prop.key, prop.value = key, value
    graph.producer_name, graph.producer_version = "fcnseg", __version__
    graph.doc_string = f"FCN {ckpt['model_args'].get('name')} for {meta.name}: " \
                       f"{meta.num_classes} classes"


def check_export(deployable: nn.Module, path: Path, precision: str,
                 images: list[np.ndarray], progress: Any = print) -> list[dict[str, Any]]:
    """Run ``path`` with ONNX Runtime and PyTorch on :data:`CHECK_SIZES`; raise on mismatch."""
    runtime = OnnxRuntime(path)
    limits = TOLERANCE[precision]
    checks = []
    for i, (h, w) in enumerate(CHECK_SIZES):
        x = _check_batch(images, h, w, seed=i)
        with torch.no_grad():
            ref = deployable(x)
        got = runtime(x)
        if got.shape != ref.shape:
            raise FcnsegError(f"the export gives {tuple(got.shape)} for a {tuple(x.shape)} "
                              f"input where PyTorch gives {tuple(ref.shape)}")
        check = {"size": [h, w], "batch": x.shape[0],
                 "max_abs": float((got - ref).abs().max()),
                 "agreement": float((got.argmax(1) == ref.argmax(1)).float().mean())}
        checks.append(check)
        progress(f"fcnseg: check {x.shape[0]} x {h} x {w}: max |p_onnx - p_torch| "
                 f"{check['max_abs']:.2e}, argmax agreement {100 * check['agreement']:.2f} %")
        if check["max_abs"] > limits["max_abs"] or check["agreement"] < limits["agreement"]:
            raise FcnsegError(f"the {precision} export disagrees with PyTorch at {h} x {w} "
                              f"(max difference {check['max_abs']:.2e}, agreement "
                              f"{100 * check['agreement']:.2f} %, needs >= "
                              f"{100 * limits['agreement']:.1f} %); nothing was written")
    return checks


def _check_batch(images: list[np.ndarray], h: int, w: int, seed: int) -> torch.Tensor:
    """Two check images of ``h x w``: real ones (calibration) when there are, else noise."""
    from PIL import Image

    if images:
        picks = [images[(seed * 2 + k) % len(images)] for k in range(2)]
        arrays = [np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR)) for a in picks]
    else:
        g = np.random.default_rng(seed)
        # smooth noise: blocky colours, closer to a photo than white noise
        small = g.integers(0, 256, (2, max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
        arrays = [np.asarray(Image.fromarray(s).resize((w, h), Image.BILINEAR)) for s in small]
    return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy()).float()


def _calibration_images(config: dict[str, Any], folder: str | Path | None,
                        count: int) -> list[np.ndarray]:
    """``count`` images spread over ``folder`` or the checkpoint's training split."""
    if folder is not None:
        files, _ = collect_inputs([str(folder)])
        if not files:
            raise FcnsegError(f"--calibration {folder} has no images: give a folder of "
                              "images like those the model will see")
        return [read_image(f) for f in _spread(files, count)]
    if not config.get("dataset") or not config.get("data_dir"):
        raise FcnsegError("the checkpoint names no training data: give --calibration DIR")
    try:
        ds = build_dataset(config["dataset"], config["data_dir"], config.get("split", "train"),
                           **(config.get("data_options") or {}))
    except FcnsegError as exc:
        raise FcnsegError(f"cannot read the checkpoint's training data for calibration "
                          f"({exc}); give --calibration DIR") from exc
    return [ds.read_raw(i)[0] for i in _spread(list(range(len(ds))), count)]


def _spread(items: list, count: int) -> list:
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)] \
        if count > 1 else items[:1]


def _quantize(fp32: Path, out: Path, images: list[np.ndarray]) -> Path:
    """Static int8 QDQ quantization (per-channel weights) calibrated on ``images``."""
    q = require("onnxruntime.quantization")

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.items: Iterator[dict[str, np.ndarray]] = iter(
                {"image": img.transpose(2, 0, 1)[None].astype(np.float32)} for img in images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    prepared = out.with_name("prepared.onnx")
    q.quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    q.quantize_static(str(prepared), str(out), Reader(), quant_format=q.QuantFormat.QDQ,
                      per_channel=True, activation_type=q.QuantType.QUInt8,
                      weight_type=q.QuantType.QInt8,
                      calibrate_method=q.CalibrationMethod.MinMax)
    return out


def sha256(path: str | Path) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
