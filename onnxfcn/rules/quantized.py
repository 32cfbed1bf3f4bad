"""onnxruntime's QDQ format in a head: activations pass through QuantizeLinear/DequantizeLinear
pairs, and dense weights (and biases) are DequantizeLinear of int8/int32 initializers.

The pairs stay where they are, per output cell: with one scale and zero point for the whole
tensor, quantizing each cell's vector is what quantizing the N x D vector did. The weights stay
quantized: the int8 values are only reordered into the Conv's K x C x h x w layout (never
re-quantized) and dequantized again with their own scales, the per-channel axis moved to the
Conv's output-channel axis 0. onnxruntime then fuses Q/DQ around the Conv into an integer
convolution, as it fused the Gemm, so the results at the reference size are those of the
original."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..bounds import LAMBDA, Bounded, HeadEvaluator, NoBoundError, register_bound
from ..graph import attr
from ..rewrite import Builder, HeadContext
from .base import Rule, register

QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})


@register
class QuantizeDequantize(Rule):
    """An activation QuantizeLinear or DequantizeLinear on a head tensor, per tensor."""

    name = "qdq-activation"
    ops = QDQ

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        if (why := ctx.unmapped(node)) is not None:
            return why
        for i in node.input[1:]:
            if not i:
                continue
            shape = ctx.index.static_shape(i)
            if not ctx.index.is_const(i) or shape is None or int(np.prod(shape or (1,))) != 1:
                return f"quantizes the head tensor per axis ('{i}' is not one constant); only per-tensor is supported"
        return None

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        ctx.keep(node, b, ctx.mapped[node.input[0]])
        return None


def dequantized(ctx: HeadContext, name: str) -> onnx.NodeProto | None:
    """The DequantizeLinear that computes ``name`` from an integer initializer, if that is how."""
    node = ctx.index.producer.get(name)
    if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in ctx.index.initializers:
        return None
    if any(i and not ctx.index.is_const(i) for i in node.input[1:]):
        return None
    return node


def quantized_weight(ctx: HeadContext, b: Builder, w_name: str, trans_b: bool, order: str,
                     kchw: tuple[int, int, int, int]) -> str | None:
    """A DequantizeLinear'd dense weight as a DequantizeLinear'd Conv weight, or None when the
    weight is not a dequantized integer tensor."""
    dq = dequantized(ctx, w_name)
    if dq is None:
        return None
    k, c, h, w = kchw
    q = ctx.index.const_value(dq.input[0])
    scale = ctx.index.const_value(dq.input[1])
    if q is None or scale is None or q.ndim != 2:
        return None
    per_channel = scale.size > 1
    axis = attr(dq, "axis", 1) % 2
    if per_channel and axis != (0 if trans_b else 1):
        return None  # scales along the input features: no Conv weight axis carries them
    sizes = {"C": c, "H": h, "W": w}
    mat = q if trans_b else q.T  # K x D
    kernel = mat.reshape([k] + [sizes[ch] for ch in order]).transpose([0] + [1 + order.index(ch) for ch in "CHW"])
    inputs = [b.const(f"{dq.input[0]}_conv", np.ascontiguousarray(kernel)), dq.input[1]]
    if len(dq.input) > 2 and dq.input[2]:
        inputs.append(dq.input[2])
    attrs: dict[str, Any] = {"axis": 0} if per_channel else {}
    (out,) = b.node("DequantizeLinear", inputs, "w_dequant", **attrs)
    return out


# ---- rounding bounds of the original's Q/DQ, for verify -----------------------------------------
def _per_tensor(ins: list[Bounded | None], node: onnx.NodeProto) -> tuple[float, float]:
    scale = ins[1].value if ins[1] is not None else None
    zp = ins[2].value if len(ins) > 2 and ins[2] is not None else np.zeros(1)
    if scale is None or scale.size != 1 or zp.size != 1:
        raise NoBoundError(f"{node.op_type} per axis on a head tensor")
    return float(scale.reshape(())), float(zp.reshape(()))


def _quantize_bound(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    """q = saturate(round_half_even(x / s) + zp), in steps of s.

    The input's error e (and the float division's own rounding, u * |x / s|) moves x / s by at
    most e' = e / s + u |x / s|, and q changes only when that crosses a rounding boundary at
    distance d: by at most floor(e' - d) + 1 steps. At least one step is always allowed:
    onnxruntime fuses the ops between Q/DQ pairs into integer kernels (QLinearConv,
    QLinearMatMul, QLinearSoftmax with its lookup table) that do not round as the float op does,
    and it picks them by shape, so one op on an N x K vector and on a map can land one step
    apart (the per-tensor MatMul + Softmax head in ``tests/test_quantized.py`` does)."""
    x = ins[0]
    assert x is not None
    s, zp = _per_tensor(ins, node)
    info = np.iinfo(helper.tensor_dtype_to_np_dtype(ev.index.dtypes.get(node.output[0], onnx.TensorProto.UINT8)))
    t = x.value / s
    q = np.clip(np.rint(t) + zp, info.min, info.max)
    e = x.err / abs(s) + ev.u * np.abs(t)
    d = 0.5 - np.abs(t - np.rint(t))
    steps = np.maximum(np.where(e < d, 0.0, np.floor(e - d) + 1), 1.0)
    return [Bounded(q, steps, steps / LAMBDA)]


def _dequantize_bound(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    """y = (q - zp) * s: the input's error in steps times s, plus the product's rounding."""
    q = ins[0]
    assert q is not None
    s, zp = _per_tensor(ins, node)
    y = (q.value - zp) * s
    err = q.err * abs(s) + ev.u * np.abs(y)
    return [Bounded(y, err, err / LAMBDA)]


register_bound("QuantizeLinear", _quantize_bound)
register_bound("DequantizeLinear", _dequantize_bound)
