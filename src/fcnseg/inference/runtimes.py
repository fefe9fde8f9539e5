"""Inference runtimes: the engines that turn a batch of images into class probabilities.

Every runtime is a callable ``float32 N x 3 x H x W`` RGB pixels in 0-255 (not normalised)
-> ``float32 N x C x H x W`` softmax probabilities, so that pad/slide/TTA
(:mod:`.tiling`) are written once for all of them, and has ``labels(x)``, the class ids
(``uint8 N x H x W``) for when no probabilities are needed. Each one normalises as its
model was trained to: PyTorch here, an exported model inside its graph.

* ``torch``: a checkpoint (``.pt``), BatchNorm folded, channels-last, autocast per precision
  (:mod:`.torch_model`, imported only for a checkpoint).
* ``openvino``: an exported ``.onnx``, read directly; the default for ``.onnx`` where
  OpenVINO is installed (the ``[deploy]`` install has it); bf16 on CPUs with bf16 units
  (the same rule as PyTorch's ``precision auto``), int8 from an int8 export.
* ``onnxruntime``: an exported ``.onnx`` (fp32 or int8 QDQ), where OpenVINO is not.

Exported models need neither PyTorch nor the ``onnx`` package: the metadata is read from
the file's protobuf fields directly (:mod:`.onnx_metadata`).
"""

from __future__ import annotations

import functools
import json
import os
import queue
from pathlib import Path
from typing import Any

import numpy as np

from ..data.meta import DatasetMeta
from ..device import PRECISIONS, auto_precision
from ..errors import CheckpointError, FcnsegError, UnknownNameError, first_line
from .onnx_metadata import read_onnx_metadata

# File suffix -> the runtime that reads it by default (``runtime="auto"``; an .onnx goes to
# OpenVINO instead where it is installed). RUNTIMES, the registry, is at the end.
DEFAULT_RUNTIME = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime"}
# ONNX metadata keys written by `fcnseg export` (plain strings; JSON where structured).
META_KEY, ARGS_KEY, CONFIG_KEY = "fcnseg.meta", "fcnseg.model_args", "fcnseg.config"
PRECISION_KEY = "fcnseg.precision"
# An export's outputs: softmax probabilities, and (since the graph has it) their argmax.
PROBS, LABELS = "probs", "labels"


class OnnxRuntime:
    """An exported model run by ONNX Runtime on the CPU (fp32, or int8 if exported so).

    ``streams`` > 1 splits the cores between that many concurrent calls (a session runs
    calls from several threads at once), for folders and servers; 1 gives one call all of
    them, for the latency of a single image.
    """

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, streams: int = 1) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        self.streams = max(1, streams)
        options.intra_op_num_threads = threads or max(1, cpu_threads() // self.streams)
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
        self._has_labels = LABELS in {o.name for o in self.session.get_outputs()}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([PROBS], {"image": x})[0]

    def labels(self, x: np.ndarray) -> np.ndarray:
        """Class ids ``N x H x W`` uint8: the graph's own argmax (exports before it had one:
        the argmax of the probabilities)."""
        if self._has_labels:
            return self.session.run([LABELS], {"image": x})[0]
        return self(x).argmax(1).astype(np.uint8)


class OpenVinoRuntime:
    """An exported model compiled by OpenVINO for the CPU, with a precision hint.

    ``streams`` > 1 compiles for throughput: that many CPU streams, each running its own
    inference request on its share of the cores; a call borrows a free request, so that
    many threads infer at once. 1 compiles for latency (one request, all cores).
    """

    name = "openvino"

    def __init__(self, path: Path, precision: str = "auto", threads: int | None = None,
                 streams: int = 1) -> None:
        core = openvino_core()
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
        _meta_from(self.metadata, path)  # not an fcnseg export: one line, before compiling
        int8 = self.metadata.get(PRECISION_KEY) == "int8"
        if precision == "auto":  # the same rule as PyTorch's
            precision = auto_precision("cpu")[0]
        if precision not in ("fp32", "bf16"):
            raise FcnsegError(f"--precision {precision} with openvino: use auto, fp32 or bf16")
        self.streams = max(1, streams)
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": threads or cpu_threads(),
                  "PERFORMANCE_HINT": "LATENCY" if self.streams == 1 else "THROUGHPUT",
                  "NUM_STREAMS": self.streams}
        self.compiled = core.compile_model(model, "CPU", config)
        self.precision = "int8" if int8 else precision
        names = {name for out in self.compiled.outputs for name in out.get_names()}
        self._probs = self.compiled.output(PROBS)
        self._labels = self.compiled.output(LABELS) if LABELS in names else None
        # One inference request per stream, lent to a calling thread for one call: requests
        # live and die with the runtime, not with the threads that used them.
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.streams):
            self._requests.put(self.compiled.create_infer_request())
        # One call on this thread before any stream runs: the first numpy view of a request's
        # tensor initialises pybind11's numpy API inside a static initialiser, and two
        # streams doing that at once deadlocked (a folder predicted with 2 streams hung).
        self.labels(np.zeros((1, 3, 32, 32), np.float32))  # an fcnseg export: any N, H, W

    def _infer(self, x: np.ndarray, output: Any) -> np.ndarray:
        request = self._requests.get()
        try:
            return request.infer({"image": x})[output].copy()
        finally:
            self._requests.put(request)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._infer(x, self._probs)

    def labels(self, x: np.ndarray) -> np.ndarray:
        """Class ids ``N x H x W`` uint8 (see :meth:`OnnxRuntime.labels`)."""
        if self._labels is None:
            return self(x).argmax(1).astype(np.uint8)
        return self._infer(x, self._labels)


@functools.cache
def openvino_core() -> Any:
    """The process's one OpenVINO ``Core``. Kept for the process's life: with a Core made
    and dropped per model, a process that had dropped two of them crashed in its next
    ``fork`` (a subprocess; OpenVINO 2026.4 on Linux)."""
    return require("openvino").Core()


def load_runtime(path: str | Path, runtime: str = "auto", device: str = "auto",
                 precision: str = "auto", streams: int = 1
                 ) -> tuple[Any, DatasetMeta, dict[str, Any], str]:
    """Open ``path`` with a runtime: ``(runtime, meta, info, reason)``.

    ``info`` has the model's ``model_args`` and training ``config`` (what evaluate needs to
    find the data). ``reason`` says in words which runtime and precision run, and why.
    ``streams``: how many calls an exported model's runtime serves at once (a PyTorch
    model: one).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder: give a checkpoint file in it, e.g. "
                              f"{path / 'best.pt'}, or an exported model.onnx")
    name = _runtime_name(path, runtime)
    if precision not in PRECISIONS:
        raise UnknownNameError("precision", precision, PRECISIONS)
    return RUNTIMES[name](path, device, precision, streams)


def _open_torch(path: Path, device: str, precision: str, streams: int
                ) -> tuple[Any, DatasetMeta, dict[str, Any], str]:
    if precision == "int8":
        raise FcnsegError("--precision int8 needs an int8 export: fcnseg export --int8 ...")
    require("torch", "train", f"reading {path} (a PyTorch checkpoint) ")
    from .torch_model import load_torch_runtime

    return load_torch_runtime(path, device, precision)


def _open_onnxruntime(path: Path, device: str, precision: str, streams: int
                      ) -> tuple[Any, DatasetMeta, dict[str, Any], str]:
    if precision not in ("auto", "fp32", "int8"):
        raise FcnsegError(f"--precision {precision} with onnxruntime: the precision is "
                          "the exported file's (fp32, or int8 from fcnseg export --int8)")
    _on_cpu("onnxruntime", device)
    return _exported(OnnxRuntime(path, streams=streams), path, precision)


def _open_openvino(path: Path, device: str, precision: str, streams: int
                   ) -> tuple[Any, DatasetMeta, dict[str, Any], str]:
    _on_cpu("openvino", device)
    rt = OpenVinoRuntime(path, "auto" if precision == "int8" else precision, streams=streams)
    return _exported(rt, path, precision)


def _on_cpu(name: str, device: str) -> None:
    if device not in ("auto", "cpu"):
        raise FcnsegError(f"--device {device}: the {name} runtime runs on the CPU; "
                          "use a .pt checkpoint for CUDA")


def _exported(rt: Any, path: Path, precision: str
              ) -> tuple[Any, DatasetMeta, dict[str, Any], str]:
    """An exported model's runtime with its metadata, checked against ``precision``: an
    int8 file computes in int8 whatever is asked; an fp32 file is not int8."""
    if (precision == "int8") != (rt.precision == "int8") and precision != "auto":
        raise FcnsegError(f"{path} is an {rt.precision} model, not {precision}: export "
                          "it again with the precision you want")
    meta, info = _meta_from(rt.metadata, path)
    many = f", {rt.streams} streams" if rt.streams > 1 else ""
    return rt, meta, info, f"{rt.name} on the CPU, {rt.precision}{many}"


def _runtime_name(path: Path, runtime: str) -> str:
    if runtime == "auto":
        name = DEFAULT_RUNTIME.get(path.suffix.lower())
        if name == "onnxruntime" and importable("openvino"):
            # OpenVINO runs fcnseg's exports 1.5-2x faster than ONNX Runtime on x86 CPUs,
            # and its int8 is faster than its fp32 where ONNX Runtime's is slower
            # (benchmarks/RESULTS.md, "Inference").
            name = "openvino"
        if name is None:
            if not path.exists():
                raise CheckpointError(f"checkpoint {path} does not exist: check the path "
                                      "(e.g. RUN_DIR/best.pt or model.onnx)")
            raise CheckpointError(f"{path}: unknown model file type {path.suffix!r}: use a "
                                  ".pt checkpoint or an .onnx export")
        return name
    if runtime not in RUNTIMES:
        raise UnknownNameError("runtime", runtime, ("auto", *RUNTIMES))
    if runtime == "torch" and path.suffix.lower() not in (".pt", ".pth"):
        raise FcnsegError(f"--runtime torch reads .pt checkpoints, not {path.name}")
    if runtime != "torch" and path.suffix.lower() in (".pt", ".pth"):
        raise FcnsegError(f"--runtime {runtime} reads exported models: run "
                          f"`fcnseg export --checkpoint {path} --out model.onnx` first")
    if not path.is_file():
        raise CheckpointError(f"model {path} does not exist: check the path")
    return runtime


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


def importable(module: str) -> bool:
    """Whether ``module`` is installed (found, not imported)."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def require(module: str, extra: str = "deploy", what: str = "this ") -> Any:
    """Import an optional dependency, or say in one line which fcnseg extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FcnsegError(f"{what}needs {module.split('.')[0]}, which this install does not "
                          f"have: pip install 'fcnseg[{extra}]' -c constraints.txt") from exc


# The runtimes by name: each opens a model file as (runtime, meta, info, reason).
RUNTIMES = {"torch": _open_torch, "onnxruntime": _open_onnxruntime, "openvino": _open_openvino}
