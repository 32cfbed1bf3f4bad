"""onnxfcn: turn an ONNX image classifier into a fully convolutional model, and prove it right."""

from __future__ import annotations

__version__ = "0.1.0"

from .convert import ConversionReport, convert  # noqa: E402
from .errors import (  # noqa: E402
    AlreadyConvolutionalError,
    ModelLoadError,
    OnnxFcnError,
    SelfCheckError,
    UnsupportedModelError,
)
from .inspect import InspectReport, inspect  # noqa: E402
from .verify import VerifyReport, verify  # noqa: E402

__all__ = [
    "AlreadyConvolutionalError",
    "ConversionReport",
    "InspectReport",
    "ModelLoadError",
    "OnnxFcnError",
    "SelfCheckError",
    "UnsupportedModelError",
    "VerifyReport",
    "__version__",
    "convert",
    "inspect",
    "verify",
]
