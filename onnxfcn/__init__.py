"""onnxfcn: turn an ONNX image classifier into a fully convolutional model, and prove it right."""

from __future__ import annotations

from ._version import __version__
from .bench import BenchReport, bench
from .convert import ConversionReport, convert
from .errors import (
    AlreadyConvolutionalError,
    InvalidConversionError,
    ModelLoadError,
    OnnxFcnError,
    ResourceError,
    SelfCheckError,
    UnsupportedModelError,
)
from .inspect import InspectReport, inspect
from .matcher import HeadRefusedError
from .preprocess import Preprocess
from .scan import ScanResult, scan
from .verify import VerifyReport, verify

__all__ = [
    "AlreadyConvolutionalError",
    "BenchReport",
    "ConversionReport",
    "HeadRefusedError",
    "InspectReport",
    "InvalidConversionError",
    "ModelLoadError",
    "OnnxFcnError",
    "Preprocess",
    "ResourceError",
    "ScanResult",
    "SelfCheckError",
    "UnsupportedModelError",
    "VerifyReport",
    "__version__",
    "bench",
    "convert",
    "inspect",
    "scan",
    "verify",
]
