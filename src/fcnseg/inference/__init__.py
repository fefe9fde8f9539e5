"""Inference: the :class:`Predictor` object, its runtimes, ONNX export and batch prediction."""

from .functional import (
    DEFAULT_TILE,
    MODES,
    InferenceOptions,
    predict_mask,
    predict_probabilities,
)
from .predictor import Predictor
from .runtimes import RUNTIMES

__all__ = ["DEFAULT_TILE", "MODES", "RUNTIMES", "InferenceOptions", "Predictor",
           "predict_probabilities", "predict_mask"]
