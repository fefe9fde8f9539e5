"""fcnseg: semantic segmentation with Fully Convolutional Networks (Long et al., 2015)."""

from __future__ import annotations

__version__ = "0.1.0"

from .inference import Predictor  # noqa: E402
from .models import FCN, MODELS, bilinear_kernel, build_model  # noqa: E402

__all__ = ["FCN", "MODELS", "Predictor", "__version__", "bilinear_kernel", "build_model"]
