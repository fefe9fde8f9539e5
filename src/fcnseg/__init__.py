"""fcnseg: semantic segmentation with Fully Convolutional Networks (Long et al., 2015).

``Predictor`` needs no PyTorch (an exported model runs on ONNX Runtime or OpenVINO); the
models (``FCN``, ``build_model``...) import PyTorch when first used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from .inference import Predictor  # noqa: E402

_MODEL_API = ("FCN", "MODELS", "bilinear_kernel", "build_model")

__all__ = ["Predictor", "__version__", *_MODEL_API]


def __getattr__(name: str) -> Any:
    if name in _MODEL_API:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
