"""Quantized heads from onnxruntime's quantizer, in both of its formats. Nothing is re-quantized:
integer weights are only reordered into the convolution's K x C x h x w layout, and every scale
and zero point is kept.

- QDQ: activations pass through QuantizeLinear/DequantizeLinear pairs, which stay where they are,
  per output cell (with one scale and zero point for the whole tensor, quantizing each cell's
  vector is what quantizing the N x D vector did). Dense weights are DequantizeLinear of int8
  initializers; they are dequantized again from the reordered values, the per-channel axis moved
  to the Conv's axis 0, so onnxruntime fuses the Q/DQ around the Conv into an integer convolution
  as it fused the Gemm.
- QOperator: QGemm and QLinearMatMul become QLinearConv; QLinearAdd/QLinearMul constants and
  QLinearSoftmax's axis follow the map; QLinearGlobalAveragePool becomes a window of
  com.microsoft QLinearAveragePool.

Also here: the rounding bounds of QuantizeLinear and DequantizeLinear, for verify.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..bounds import LAMBDA, Bounded, HeadEvaluator, NoBoundError, register_bound
from ..graph import attr
from ..rewrite import Builder, HeadContext, Mapped, conv_kernel, window_mismatch
from .base import Rule, register
from .collapse import valid_windows

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
            if not ctx.index.is_const(i) or shape is None or math.prod(int(d) for d in (shape or (1,))) != 1:
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
    _, c, h, w = kchw
    q = ctx.index.const_value(dq.input[0])
    scale = ctx.index.const_value(dq.input[1])
    if q is None or scale is None or q.ndim != 2:
        return None
    per_channel = scale.size > 1
    axis = attr(dq, "axis", 1) % 2
    if per_channel and axis != (0 if trans_b else 1):
        return None  # scales along the input features: no Conv weight axis carries them
    kernel = conv_kernel(q if trans_b else q.T, order, (c, h, w))
    inputs = [b.const(f"{dq.input[0]}_conv", kernel), dq.input[1]]
    if len(dq.input) > 2 and dq.input[2]:
        inputs.append(dq.input[2])
    attrs: dict[str, Any] = {"axis": 0} if per_channel else {}
    (out,) = b.node("DequantizeLinear", inputs, "w_dequant", **attrs)
    return out


# ---- the QOperator format: integer ops with their scales as inputs --------------------------------
def _int_weight(ctx: HeadContext, name: str) -> np.ndarray | None:
    value = ctx.index.const_value(name) if ctx.index.is_const(name) else None
    return value if value is not None and value.ndim == 2 and value.dtype.kind in "iu" else None


def _qlinear_dense_reason(ctx: HeadContext, node: onnx.NodeProto, a: str, w: str, trans_b: bool,
                          scales: list[str], bias: str) -> str | None:
    if a not in ctx.mapped:
        return "the feature vector must be the first operand"
    m = ctx.mapped[a]
    if m.layout is None or (m.layout != (0, 1, 2, 3) and m.window is None):
        return "dense layer on a tensor whose last axis is not the feature axis"
    q = _int_weight(ctx, w)
    if q is None:
        return f"weight '{w}' is not a constant 2-D integer tensor"
    if any(not i or not ctx.index.is_const(i) for i in scales):
        return "scales and zero points must be constants (the output is quantized)"
    k, d = (q.shape[0], q.shape[1]) if trans_b else (q.shape[1], q.shape[0])
    if (why := window_mismatch(m, d)) is not None:
        return why
    if bias:
        shape = ctx.index.static_shape(bias)
        if not ctx.index.is_const(bias) or shape is None or math.prod(int(d) for d in shape) != k:
            return f"bias '{bias}' is not a constant with one value per output feature"
    return None


def _qlinear_conv(ctx: HeadContext, node: onnx.NodeProto, b: Builder, a: str, w: str, trans_b: bool,
                  quant: list[str], bias: str) -> str:
    """QLinearConv with the integer weight reordered into K x C x h x w (never re-quantized).
    ``quant``: a_scale, a_zp, w_scale, w_zp, y_scale, y_zp."""
    m = ctx.mapped[a]
    q = _int_weight(ctx, w)
    assert q is not None
    mat = q if trans_b else q.T
    k, d = mat.shape
    order, (c, h, w_) = m.window if m.window is not None else ("CHW", (d, 1, 1))
    weight = b.const(f"{w}_conv", conv_kernel(mat, order, (c, h, w_)))
    inputs = [m.name, quant[0], quant[1], weight, quant[2], quant[3], quant[4], quant[5]]
    if bias:
        value = ctx.index.const_value(bias)
        assert value is not None
        inputs.append(b.const(f"{bias}_conv", value.reshape(-1)) if value.ndim != 1 else bias)
    b.node("QLinearConv", inputs, "qconv", outputs=[node.output[0]], kernel_shape=[h, w_], strides=[1, 1],
           pads=[0, 0, 0, 0])
    ctx.mapped[node.output[0]] = Mapped(node.output[0], (0, 1, 2, 3), None)
    return f"QLinearConv {h}x{w_} -> {k} channels, int8 weights reordered" + (f" from {order}" if order != "CHW" else "")


@register
class QGemm(Rule):
    """com.microsoft QGemm with a quantized output: a QLinearConv."""

    name = "qgemm"
    ops = frozenset({"QGemm"})

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        if attr(node, "transA", 0):
            return "QGemm with transA=1 puts the batch axis second; cannot slide it"
        if float(attr(node, "alpha", 1.0)) != 1.0:
            return "QGemm with alpha != 1"
        if len(node.input) < 9 or not node.input[7]:
            return "QGemm with a float output (no y_scale): no integer convolution gives it"
        ins = list(node.input)
        return _qlinear_dense_reason(ctx, node, ins[0], ins[3], bool(attr(node, "transB", 0)),
                                     [ins[1], ins[2], ins[4], ins[5], ins[7], ins[8]], ins[6])

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        ins = list(node.input)
        return _qlinear_conv(ctx, node, b, ins[0], ins[3], bool(attr(node, "transB", 0)),
                             [ins[1], ins[2], ins[4], ins[5], ins[7], ins[8]], ins[6])


@register
class QLinearMatMul(Rule):
    name = "qlinear-matmul"
    ops = frozenset({"QLinearMatMul"})

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        ins = list(node.input)
        return _qlinear_dense_reason(ctx, node, ins[0], ins[3], False, [ins[1], ins[2], ins[4], ins[5], ins[6], ins[7]], "")

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        ins = list(node.input)
        return _qlinear_conv(ctx, node, b, ins[0], ins[3], False, [ins[1], ins[2], ins[4], ins[5], ins[6], ins[7]], "")


@register
class QLinearBinary(Rule):
    """com.microsoft QLinearAdd/QLinearMul of a head tensor and a per-feature quantized constant."""

    name = "qlinear-binary"
    ops = frozenset({"QLinearAdd", "QLinearMul"})

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        heads = [k for k in (0, 3) if node.input[k] in ctx.mapped]
        if len(heads) != 1:
            return "needs one head tensor and one constant operand"
        other = node.input[3 - heads[0]]
        if any(i and not ctx.index.is_const(i) for k, i in enumerate(node.input) if k not in (0, 3)):
            return "scales and zero points must be constants"
        return ctx.per_feature_reason(other, ctx.mapped[node.input[heads[0]]])

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        head = 0 if node.input[0] in ctx.mapped else 3
        m = ctx.mapped[node.input[head]]
        other = node.input[3 - head]
        new = ctx.per_feature_const(node, b, other, m)
        ctx.keep(node, b, m, {other: new} if new != other else None)
        return "constant reshaped to 1xDx1x1" if new != other else None


@register
class QLinearSoftmax(Rule):
    """com.microsoft QLinearSoftmax with opset-13 semantics over the class axis."""

    name = "qlinear-softmax"
    ops = frozenset({"QLinearSoftmax"})

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        m, why = ctx.per_cell_input(node, "softmax over")
        if m is None:
            return why
        if int(attr(node, "opset", 13)) < 13:
            return "QLinearSoftmax with opset < 13 semantics (normalizes over all trailing axes)"
        return ctx.feature_axis_reason(node, m, int(attr(node, "axis", -1)))

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        m = ctx.mapped[node.input[0]]
        ctx.keep_with_axis(node, b, m, m.channel_axis)
        return f"axis -> {m.channel_axis}"


@register
class QLinearGlobalPool(Rule):
    """com.microsoft QLinearGlobalAveragePool on the feature map: a stride-1 QLinearAveragePool as
    large as the reference map (window mode), or a requantization of each cell (dense mode: the
    mean of one cell is the cell, in the pool's output scale)."""

    name = "qlinear-global-pool"
    ops = frozenset({"QLinearGlobalAveragePool"})
    priority = -1  # before the float collapse, which owns every other node on the map

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        if attr(node, "channels_last", 0):
            return "QLinearGlobalAveragePool with channels_last=1"
        if ctx.index.static_shape(node.input[0]) is None:
            return "feature map has no static shape at the reference size"
        if any(not i or not ctx.index.is_const(i) for i in node.input[1:5]):
            return "scales and zero points must be constants"
        return None

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        feat = node.input[0]
        shape = ctx.index.static_shape(feat)
        assert shape is not None
        h, w = int(shape[2]), int(shape[3])
        plan = ctx.plan
        plan.sources.append(feat)
        plan.features.append(feat)
        x_scale, x_zp, y_scale, y_zp = node.input[1:5]
        if ctx.mode == "window":
            plan.windows.append((h, w))
            # Padded at the end and sliced back, as window_pool does: the QLinearAveragePool kernel
            # too dies (SIGFPE) when its output size is 0, one cell below the window.
            (pooled,) = b.node("QLinearAveragePool", [feat, x_scale, x_zp, y_scale, y_zp], "qwindow_pool",
                               domain="com.microsoft", kernel_shape=[h, w], strides=[1, 1],
                               pads=[0, 0, h - 1, w - 1], count_include_pad=0)
            valid_windows(ctx, b, pooled, h, w, output=node.output[0])
            after = f"QLinearAveragePool {h}x{w}, stride 1 (one cell per {h}x{w} feature window)"
        else:
            plan.windows.append((1, 1))
            plan.pools_dropped += 1
            (x,) = b.node("DequantizeLinear", [feat, x_scale, x_zp], "cell_dequant")
            b.node("QuantizeLinear", [x, y_scale, y_zp], "cell_requant", outputs=[node.output[0]])
            after = "requantized per cell (dense mode: every feature cell is scored on its own)"
        ctx.mapped[node.output[0]] = Mapped(node.output[0], (0, 1, 2, 3), None)
        return after


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
