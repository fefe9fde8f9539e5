"""Inference: the :class:`Predictor` object, its runtimes, ONNX export and batch prediction."""

from .functional import (
    DEFAULT_TILE,
    MODES,
    InferenceOptions,
    predict_logits,
    predict_mask,
)
from .predictor import Predictor
from .runtimes import RUNTIMES

__all__ = ["DEFAULT_TILE", "MODES", "RUNTIMES", "InferenceOptions", "Predictor",
           "predict_logits", "predict_mask"]
