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

Before it reports success, the export runs the file with ONNX Runtime and compares it with
PyTorch; a disagreement is an error and no file is left. An fp32 file must match to
rounding on two sizes (one odd). An int8 file is judged by what a user cares about: on real
images of the checkpoint's validation split at their own size, its mIoU against the
ground truth may fall by at most :data:`INT8_MAX_MIOU_DROP` from fp32's, and its pixels
must agree with fp32's (:data:`INT8_MIN_AGREEMENT`). int8 models are quantized with NNCF
(OpenVINO's post-training quantization, run on the ONNX graph: the file stays one .onnx
that ONNX Runtime and OpenVINO both run).
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
from ..data import build_dataset
from ..data.io import read_image
from ..data.meta import DatasetMeta
from ..data.transforms import Normalize
from ..errors import FcnsegError
from ..fileio import atomic_write, check_output_file
from ..metrics import ConfusionMatrix
from ..models.batchnorm import fold_batchnorm
from .batch import collect_inputs
from .runtimes import ARGS_KEY, CONFIG_KEY, META_KEY, PRECISION_KEY, OnnxRuntime, require

OPSET = 17
CHECK_SIZES = ((375, 500), (96, 131))  # an odd VOC-like size and a small one, batch 2
# An fp32 file must agree with PyTorch to rounding.
FP32_TOLERANCE = {"max_abs": 1e-3, "agreement": 0.999}
# An int8 file, on real validation images at their own size: mIoU at most this much below
# fp32's (when the images have masks), and at least this share of pixels labelled as fp32
# labels them (a floor against a broken quantization; it is the only test without masks).
INT8_MAX_MIOU_DROP = 0.01
INT8_MIN_AGREEMENT = 0.95
# ONNX node names (a regular expression) of the FCN's head, the 1x1 score convs and the
# transposed convs (~1 % of the FLOPs, but every class boundary goes through them).
HEAD_PATTERN = r".*/model/(score\d+|up\d+to\d+|upsample)/.*"
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
                check_size: int = 24, progress: Any = print) -> ExportReport:
    """Export ``checkpoint`` to ``out`` (.onnx), int8-quantized if ``int8``, checked.

    ``calibration`` is a folder of images for int8 calibration (default: the checkpoint's
    training split); ``calibration_size`` images of it are used. ``check_size`` images of
    the checkpoint's validation split (or, without one, of the calibration images) judge
    an int8 file.
    """
    onnx = require("onnx", "export")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise FcnsegError(f"--out {out}: an exported model's name ends in .onnx")
    if calibration_size < 1 or check_size < 1:
        raise FcnsegError(f"--calibration-size {calibration_size} and --check-size "
                          f"{check_size} must be at least 1")
    check_output_file(out, "--out")
    model, meta, ckpt = model_from_checkpoint(checkpoint)
    deployable = Deployable(fold_batchnorm(model), meta).eval()
    config = ckpt.get("config") or {}
    images = _calibration_images(config, calibration, calibration_size) if int8 else []
    precision = "int8" if int8 else "fp32"
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fcnseg-export.") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        _trace(deployable, fp32)
        path = fp32
        if int8:
            progress(f"fcnseg: calibrating int8 on {len(images)} images")
            path = _quantize(fp32, Path(tmp) / "int8.onnx", images)
        graph = onnx.load(str(path))
        _add_metadata(graph, meta, ckpt, checkpoint, precision)
        checked = Path(tmp) / "checked.onnx"
        onnx.save(graph, str(checked))
        checks = [] if int8 else check_fp32(deployable, checked, progress)
        quality = None
        if int8:
            samples = _check_samples(config, images, check_size)
            quality = check_int8(deployable, checked, samples, meta, progress)
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


def check_int8(deployable: nn.Module, path: Path, samples: list[tuple[np.ndarray, Any]],
               meta: DatasetMeta, progress: Any = print) -> dict[str, Any]:
    """Label ``samples`` (image, mask or None) with the int8 file (ONNX Runtime) and with
    fp32 PyTorch at their own size; raise unless they agree as :data:`INT8_MAX_MIOU_DROP`
    and :data:`INT8_MIN_AGREEMENT` ask. Returns the agreement and, with masks, both mIoUs."""
    runtime = OnnxRuntime(path)
    truth = [m for _, m in samples if m is not None]
    scores = {name: ConfusionMatrix(meta.num_classes, meta.ignore_index)
              for name in ("fp32", "int8")}
    same = total = 0
    for image, mask in samples:
        x = torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32))
        with torch.no_grad():
            ref = deployable(x)[1][0]
        got = torch.from_numpy(runtime.labels(x.numpy())[0])
        same, total = same + int((got == ref).sum()), total + ref.numel()
        if mask is not None:
            target = torch.from_numpy(mask.astype(np.int64))
            scores["fp32"].update(ref, target)
            scores["int8"].update(got, target)
    quality: dict[str, Any] = {"images": len(samples), "agreement": same / total}
    if truth:
        quality.update({f"miou_{k}": float(v.compute()["miou"]) for k, v in scores.items()})
        quality["miou_drop"] = quality["miou_fp32"] - quality["miou_int8"]
    progress(f"fcnseg: int8 against fp32 on {len(samples)} images at their own size: "
             f"{100 * quality['agreement']:.2f} % of pixels agree"
             + (f", mIoU {quality['miou_int8']:.4f} against {quality['miou_fp32']:.4f}"
                if truth else " (no masks: mIoU not compared)"))
    drop = quality.get("miou_drop", 0.0)
    if drop > INT8_MAX_MIOU_DROP or quality["agreement"] < INT8_MIN_AGREEMENT:
        raise FcnsegError(
            f"the int8 export is not good enough: mIoU {drop:+.4f} below fp32 (at most "
            f"{INT8_MAX_MIOU_DROP}), {100 * quality['agreement']:.2f} % of pixels agree (at "
            f"least {100 * INT8_MIN_AGREEMENT:.0f} %); nothing was written: export fp32, or "
            "calibrate on more images like the model's (--calibration-size)")
    return quality


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


def _check_samples(config: dict[str, Any], images: list[np.ndarray],
                   count: int) -> list[tuple[np.ndarray, Any]]:
    """``count`` (image, mask) pairs of the checkpoint's validation split; without one,
    the calibration images, unlabelled."""
    if config.get("dataset") and config.get("data_dir"):
        try:
            ds = build_dataset(config["dataset"], config["data_dir"],
                               config.get("val_split", "val"),
                               **(config.get("data_options") or {}))
            if len(ds):
                return [ds.read_raw(i) for i in _spread(list(range(len(ds))), count)]
        except FcnsegError:
            pass  # no validation data here: judge on the calibration images alone
    return [(image, None) for image in _spread(images, count)]


def _spread(items: list, count: int) -> list:
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)] \
        if count > 1 else items[:1]


def _quantize(fp32: Path, out: Path, images: list[np.ndarray]) -> Path:
    """Static int8 quantization with NNCF, calibrated on ``images`` at their own size.

    NNCF places the quantizers where OpenVINO's int8 kernels want them, per-channel
    weights, and corrects the biases that quantization shifts; ONNX Runtime's own static
    quantizer lost 0.12 mIoU on an EfficientNet-Lite FCN where NNCF lost none
    (benchmarks/RESULTS.md).
    """
    nncf = require("nncf", "export")
    onnx = require("onnx", "export")
    data = nncf.Dataset([{"image": img.transpose(2, 0, 1)[None].astype(np.float32)}
                         for img in images])
    # The head stays fp32: on the unseen CamVid drive 0006R0 it cut int8's mIoU loss from
    # 0.0046 to 0.0037 at the same speed (benchmarks/RESULTS.md, "int8 recipes").
    head = nncf.IgnoredScope(patterns=[HEAD_PATTERN], validate=False)
    model = nncf.quantize(onnx.load(str(fp32)), data, subset_size=len(images),
                          ignored_scope=head)
    onnx.save(model, str(out))
    return out


def sha256(path: str | Path) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
