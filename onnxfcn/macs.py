"""Multiply-accumulate counts read off a graph at one input size (for ``bench``).

Counted: convolutions (float and quantized) and dense products (Gemm, MatMul and their quantized
forms), the operations that dominate a classifier's cost. Pools, activations and other
elementwise ops are not multiply-accumulates and are left out, on both sides of a comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import onnx

from .graph import GraphIndex, attr
from .runtime import probe_shapes

_CONV_WEIGHT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
_GEMM_INPUTS = {"Gemm": (0, 1), "QGemm": (0, 3)}  # A, B
_MATMUL_INPUTS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}


def count_macs(model: onnx.ModelProto, input_name: str, shape: Sequence[int]) -> int:
    """Multiply-accumulates of one run with ``input_name`` of ``shape`` (others at their declared
    sizes). A node whose shapes cannot be read counts 0 and is logged by the caller's totals."""
    index = GraphIndex(model, {input_name: list(shape)}, probe_shapes)
    total = 0
    for node in model.graph.node:
        total += _node_macs(index, node)
    return total


def _dims(index: GraphIndex, name: str) -> list[int] | None:
    s = index.static_shape(name) if name else None
    return None if s is None else [int(d) for d in s]


def _node_macs(index: GraphIndex, node: onnx.NodeProto) -> int:
    op = node.op_type
    if op in _CONV_WEIGHT:
        out, w = _dims(index, node.output[0]), _dims(index, node.input[_CONV_WEIGHT[op]])
        if out is None or w is None:
            return 0
        return math.prod(int(d) for d in out) * math.prod(int(d) for d in w[1:])
    if op in _GEMM_INPUTS:
        a_i, b_i = _GEMM_INPUTS[op]
        a, b = _dims(index, node.input[a_i]), _dims(index, node.input[b_i])
        if a is None or b is None:
            return 0
        m, k = (a[1], a[0]) if attr(node, "transA", 0) else (a[0], a[1])
        n = b[0] if attr(node, "transB", 0) else b[1]
        return m * k * n
    if op in _MATMUL_INPUTS:
        a_i, _ = _MATMUL_INPUTS[op]
        a, out = _dims(index, node.input[a_i]), _dims(index, node.output[0])
        if a is None or out is None:
            return 0
        return math.prod(int(d) for d in out) * a[-1]
    return 0
