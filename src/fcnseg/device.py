"""Device and numeric precision selection.

bf16 autocast only pays off on CPUs with bf16 matrix units (AMX) or AVX512-BF16: on a
plain AVX-512 CPU PyTorch emulates bf16 and a ResNet-18 training step runs ~2.5x *slower*
than fp32 (measured on this project's CI machine). So ``precision="auto"`` asks the CPU
what it has instead of assuming, and every caller can print the reason.

PyTorch is imported by the functions that return its types: the memory and CPU checks serve
the runtimes of exported models too, in an install without PyTorch.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import FcnsegError, UnknownNameError

if TYPE_CHECKING:
    import torch

# Every precision fcnseg knows, with what it means. "auto" is one rule (auto_precision) for
# training, PyTorch inference and OpenVINO alike; int8 is an exported file's precision
# (`fcnseg export --int8`), never an autocast, so training takes the others.
PRECISIONS = {
    "auto": "bf16 where the device computes it fast (AMX/AVX512-BF16, CUDA; not to train "
            "depthwise convolutions on a CPU), else fp32",
    "fp32": "fp32",
    "bf16": "bf16 autocast",
    "fp16": "fp16 autocast with gradient scaling",
    "int8": "int8, an export's (fcnseg export --int8)",
}
TRAINING_PRECISIONS = tuple(name for name in PRECISIONS if name != "int8")


def select_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``name`` ("auto", "cpu", "cuda", "cuda:1", ...)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise FcnsegError(f"unknown device {name!r}: use auto, cpu or cuda[:N]") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FcnsegError(f"device {name!r} asked for, but CUDA is not available: use --device cpu")
    return device


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has AMX tiles or AVX512-BF16 instructions (fast bf16 matmuls).

    Read from the kernel's CPU flags where there are any (Linux), else asked of PyTorch.
    """
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh
                          if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is not None:
        return bool({"amx_tile", "avx512_bf16"} & set(flags))
    try:
        import torch
    except ImportError:  # an install for exported models only
        return False
    cpu = getattr(torch, "cpu", None)
    return any(getattr(cpu, check, lambda: False)()
               for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def auto_precision(device_type: str = "cpu", depthwise_training: bool = False) -> tuple[str, str]:
    """What ``precision="auto"`` means on ``device_type``: ``(precision, reason)``. CUDA
    without bf16 gets fp16 with gradient scaling; training a body of depthwise convolutions
    (EfficientNet-Lite) on a CPU gets fp32."""
    if device_type == "cuda":
        import torch

        if torch.cuda.is_bf16_supported():
            return "bf16", "bf16 autocast (CUDA device supports bf16)"
        return "fp16", "fp16 autocast with gradient scaling (CUDA without bf16)"
    if cpu_has_fast_bf16():
        if depthwise_training:
            # oneDNN's bf16 backward of depthwise convolutions is no faster than its fp32 one
            # on a Xeon with AMX: with their filters trained a Lite0 CamVid epoch ran 1.2x
            # faster in fp32, with them fixed (the recipe) at the same speed (RESULTS.md).
            return "fp32", "fp32 (bf16 trains this body's depthwise convolutions no faster)"
        return "bf16", "bf16 autocast (CPU has AMX / AVX512-BF16)"
    return "fp32", "fp32 (this CPU has no AMX / AVX512-BF16, where bf16 would be slower)"


def resolve_precision(device: torch.device, precision: str = "auto",
                      depthwise_training: bool = False) -> tuple[torch.dtype, str]:
    """Pick the autocast dtype for ``device``; returns ``(dtype, human-readable reason)``.
    ``depthwise_training``: for training a body of depthwise convolutions (see
    :func:`auto_precision`).

    ``torch.float32`` means: no autocast.
    """
    import torch

    if precision not in TRAINING_PRECISIONS:
        raise UnknownNameError("precision", precision, TRAINING_PRECISIONS)
    if precision == "auto":
        precision, reason = auto_precision(device.type, depthwise_training)
    else:
        reason = f"{PRECISIONS[precision]} (asked for)"
    if precision == "fp16" and device.type != "cuda":
        raise FcnsegError(
            "fp16 autocast needs a CUDA device: use --precision bf16 or fp32 on a CPU")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    return dtypes[precision], reason


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """An autocast context for ``dtype``, or a no-op for fp32."""
    import torch

    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# What fcnseg's work costs in memory, measured (benchmarks/RESULTS.md), in one place:
# a training step per pixel of a batch (FCN-8s at 320 x 480, batch 8: ~2.6 GiB), rounded up;
TRAIN_BYTES_PER_PIXEL = 2500
# a whole-image inference pass per pixel: activations (160) and the class maps (12 each).
PASS_BYTES_PER_PIXEL, PASS_BYTES_PER_CLASS_PIXEL = 160, 12


def pass_bytes(pixels: int, classes: int) -> int:
    """Bytes a whole-image inference pass over ``pixels`` pixels of ``classes`` classes needs."""
    return pixels * (PASS_BYTES_PER_PIXEL + PASS_BYTES_PER_CLASS_PIXEL * classes)


def fits_in_memory(need: int) -> bool:
    """Whether ``need`` bytes fit in half the memory this process can still use: the other
    half is left to what runs beside (the data, the encoder, other processes)."""
    return need <= available_memory() // 2


def available_memory() -> int:
    """Bytes this process can still allocate: the least of the machine's free memory
    (MemAvailable), what its address-space limit leaves (``ulimit -v``) and what its
    cgroup's memory limit leaves (a container's); elsewhere a generous 16 GiB."""
    machine = _meminfo_kib("/proc/meminfo", "MemAvailable:") * 1024
    if machine <= 0:  # not Linux
        return 16 << 30
    free = [machine]
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            free.append(limit - _meminfo_kib("/proc/self/status", "VmSize:") * 1024)
    except (ImportError, OSError, ValueError):
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit_text = (cgroup / "memory.max").read_text().strip()
        if limit_text != "max":
            free.append(int(limit_text) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, min(free))


def _meminfo_kib(path: str, key: str) -> int:
    """A ``key: N kB`` value of a /proc file (0 if absent)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
