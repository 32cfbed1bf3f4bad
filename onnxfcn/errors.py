"""Errors raised by onnxfcn. Each carries one readable line, naming the node where there is one."""

from __future__ import annotations


class OnnxFcnError(Exception):
    """Base class: the input cannot be converted or checked as asked. The CLI exits 2 on these."""

    def __init__(self, reason: str, node: str | None = None) -> None:
        self.reason = reason
        self.node = node
        super().__init__(f"node '{node}': {reason}" if node else reason)


class ModelLoadError(OnnxFcnError):
    """The file is missing, is not ONNX, or is truncated."""


class UnsupportedModelError(OnnxFcnError):
    """The graph has no image input, no convertible head, or a node the tool cannot rewrite."""


class AlreadyConvolutionalError(OnnxFcnError):
    """The model has no dense head and no global pool: it already runs at any size."""


class SelfCheckError(OnnxFcnError):
    """The rewritten model failed to run at a size it must support."""


class ResourceError(OnnxFcnError):
    """A run needed more memory (or another resource) than there is: not a numerical mismatch."""


class InvalidConversionError(OnnxFcnError):
    """The model given as converted carries metadata that is missing, malformed, or disagrees with
    the original's graph: it cannot be checked as a conversion of that original."""
