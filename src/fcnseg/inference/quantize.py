"""int8 exports: NNCF's post-training quantization, and the check that judges the result.

An int8 file is judged by what a user cares about: on real images of the checkpoint's
validation split at their own size, its mIoU against the ground truth may fall by at most
``max_drop`` (:data:`INT8_MAX_MIOU_DROP` unless asked) from fp32's, and its pixels must
agree with fp32's (:data:`INT8_MIN_AGREEMENT`), on every runtime that runs an ``.onnx``
here: ONNX Runtime, and OpenVINO (the default for ``.onnx``) where it is installed, since
their int8 kernels differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import build_dataset
from ..data.io import read_image
from ..data.meta import DatasetMeta
from ..errors import FcnsegError
from .batch import collect_inputs
from .runtimes import OnnxRuntime, OpenVinoRuntime, importable, require

if TYPE_CHECKING:  # PyTorch is imported by the functions that judge: the constants are
    import torch  # read by `fcnseg export --help`, which the torch-free install lists too
    from torch import nn

# An int8 file, on real validation images at their own size: mIoU at most this much below
# fp32's (when the images have masks), and at least this share of pixels labelled as fp32
# labels them (a floor against a broken quantization; it is the only test without masks).
INT8_MAX_MIOU_DROP = 0.01
INT8_MIN_AGREEMENT = 0.95
# ONNX node names (a regular expression) of the FCN's head, the 1x1 score convs and the
# transposed convs (~1 % of the FLOPs, but every class boundary goes through them).
HEAD_PATTERN = r".*/model/(score\d+|up\d+to\d+|upsample)/.*"


def check_int8(deployable: nn.Module, path: Path, samples: list[tuple[np.ndarray, Any]],
               meta: DatasetMeta, progress: Any = print,
               max_drop: float = INT8_MAX_MIOU_DROP) -> dict[str, Any]:
    """Label ``samples`` (image, mask or None) with fp32 PyTorch and with the int8 file on
    each runtime that runs it here, at their own size; raise unless every runtime keeps
    the mIoU within ``max_drop`` and agrees as :data:`INT8_MIN_AGREEMENT` asks. Returns the
    worst runtime's agreement and mIoUs, and each runtime's under ``"runtimes"``."""
    import torch

    refs = []
    for image, _ in samples:
        with torch.no_grad():
            refs.append(deployable(_batch(image))[1][0])
    judged = {name: _judge(rt, samples, refs, meta) for name, rt in _runtimes(path).items()}
    for name, q in judged.items():
        progress(f"fcnseg: int8 ({name}) against fp32 on {len(samples)} images at their own "
                 f"size: {100 * q['agreement']:.2f} % of pixels agree"
                 + (f", mIoU {q['miou_int8']:.4f} against {q['miou_fp32']:.4f}"
                    if "miou_drop" in q else " (no masks: mIoU not compared)"))
    failing = [(name, q) for name, q in judged.items()
               if q.get("miou_drop", 0.0) > max_drop or q["agreement"] < INT8_MIN_AGREEMENT]
    if failing:
        name, q = failing[0]
        raise FcnsegError(
            f"the int8 export is not good enough on {name}: mIoU "
            f"{q.get('miou_drop', 0.0):+.4f} below fp32 (at most {max_drop}), "
            f"{100 * q['agreement']:.2f} % of pixels agree (at least "
            f"{100 * INT8_MIN_AGREEMENT:.0f} %); nothing was written: export fp32, or "
            "calibrate on more images like the model's (--calibration-size)")
    worst = max(judged.values(), key=lambda q: (q.get("miou_drop", 0.0), -q["agreement"]))
    return {"images": len(samples), **worst, "runtimes": judged}


def _runtimes(path: Path) -> dict[str, Any]:
    found: dict[str, Any] = {"onnxruntime": OnnxRuntime(path)}
    if importable("openvino"):
        found["openvino"] = OpenVinoRuntime(path)
    return found


def _batch(image: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32))


def _judge(runtime: Any, samples: list[tuple[np.ndarray, Any]], refs: list[torch.Tensor],
           meta: DatasetMeta) -> dict[str, Any]:
    """One runtime's agreement with fp32's labels and, with masks, both mIoUs."""
    import torch

    from ..metrics import ConfusionMatrix

    scores = {name: ConfusionMatrix(meta.num_classes, meta.ignore_index)
              for name in ("fp32", "int8")}
    same = total = 0
    for (image, mask), ref in zip(samples, refs, strict=True):
        got = torch.from_numpy(runtime.labels(_batch(image).numpy())[0])
        same, total = same + int((got == ref).sum()), total + ref.numel()
        if mask is not None:
            target = torch.from_numpy(mask.astype(np.int64))
            scores["fp32"].update(ref, target)
            scores["int8"].update(got, target)
    quality: dict[str, Any] = {"agreement": same / total}
    if any(mask is not None for _, mask in samples):
        quality.update({f"miou_{k}": float(v.compute()["miou"]) for k, v in scores.items()})
        quality["miou_drop"] = quality["miou_fp32"] - quality["miou_int8"]
    return quality


def calibration_images(config: dict[str, Any], folder: str | Path | None,
                       count: int) -> list[np.ndarray]:
    """``count`` images spread over ``folder`` or the checkpoint's training split."""
    if folder is not None:
        files, _ = collect_inputs([str(folder)])
        if not files:
            raise FcnsegError(f"--calibration {folder} has no images: give a folder of "
                              "images like those the model will see")
        return [read_image(f) for f in spread(files, count)]
    if not config.get("dataset") or not config.get("data_dir"):
        raise FcnsegError("the checkpoint names no training data: give --calibration DIR")
    try:
        ds = build_dataset(config["dataset"], config["data_dir"], config.get("split", "train"),
                           **(config.get("data_options") or {}))
    except FcnsegError as exc:
        raise FcnsegError(f"cannot read the checkpoint's training data for calibration "
                          f"({exc}); give --calibration DIR") from exc
    return [ds.read_raw(i)[0] for i in spread(list(range(len(ds))), count)]


def check_samples(config: dict[str, Any], images: list[np.ndarray],
                  count: int) -> list[tuple[np.ndarray, Any]]:
    """``count`` (image, mask) pairs of the checkpoint's validation split; without one,
    the calibration images, unlabelled."""
    if config.get("dataset") and config.get("data_dir"):
        try:
            ds = build_dataset(config["dataset"], config["data_dir"],
                               config.get("val_split", "val"),
                               **(config.get("data_options") or {}))
            if len(ds):
                return [ds.read_raw(i) for i in spread(list(range(len(ds))), count)]
        except FcnsegError:
            pass  # no validation data here: judge on the calibration images alone
    return [(image, None) for image in spread(images, count)]


def spread(items: list, count: int) -> list:
    """``count`` of ``items`` evenly spaced from the first to the last (all if fewer)."""
    if len(items) <= count:
        return items
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)] \
        if count > 1 else items[:1]


def quantize(fp32: Path, out: Path, images: list[np.ndarray]) -> Path:
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
