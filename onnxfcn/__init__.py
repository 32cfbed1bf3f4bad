"""onnxfcn: turn an ONNX image classifier into a fully convolutional model, and prove it right.

The public names load their modules on first use, so that ``onnxfcn --help`` imports neither onnx
nor onnxruntime. ``verify`` and ``scan`` are both functions and subpackages: the function is what
``onnxfcn.verify`` gives, before and after the subpackage is imported
(``importlib.import_module("onnxfcn.verify")`` gives the subpackage).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    AlreadyConvolutionalError,
    InvalidConversionError,
    ModelLoadError,
    OnnxFcnError,
    ResourceError,
    SelfCheckError,
    UnsupportedModelError,
)

if TYPE_CHECKING:
    from .bench import BenchReport, bench
    from .convert import ConversionReport, convert
    from .inspect import InspectReport, inspect
    from .matcher import HeadRefusedError
    from .preprocess import Preprocess
    from .scan import ScanResult, scan
    from .verify import VerifyReport, verify

# public name -> the module that defines it
_LAZY = {
    "bench": ".bench", "BenchReport": ".bench",
    "convert": ".convert", "ConversionReport": ".convert",
    "inspect": ".inspect", "InspectReport": ".inspect",
    "HeadRefusedError": ".matcher",
    "Preprocess": ".preprocess",
    "scan": ".scan", "ScanResult": ".scan",
    "verify": ".verify", "VerifyReport": ".verify",
}

__all__ = ["AlreadyConvolutionalError", "BenchReport", "ConversionReport", "HeadRefusedError", "InspectReport",
           "InvalidConversionError", "ModelLoadError", "OnnxFcnError", "Preprocess", "ResourceError", "ScanResult",
           "SelfCheckError", "UnsupportedModelError", "VerifyReport", "__version__", "bench", "convert", "inspect",
           "scan", "verify"]


def _public(name: str, module: str) -> property:
    """A public name, loaded on first use. The import system binds a subpackage of the same name
    (``onnxfcn.verify``) on the package when it imports it: that binding is ignored, and the name
    stays the function. Anything else assigned to it (a test's stand-in) replaces it."""
    def get(pkg: types.ModuleType) -> Any:
        assigned = pkg.__dict__.get("_assigned", {})
        if name in assigned:
            return assigned[name]
        return getattr(importlib.import_module(module, __name__), name)

    def put(pkg: types.ModuleType, value: Any) -> None:
        if isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            return
        pkg.__dict__.setdefault("_assigned", {})[name] = value

    def drop(pkg: types.ModuleType) -> None:
        pkg.__dict__.get("_assigned", {}).pop(name, None)

    return property(get, put, drop)


class _Package(types.ModuleType):
    pass


for _name, _module in _LAZY.items():
    setattr(_Package, _name, _public(_name, _module))
sys.modules[__name__].__class__ = _Package
