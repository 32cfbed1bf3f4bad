"""Helpers the tests share: onnxruntime runs, numeric comparisons, crop-by-crop checks, and small
edits of a model's nodes and weights. (Fixtures are in conftest.py; model builders in builders.py,
patterns.py, trunks.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def session(model: onnx.ModelProto | str | Path) -> ort.InferenceSession:
    """A plain onnxruntime CPU session (no onnxfcn code in between), quiet."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto | str | Path, x: np.ndarray, name: str | None = None) -> list[np.ndarray]:
    sess = session(model)
    return sess.run(None, {name or sess.get_inputs()[0].name: x})


def heights_that_run(model: onnx.ModelProto, heights: range, width: int) -> list[int]:
    """The input heights (NCHW, 3 channels, batch 1) at which onnxruntime runs ``model``."""
    sess = session(model)
    ran = []
    for n in heights:
        try:
            sess.run(None, {sess.get_inputs()[0].name: rand([1, 3, n, width])})
            ran.append(n)
        except Exception:  # onnxruntime's error types vary
            pass
    return ran


def rand(shape: list[int], seed: int = 1, dtype: Any = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def assert_close(got: np.ndarray, want: np.ndarray, rel: float = 1e-5) -> float:
    """max|got - want| <= rel * max|want|, the bound the issue sets for fp32. Returns the ratio."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = float(np.abs(want).max()) or 1.0
    err = float(np.abs(got - want).max())
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} * {scale:.3g}"
    return err / scale


def cells_vs_crops(original: onnx.ModelProto, converted: onnx.ModelProto, x: np.ndarray, window: int,
                   stride: int, layout: str = "NCHW") -> tuple[np.ndarray, np.ndarray]:
    """(converted cells, original on each crop), both cells x batch x K, for the first output."""
    y = run(converted, x)[0]
    gh, gw = y.shape[2], y.shape[3]
    cells, crops = [], []
    for i in range(gh):
        for j in range(gw):
            if layout == "NCHW":
                crop = x[:, :, i * stride:i * stride + window, j * stride:j * stride + window]
            else:
                crop = x[:, i * stride:i * stride + window, j * stride:j * stride + window, :]
            if crop.shape[2 if layout == "NCHW" else 1] < window or crop.shape[3 if layout == "NCHW" else 2] < window:
                continue
            outs = [run(original, crop[n:n + 1])[0] for n in range(x.shape[0])]
            crops.append(np.concatenate(outs, axis=0).reshape(x.shape[0], -1))
            cells.append(y[:, :, i, j].reshape(x.shape[0], -1))
    return np.stack(cells), np.stack(crops)


def nth_node(model: onnx.ModelProto, op: str, k: int = 0) -> onnx.NodeProto:
    return [n for n in model.graph.node if n.op_type == op][k]


def initializer_named(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def set_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    initializer_named(model, name).CopyFrom(numpy_helper.from_array(value, name))


def set_attribute(node: onnx.NodeProto, name: str, value: object) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _fan_in(model: onnx.ModelProto, name: str, dims: list[int]) -> int:
    """Inputs per output of the layer whose weight ``name`` is (Conv: C/group x kh x kw)."""
    for node in model.graph.node:
        if len(node.input) > 1 and node.input[1] == name:
            if node.op_type == "MatMul":
                return dims[0]
            if node.op_type == "Gemm":
                trans = next((a.i for a in node.attribute if a.name == "transB"), 0)
                return dims[1] if trans else dims[0]
    return int(np.prod(dims[1:])) or 1


def fill_zeroed_weights(model: onnx.ModelProto, seed: int) -> None:
    """Weights a committed export stores as zeros (over 1024 elements), filled in place with
    seeded He-scaled values (the Keras and exporters tiers)."""
    rng = np.random.default_rng(seed)
    for t in model.graph.initializer:
        arr = numpy_helper.to_array(t)
        if arr.dtype.kind == "f" and arr.size > 1024 and not arr.any():
            scale = np.sqrt(2.0 / _fan_in(model, t.name, list(arr.shape)))
            t.CopyFrom(numpy_helper.from_array((rng.standard_normal(arr.shape) * scale).astype(arr.dtype), t.name))
