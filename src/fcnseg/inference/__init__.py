"""Whole-image inference (pad-and-crop or sliding window, with test-time augmentation)."""

from .predictor import DEFAULT_TILE, MODES, predict_logits, predict_mask

__all__ = ["DEFAULT_TILE", "MODES", "predict_logits", "predict_mask"]
