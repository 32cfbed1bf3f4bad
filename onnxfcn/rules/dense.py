"""Dense layers: Gemm, MatMul and a two-operand Einsum become convolutions. The first dense
layer after a flatten becomes a Conv as large as the feature window (weights reordered from the
flatten's order), every other one a 1x1 Conv."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import onnx

from ..bounds import Bounded, HeadEvaluator, NoBoundError, dense_bound, register_bound
from ..graph import attr
from ..head import NCHW_AXES, TensorState
from ..rewrite import Builder, HeadContext, Mapped, Reject, conv_kernel, kernel_layout, np_dtype, window_mismatch
from .base import Rule, register
from .quantized import dequantized, quantized_weight


@dataclass
class DenseLayer:
    """A dense layer read off Gemm, MatMul or Einsum: y = alpha * x @ (W or W.T) + beta * bias."""

    x: str
    weight: str
    trans_b: bool  # weight stored K x D
    alpha: float = 1.0
    beta: float = 1.0
    bias: str = ""


def _conv_check(ctx: HeadContext, node: onnx.NodeProto, layer: DenseLayer) -> str | None:
    """The checks every dense spelling shares."""
    if layer.x not in ctx.mapped:
        return "the feature vector must be the first operand"
    m = ctx.mapped[layer.x]
    if m.layout != NCHW_AXES and m.window is None and (m.layout is None or ctx.state(layer.x) is not TensorState.FLAT):
        return "dense layer on a tensor whose last axis is not the feature axis"
    if not ctx.index.is_const(layer.weight):
        return "weight is computed from the input, not a constant"
    if ctx.index.rank(layer.x) != 2:
        return f"input has rank {ctx.index.rank(layer.x)}, expected N x D"
    wshape = ctx.index.static_shape(layer.weight)
    if wshape is None or len(wshape) != 2:
        return f"weight '{layer.weight}' has no static 2-D shape"
    if (why := window_mismatch(m, wshape[1] if layer.trans_b else wshape[0])) is not None:
        return why
    if layer.bias:
        return _bias_reason(ctx, layer.bias, wshape[0] if layer.trans_b else wshape[1])
    return None


def _bias_kind(ctx: HeadContext, name: str, k: int) -> str | None:
    """'vector' (one value per output feature), 'scalar', or None (does not broadcast per feature)."""
    shape = ctx.index.static_shape(name)
    if shape is None:
        return None
    numel = math.prod(int(d) for d in shape)
    if (numel == k and all(s in (1, k) for s in shape) and k > 1) or (k == 1 and numel == 1 and len(shape) >= 1):
        return "vector"
    return "scalar" if numel == 1 else None


def _bias_reason(ctx: HeadContext, name: str, k: int) -> str | None:
    if not ctx.index.is_const(name):
        return "bias is computed from the input, not a constant"
    shape = ctx.index.static_shape(name)
    if shape is None:
        return f"bias '{name}' has no static shape"
    if _bias_kind(ctx, name, k) is None:
        return f"bias of shape {list(shape)} does not broadcast per output feature"
    return None


def _emit_conv(ctx: HeadContext, node: onnx.NodeProto, layer: DenseLayer, b: Builder) -> str:
    m = ctx.mapped[layer.x]
    wshape = ctx.index.static_shape(layer.weight)
    assert wshape is not None
    k, d = (wshape[0], wshape[1]) if layer.trans_b else (wshape[1], wshape[0])
    order, (c, h, w) = m.window if m.window is not None else ("CHW", (d, 1, 1))
    weight = _conv_weight(ctx, node, b, layer, order, (k, c, h, w))
    inputs = [m.name, weight]
    post_add: str | None = None
    if layer.bias:
        bias, scalar = _conv_bias(ctx, node, b, layer.bias, layer.beta, k)
        if scalar:
            post_add = bias
        else:
            inputs.append(bias)
    outs = [node.output[0]] if post_add is None else None
    (y,) = b.node("Conv", inputs, "conv", outputs=outs, kernel_shape=[h, w], strides=[1, 1],
                  pads=[0, 0, 0, 0], dilations=[1, 1])
    if post_add is not None:
        b.node("Add", [y, post_add], "bias", outputs=[node.output[0]])
    ctx.mapped[node.output[0]] = Mapped(node.output[0], NCHW_AXES, None)
    layout_note = f", weights permuted from {order} order" if order != "CHW" else ""
    return f"Conv {h}x{w} -> {k} channels{layout_note}"


def _conv_weight(ctx: HeadContext, node: onnx.NodeProto, b: Builder, layer: DenseLayer, order: str,
                 kchw: tuple[int, int, int, int]) -> str:
    k, c, h, w = kchw
    index, w_name, alpha = ctx.index, layer.weight, layer.alpha
    in_order, to_kchw = kernel_layout(order, k, (c, h, w))
    if alpha == 1.0 and (q := quantized_weight(ctx, b, layer.weight, layer.trans_b, order, kchw)) is not None:
        return q  # int8 values reordered, not re-quantized
    if index.foldable(w_name):
        consumers = index.consumers.get(w_name, [])
        if (w_name in index.initializers and layer.trans_b and order == "CHW" and alpha == 1.0
                and len(consumers) == 1 and w_name not in index.graph_outputs):
            # The weight's bytes already are the Conv weight's bytes: change dims only.
            ctx.plan.retarget.append((w_name, [k, c, h, w]))
            return w_name
        value = index.const_value(w_name)
        if value is None:
            raise Reject(node, f"cannot evaluate constant weight '{w_name}'")
        arr = conv_kernel(value if layer.trans_b else value.T, order, (c, h, w))
        if alpha != 1.0:
            arr = arr * np.asarray(alpha, dtype=arr.dtype)
        return b.const(f"{w_name}_conv", arr.astype(value.dtype, copy=False))
    # A computed weight (ConstantOfShape in the light zoo graphs) stays computed.
    x = w_name
    if not layer.trans_b:
        (x,) = b.node("Transpose", [x], "w_t", perm=[1, 0])
    (x,) = b.node("Reshape", [x, b.ints("w_shape", in_order)], "w_reshape")
    if order != "CHW":
        (x,) = b.node("Transpose", [x], "w_perm", perm=to_kchw)
    if alpha != 1.0:
        (x,) = b.node("Mul", [x, b.const("alpha", np.asarray(alpha, dtype=np_dtype(index, w_name)))], "w_alpha")
    return x


def _conv_bias(ctx: HeadContext, node: onnx.NodeProto, b: Builder, name: str, beta: float, k: int) -> tuple[str, bool]:
    """(the bias as the Conv's third input or a tensor to add, whether it is a scalar to add)."""
    index = ctx.index
    scalar = _bias_kind(ctx, name, k) == "scalar"
    shape = index.static_shape(name)
    dtype = np_dtype(index, name)
    if not scalar and beta == 1.0 and list(shape or ()) == [k] and dequantized(ctx, name) is not None:
        return name, False  # a QDQ int32 bias: onnxruntime fuses it into the integer Conv as it did
    if index.foldable(name):
        value = index.const_value(name)
        if value is None:
            raise Reject(node, f"cannot evaluate constant bias '{name}'")
        if not scalar and name in index.initializers and beta == 1.0 and list(shape or ()) == [k]:
            return name, False
        arr = value.reshape(-1 if not scalar else ())
        if beta != 1.0:
            arr = arr * np.asarray(beta, dtype=arr.dtype)
        return b.const(f"{name}_conv", arr.astype(dtype, copy=False)), scalar
    (x,) = b.node("Reshape", [name, b.ints("b_shape", [-1] if not scalar else [1])], "b_reshape")
    if beta != 1.0:
        (x,) = b.node("Mul", [x, b.const("beta", np.asarray(beta, dtype=dtype))], "b_beta")
    return x, scalar


@register
class Gemm(Rule):
    name = "gemm"
    ops = frozenset({"Gemm"})

    @staticmethod
    def layer(node: onnx.NodeProto) -> DenseLayer:
        return DenseLayer(node.input[0], node.input[1], bool(attr(node, "transB", 0)), float(attr(node, "alpha", 1.0)),
                          float(attr(node, "beta", 1.0)), node.input[2] if len(node.input) > 2 else "")

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        if attr(node, "transA", 0):
            return "Gemm with transA=1 puts the batch axis second; cannot slide it"
        return _conv_check(ctx, node, self.layer(node))

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        return _emit_conv(ctx, nodes[0], self.layer(nodes[0]), b)


@register
class MatMul(Rule):
    """MatMul(x, W); an Add after it is a per-feature Add (``elementwise``)."""

    name = "matmul"
    ops = frozenset({"MatMul"})

    @staticmethod
    def per_position(ctx: HeadContext, node: onnx.NodeProto) -> bool:
        """A MatMul on a channels-last pooled map already acts per position: it stays."""
        m = ctx.mapped.get(node.input[0])
        return m is not None and m.layout not in (None, NCHW_AXES) and m.window is None and m.channel_axis == 3

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        if self.per_position(ctx, node):
            return None
        return _conv_check(ctx, node, DenseLayer(node.input[0], node.input[1], False))

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        if self.per_position(ctx, node):
            ctx.keep(node, b, ctx.mapped[node.input[0]])
            return "kept: MatMul on channels-last map acts per position"
        return _emit_conv(ctx, node, DenseLayer(node.input[0], node.input[1], False), b)


_EINSUM = re.compile(r"^(\.\.\.|[a-zA-Z])([a-zA-Z]),([a-zA-Z])([a-zA-Z])->(\.\.\.|[a-zA-Z])([a-zA-Z])$")


@register
class Einsum(Rule):
    """A dense layer written as Einsum: ``nc,kc->nk`` (weight K x C) or ``nc,ck->nk`` (C x K),
    with ``...`` allowed for the batch axis. A following Add is a per-feature Add."""

    name = "einsum"
    ops = frozenset({"Einsum"})

    @staticmethod
    def layer(node: onnx.NodeProto) -> DenseLayer | None:
        eq = str(attr(node, "equation", ""))
        m = _EINSUM.match(eq.replace(" ", "")) if len(node.input) == 2 else None
        if m is None:
            return None
        n, c, w0, w1, n_out, k = m.groups()
        if n != n_out or len({n, c, k}) != 3 or {w0, w1} != {c, k}:
            return None
        return DenseLayer(node.input[0], node.input[1], trans_b=(w0, w1) == (k, c))

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        layer = self.layer(node)
        if layer is None:
            return (f"equation {attr(node, 'equation', '')!r} is not a dense layer "
                    "(need 'nc,kc->nk' or 'nc,ck->nk' with the features first)")
        return _conv_check(ctx, node, layer)

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        layer = self.layer(nodes[0])
        assert layer is not None
        return _emit_conv(ctx, nodes[0], layer, b)


def _einsum_bound(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    """The original Einsum's rounding bound, for verify: a dense layer's."""
    layer = Einsum.layer(node)
    if layer is None:
        raise NoBoundError(f"Einsum {attr(node, 'equation', '')!r} is not a dense layer")
    return dense_bound(ev, ins[0], ins[1], trans_b=layer.trans_b)


register_bound("Einsum", _einsum_bound)
