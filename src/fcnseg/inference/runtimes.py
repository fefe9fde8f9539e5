"""Inference runtimes: the engines that turn a batch of images into class probabilities.

Every runtime is a callable ``float32 N x 3 x H x W`` RGB pixels in 0-255 (not normalised)
-> ``float32 N x C x H x W`` softmax probabilities, so that pad/slide/TTA
(:mod:`.functional`) are written once for all of them. Each one normalises as its model
was trained to: PyTorch here, an exported model inside its graph.

* ``torch``: a checkpoint (``.pt``), BatchNorm folded, channels-last, autocast per precision
  (:mod:`.torch_model`, imported only for a checkpoint).
* ``onnxruntime``: an exported ``.onnx`` (fp32 or int8 QDQ), the portable default.
* ``openvino``: an exported ``.onnx``, read directly (``--runtime openvino``); bf16 on CPUs
  with bf16 units (the same rule as PyTorch's ``precision auto``), int8 from an int8 export.

Exported models need neither PyTorch nor the ``onnx`` package: the metadata is read from
the file's protobuf fields directly (:func:`read_onnx_metadata`).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..data.meta import DatasetMeta
from ..device import PRECISIONS as DEVICE_PRECISIONS
from ..device import cpu_has_fast_bf16
from ..errors import CheckpointError, FcnsegError, UnknownNameError, first_line

RUNTIMES = ("torch", "onnxruntime", "openvino")
# File suffix -> the runtime that reads it by default (``runtime="auto"``).
DEFAULT_RUNTIME = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime"}
PRECISIONS = DEVICE_PRECISIONS + ("int8",)  # int8: an export's, not an autocast
# ONNX metadata keys written by `fcnseg export` (plain strings; JSON where structured).
META_KEY, ARGS_KEY, CONFIG_KEY = "fcnseg.meta", "fcnseg.model_args", "fcnseg.config"
PRECISION_KEY = "fcnseg.precision"


class OnnxRuntime:
    """An exported model run by ONNX Runtime on the CPU (fp32, or int8 if exported so)."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_threads()
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        # ONNX Runtime's memory arena keeps its largest pass's blocks and grows past them:
        # ~490 B a pixel for a Lite0 FCN-8s against ~260 without, at the same speed
        # (benchmarks/RESULTS.md, "Deployment install"), and the Predictor's memory checks
        # count what a pass needs, not what an arena keeps.
        options.enable_cpu_mem_arena = False
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime raises its own Fail/InvalidGraph types
            raise CheckpointError(f"{path} is not a readable ONNX model ({first_line(exc)}); "
                                  "export it again with `fcnseg export`") from exc
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.precision = self.metadata.get(PRECISION_KEY, "fp32")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["probs"], {"image": x})[0]


class OpenVinoRuntime:
    """An exported model compiled by OpenVINO for the CPU, with a precision hint."""

    name = "openvino"

    def __init__(self, path: Path, precision: str = "auto", threads: int | None = None) -> None:
        ov = require("openvino")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path} is not a model OpenVINO can read "
                                  f"({first_line(exc)}); export it with `fcnseg export`") from exc
        try:
            self.metadata = read_onnx_metadata(path)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: its metadata is unreadable ({first_line(exc)}); "
                                  "export it again with `fcnseg export`") from exc
        int8 = self.metadata.get(PRECISION_KEY) == "int8"
        if precision == "auto":  # bf16 only where the CPU has bf16 units, as for PyTorch
            precision = "bf16" if cpu_has_fast_bf16() else "fp32"
        if precision not in ("fp32", "bf16"):
            raise FcnsegError(f"--precision {precision} with openvino: use auto, fp32 or bf16")
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": threads or cpu_threads(),
                  "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(model, "CPU", config)
        self.precision = "int8" if int8 else precision

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.compiled({"image": x})[self.compiled.output("probs")].copy()


def load_runtime(path: str | Path, runtime: str = "auto", device: str = "auto",
                 precision: str = "auto") -> tuple[Any, DatasetMeta, dict[str, Any], str]:
    """Open ``path`` with a runtime: ``(runtime, meta, info, reason)``.

    ``info`` has the model's ``model_args`` and training ``config`` (what evaluate needs to
    find the data). ``reason`` says in words which runtime and precision run, and why.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder: give a checkpoint file in it, e.g. "
                              f"{path / 'best.pt'}, or an exported model.onnx")
    name = _runtime_name(path, runtime)
    if precision not in PRECISIONS:
        raise UnknownNameError("precision", precision, PRECISIONS)
    if name == "torch":
        if precision == "int8":
            raise FcnsegError("--precision int8 needs an int8 export: fcnseg export --int8 ...")
        require("torch", "train", f"reading {path} (a PyTorch checkpoint) ")
        from .torch_model import load_torch_runtime

        return load_torch_runtime(path, device, precision)
    if device not in ("auto", "cpu"):
        raise FcnsegError(f"--device {device}: the {name} runtime runs on the CPU; "
                          "use a .pt checkpoint for CUDA")
    if name == "onnxruntime":
        if precision not in ("auto", "fp32", "int8"):
            raise FcnsegError(f"--precision {precision} with onnxruntime: the precision is "
                              "the exported file's (fp32, or int8 from fcnseg export --int8)")
        rt: Any = OnnxRuntime(path)
        want = rt.precision if precision == "auto" else precision
        if want != rt.precision:
            raise FcnsegError(f"{path} is an {rt.precision} model, not {want}: export "
                              "it again with the precision you want")
    else:
        rt = OpenVinoRuntime(path, "auto" if precision == "int8" else precision)
    meta, info = _meta_from(rt.metadata, path)
    return rt, meta, info, f"{name} on the CPU, {rt.precision}"


def _runtime_name(path: Path, runtime: str) -> str:
    if runtime == "auto":
        name = DEFAULT_RUNTIME.get(path.suffix.lower())
        if name is None:
            if not path.exists():
                raise CheckpointError(f"checkpoint {path} does not exist: check the path "
                                      "(e.g. RUN_DIR/best.pt or model.onnx)")
            raise CheckpointError(f"{path}: unknown model file type {path.suffix!r}: use a "
                                  ".pt checkpoint or an .onnx export")
        return name
    if runtime not in RUNTIMES:
        raise UnknownNameError("runtime", runtime, ("auto",) + RUNTIMES)
    if runtime == "torch" and path.suffix.lower() not in (".pt", ".pth"):
        raise FcnsegError(f"--runtime torch reads .pt checkpoints, not {path.name}")
    if runtime != "torch" and path.suffix.lower() in (".pt", ".pth"):
        raise FcnsegError(f"--runtime {runtime} reads exported models: run "
                          f"`fcnseg export --checkpoint {path} --out model.onnx` first")
    if not path.is_file():
        raise CheckpointError(f"model {path} does not exist: check the path")
    return runtime


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, read without loading its weights.

    An ONNX file is a protobuf ``ModelProto``; its field 14 holds ``{key: 1, value: 2}``
    string pairs. The other fields (the graph and its weights) are skipped by length.
    """
    found: dict[str, str] = {}
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        while fh.tell() < size:
            field, wire = divmod(_varint(fh), 8)
            if wire == 2:
                length = _varint(fh)
                if field == 14:
                    entry = _fields(fh.read(length))
                    found[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
                else:
                    fh.seek(length, os.SEEK_CUR)
            elif wire in (1, 5):
                fh.seek(8 if wire == 1 else 4, os.SEEK_CUR)
            elif wire == 0:
                _varint(fh)
            else:
                raise ValueError(f"not an ONNX model (protobuf wire type {wire})")
    return found


def _varint(fh: BinaryIO) -> int:
    value, shift = 0, 0
    while True:
        byte = fh.read(1)
        if not byte:
            raise ValueError("not an ONNX model (the file ends inside a field)")
        value |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            return value


def _fields(data: bytes) -> dict[int, bytes]:
    """The length-delimited fields of a small protobuf message (a metadata entry)."""
    fh, out = io.BytesIO(data), {}
    while fh.tell() < len(data):
        field, wire = divmod(_varint(fh), 8)
        if wire != 2:
            raise ValueError("not an ONNX model (a metadata entry that is not a string)")
        out[field] = fh.read(_varint(fh))
    return out


def cpu_threads() -> int:
    """Threads for a runtime: ``OMP_NUM_THREADS`` when set, else the CPUs this process may
    use (PyTorch's default too)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _meta_from(metadata: dict[str, str], path: Path) -> tuple[DatasetMeta, dict[str, Any]]:
    if META_KEY not in metadata:
        raise CheckpointError(f"{path} has no fcnseg metadata (classes, palette, "
                              "normalisation): export it with `fcnseg export`")
    try:
        meta = DatasetMeta.from_dict(json.loads(metadata[META_KEY]))
        info = {"model_args": json.loads(metadata.get(ARGS_KEY, "{}")),
                "config": json.loads(metadata.get(CONFIG_KEY, "{}"))}
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: its fcnseg metadata is unreadable ({exc}); export "
                              "it again with `fcnseg export`") from exc
    return meta, info


def require(module: str, extra: str = "deploy", what: str = "this ") -> Any:
    """Import an optional dependency, or say in one line which fcnseg extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FcnsegError(f"{what}needs {module.split('.')[0]}, which this install does not "
                          f"have: pip install 'fcnseg[{extra}]' -c constraints.txt") from exc


