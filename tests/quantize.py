"""onnxruntime's static quantizer on the test models: QDQ and QOperator, per channel or per tensor."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from builders import REF
from onnxruntime import quantization
from onnxruntime.quantization import CalibrationDataReader


class Reader(CalibrationDataReader):
    """16 random images of the model's own input shape (``layout`` at the reference size, or ``dims``)."""

    def __init__(self, layout: str, dims: list[int] | None = None, name: str = "image") -> None:
        dims = dims or shape(layout, 1)
        self.data = iter([{name: np.random.default_rng(i).standard_normal(dims).astype(np.float32)}
                          for i in range(16)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.data, None)


def quantize_qdq(model: onnx.ModelProto, layout: str, per_channel: bool, fmt: str = "QDQ") -> onnx.ModelProto:
    """onnxruntime's static quantizer, int8 weights, reduce_range (u8s8 kernels on CPUs without
    VNNI saturate otherwise, and results would differ between machines)."""
    with tempfile.TemporaryDirectory(prefix="onnxfcn-q-") as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(model, src)
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        quantization.quantize_static(str(src), str(dst), Reader(layout, dims, model.graph.input[0].name),
                                     quant_format=getattr(quantization.QuantFormat, fmt),
                                     per_channel=per_channel, reduce_range=True,
                                     weight_type=quantization.QuantType.QInt8)
        return onnx.load(dst)


def shape(layout: str, batch: int, extra: tuple[int, int] = (0, 0)) -> list[int]:
    h, w = REF + extra[0], REF + extra[1]
    return [batch, 3, h, w] if layout == "NCHW" else [batch, h, w, 3]
