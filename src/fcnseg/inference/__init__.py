"""Inference: the :class:`Predictor` object, its runtimes, ONNX export and batch prediction.

Importing it does not import PyTorch: an exported model predicts in an install without it.
``predict_probabilities`` and ``predict_mask`` (PyTorch models) load :mod:`.torch_model`
when first used.
"""

from __future__ import annotations

from typing import Any

from .predictor import Predictor
from .runtimes import RUNTIMES
from .tiling import DEFAULT_TILE, MODES, InferenceOptions

_TORCH_API = ("predict_probabilities", "predict_mask")

__all__ = ["DEFAULT_TILE", "MODES", "RUNTIMES", "InferenceOptions", "Predictor", *_TORCH_API]


def __getattr__(name: str) -> Any:
    if name in _TORCH_API:
        from . import torch_model

        return getattr(torch_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
