"""``fcnseg export``: a trained model as one ONNX file that needs nothing else to run.

The graph is normalisation -> FCN (its pad-to-32 and crop back included) -> softmax, so the
file's contract is plain: input ``image``, float32 ``N x 3 x H x W`` RGB pixels in 0-255,
any N, H and W; outputs ``probs``, float32 ``N x C x H x W`` class probabilities of the same
size, and ``labels``, uint8 ``N x H x W`` class ids (their argmax, computed in the graph so
that a runtime asked for masks hands back one byte a pixel instead of C floats). Class
names, palette, normalisation, ignore index, the fcnseg version and the source checkpoint's
sha256 travel as ONNX metadata (``fcnseg.*`` keys).

PyTorch's TorchScript-based exporter (``dynamo=False``) is used: it exports the dynamic
N/H/W of this model, where torch 2.14's default dynamo exporter failed on the batch axis.

Before it reports success, the export runs the file and compares it with PyTorch; a
disagreement is an error and no file is left. An fp32 file must match to rounding on two
sizes (one odd), on ONNX Runtime. An int8 file (NNCF's quantization, run on the ONNX graph:
the file stays one .onnx that ONNX Runtime and OpenVINO both run) must keep fp32's mIoU on
real validation images on every runtime that runs it (:mod:`.quantize`).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..checkpoint import model_from_checkpoint
from ..data.meta import DatasetMeta
from ..data.transforms import Normalize
from ..errors import FcnsegError
from ..fileio import atomic_write, check_output_file
from ..models.batchnorm import fold_batchnorm
from .quantize import (
    INT8_MAX_MIOU_DROP,
    calibration_images,
    check_int8,
    check_samples,
    quantize,
)
from .runtimes import ARGS_KEY, CONFIG_KEY, META_KEY, PRECISION_KEY, OnnxRuntime, require

OPSET = 17
CHECK_SIZES = ((375, 500), (96, 131))  # an odd VOC-like size and a small one, batch 2
# An fp32 file must agree with PyTorch to rounding.
FP32_TOLERANCE = {"max_abs": 1e-3, "agreement": 0.999}
# The ``labels`` output's type: class ids fit a byte (255 is the ignore index).
LABEL_DTYPE = torch.uint8


class Deployable(nn.Module):
    """Normalisation + the FCN + softmax: what an exported file computes."""

    def __init__(self, model: nn.Module, meta: DatasetMeta) -> None:
        super().__init__()
        self.model = model
        normalize = Normalize(meta.mean, meta.std)  # the training transform's x * a - b
        self.register_buffer("a", normalize.a[None])
        self.register_buffer("b", normalize.b[None])

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs, labels)``: softmax probabilities and the class ids (their argmax, as
        uint8), so that a runtime asked for masks copies out one byte a pixel, not C floats."""
        logits = self.model(image * self.a - self.b)["out"]
        return logits.softmax(1), logits.argmax(1).to(LABEL_DTYPE)


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how closely it agrees with PyTorch."""

    path: Path
    precision: str
    checks: list[dict[str, Any]]
    calibration_images: int = 0
    quality: dict[str, Any] | None = None  # int8: agreement and mIoU against fp32


def export_onnx(checkpoint: str | Path, out: str | Path, *, int8: bool = False,
                calibration: str | Path | None = None, calibration_size: int = 32,
                check_size: int = 24, max_miou_drop: float = INT8_MAX_MIOU_DROP,
                progress: Any = print) -> ExportReport:
    """Export ``checkpoint`` to ``out`` (.onnx), int8-quantized if ``int8``, checked.

    ``calibration`` is a folder of images for int8 calibration (default: the checkpoint's
    training split); ``calibration_size`` images of it are used. ``check_size`` images of
    the checkpoint's validation split (or, without one, of the calibration images) judge
    an int8 file, whose mIoU may fall at most ``max_miou_drop`` below fp32's.
    """
    onnx = require("onnx", "export")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise FcnsegError(f"--out {out}: an exported model's name ends in .onnx")
    if calibration_size < 1 or check_size < 1:
        raise FcnsegError(f"--calibration-size {calibration_size} and --check-size "
                          f"{check_size} must be at least 1")
    if not 0 <= max_miou_drop <= 1:
        raise FcnsegError(f"--max-miou-drop {max_miou_drop}: give an mIoU difference "
                          "between 0 and 1, e.g. 0.005")
    check_output_file(out, "--out")
    model, meta, ckpt = model_from_checkpoint(checkpoint)
    deployable = Deployable(fold_batchnorm(model), meta).eval()
    config = ckpt.get("config") or {}
    images = calibration_images(config, calibration, calibration_size) if int8 else []
    precision = "int8" if int8 else "fp32"
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fcnseg-export.") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        _trace(deployable, fp32)
        path = fp32
        if int8:
            progress(f"fcnseg: calibrating int8 on {len(images)} images")
            path = quantize(fp32, Path(tmp) / "int8.onnx", images)
        graph = onnx.load(str(path))
        _add_metadata(graph, meta, ckpt, checkpoint, precision)
        checked = Path(tmp) / "checked.onnx"
        onnx.save(graph, str(checked))
        checks = [] if int8 else check_fp32(deployable, checked, progress)
        quality = None
        if int8:
            samples = check_samples(config, images, check_size)
            quality = check_int8(deployable, checked, samples, meta, progress, max_miou_drop)
        data = checked.read_bytes()
        atomic_write(out, lambda f: f.write(data))
    return ExportReport(out, precision, checks, len(images), quality)


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
                          input_names=["image"], output_names=["probs", "labels"],
                          dynamic_axes={"image": axes, "probs": axes,
                                        "labels": {0: "N", 1: "H", 2: "W"}})


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
        "fcnseg.output": "probs: float32 N x C x H x W softmax probabilities; labels: uint8 "
                         "N x H x W class ids (their argmax); the input's H x W",
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


def check_fp32(deployable: nn.Module, path: Path,
               progress: Any = print) -> list[dict[str, Any]]:
    """Run ``path`` with ONNX Runtime and PyTorch on :data:`CHECK_SIZES`; raise on mismatch."""
    runtime = OnnxRuntime(path)
    limits = FP32_TOLERANCE
    checks = []
    for i, (h, w) in enumerate(CHECK_SIZES):
        x = _check_batch(h, w, seed=i)
        with torch.no_grad():
            ref, ref_labels = deployable(x)
        got = torch.from_numpy(np.ascontiguousarray(runtime(x.numpy())))
        labels = torch.from_numpy(runtime.labels(x.numpy()))
        if got.shape != ref.shape or labels.shape != ref_labels.shape:
            raise FcnsegError(f"the export gives {tuple(got.shape)} for a {tuple(x.shape)} "
                              f"input where PyTorch gives {tuple(ref.shape)}")
        check = {"size": [h, w], "batch": x.shape[0],
                 "max_abs": float((got - ref).abs().max()),
                 "agreement": min(float((got.argmax(1) == ref.argmax(1)).float().mean()),
                                  float((labels == ref_labels).float().mean()))}
        checks.append(check)
        progress(f"fcnseg: check {x.shape[0]} x {h} x {w}: max |p_onnx - p_torch| "
                 f"{check['max_abs']:.2e}, argmax agreement {100 * check['agreement']:.2f} %")
        if check["max_abs"] > limits["max_abs"] or check["agreement"] < limits["agreement"]:
            raise FcnsegError(f"the fp32 export disagrees with PyTorch at {h} x {w} "
                              f"(max difference {check['max_abs']:.2e}, agreement "
                              f"{100 * check['agreement']:.2f} %, needs >= "
                              f"{100 * limits['agreement']:.1f} %); nothing was written")
    return checks


def _check_batch(h: int, w: int, seed: int) -> torch.Tensor:
    """Two ``h x w`` images of smooth noise (blocky colours, closer to a photo than white
    noise): fp32 must match PyTorch on any input."""
    from PIL import Image

    g = np.random.default_rng(seed)
    small = g.integers(0, 256, (2, max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    arrays = [np.asarray(Image.fromarray(s).resize((w, h), Image.BILINEAR)) for s in small]
    return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy()).float()


def sha256(path: str | Path) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
