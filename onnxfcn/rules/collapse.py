"""The node that ends the spatial trunk: a Flatten (or its Reshape spellings) of the feature map,
or a global pool (GlobalAverage/MaxPool, ReduceMean/ReduceMax/ReduceSum over H and W, a pool
covering the map). A flatten becomes nothing (the next dense layer reads the map as a window); a
pool becomes a stride-1 window pool (window mode) or nothing (dense mode; a sum, the cell times the
window's cell count, as if the window held that cell everywhere)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import attr
from ..head import NCHW_AXES, TensorState, collapse_kind, flatten_order, perm_to
from ..rewrite import Builder, HeadContext, Mapped, np_dtype
from .base import Rule, register

# dtypes ONNX's Conv takes (bfloat16 keeps the pool)
_CONV_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


@register
class Collapse(Rule):
    """Any node whose first input is the spatial feature map."""

    name = "collapse"
    priority = 0

    def match(self, ctx: HeadContext, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        return [node] if node.input and ctx.state(node.input[0]) is TensorState.SPATIAL else None

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        kind = collapse_kind(ctx.analysis, node)
        axis = attr(node, "axis", 1)
        if node.op_type == "Flatten" and axis != 1:
            return f"Flatten with axis={axis} mixes the batch and feature axes (need axis=1)"
        if kind is None:
            return "reads the feature map but neither pools it globally nor flattens it"
        if node.op_type.startswith("Reduce") and node.op_type not in ("ReduceMean", "ReduceMax", "ReduceSum"):
            return f"{node.op_type} over H and W has no window form here (mean, max and sum pools have)"
        if node.op_type == "ReduceSum" and np_dtype(ctx.index, node.input[0]) not in _CONV_DTYPES:
            return "ReduceSum over a map whose type Conv does not take"
        if ctx.index.static_shape(node.input[0]) is None:
            return "feature map has no static shape at the reference size"
        if kind == "flatten":
            _, (c, h, w) = flatten_order(ctx.analysis, node.input[0])
            out = ctx.index.static_shape(node.output[0])
            if out is None or out[1] != c * h * w:
                return f"flattens {c}x{h}x{w} to shape {out}, not N x {c * h * w}"
        return None

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        kind = collapse_kind(ctx.analysis, node)
        feat = node.input[0]
        order, (c, h, w) = flatten_order(ctx.analysis, feat)
        lay = ctx.analysis.layout(feat)
        src = ctx.as_nchw(feat, lay, b)
        plan = ctx.plan
        plan.sources.append(src)
        plan.features.append(feat)
        if kind == "flatten":
            plan.windows.append((h, w))
            window = None if (h, w) == (1, 1) else (order, (c, h, w))
            ctx.mapped[node.output[0]] = Mapped(src, NCHW_AXES, window)
            return f"removed: the next dense layer reads the {c}x{h}x{w} map as a {h}x{w} window"
        pool_op = "MaxPool" if "Max" in node.op_type else "AveragePool"
        dtype = np_dtype(ctx.index, feat)
        if node.op_type == "ReduceSum":
            pooled, after = window_sum(ctx, b, src, c, h, w, dtype)
        elif ctx.mode == "window":
            plan.windows.append((h, w))
            if pool_op == "AveragePool" and (h, w) != (1, 1) and dtype in _CONV_DTYPES:
                pooled = window_average(ctx, b, src, c, h, w, dtype)
                after = f"depthwise Conv {h}x{w} of 1/{h * w}, stride 1 (one cell per {h}x{w} feature window)"
            else:
                pooled = window_pool(ctx, b, pool_op, src, h, w)
                after = f"{pool_op} {h}x{w}, stride 1 (one cell per {h}x{w} feature window)"
        else:
            plan.windows.append((1, 1))
            plan.pools_dropped += 1
            pooled = src
            after = "removed (dense mode: every feature cell is scored on its own)"
        if kind == "pool+flatten":
            ctx.mapped[node.output[0]] = Mapped(pooled, NCHW_AXES, None)
        else:
            if lay != NCHW_AXES:
                (pooled,) = b.node("Transpose", [pooled], "to_layout", perm=perm_to(NCHW_AXES, lay))
            ctx.mapped[node.output[0]] = Mapped(pooled, lay, None)
        return after


def window_sum(ctx: HeadContext, b: Builder, src: str, c: int, h: int, w: int, dtype: np.dtype) -> tuple[str, str]:
    """ReduceSum over H and W (jax2onnx writes a mean as a sum and a division): in window mode a
    depthwise Conv of ones; in dense mode the cell times h*w, the sum of a window that held it
    everywhere. Both multiply by exact values: the original's bound for the sum covers them."""
    plan = ctx.plan
    if ctx.mode == "window":
        plan.windows.append((h, w))
        return (window_average(ctx, b, src, c, h, w, dtype, weight_value=1.0),
                f"depthwise Conv {h}x{w} of ones, stride 1 (one sum per {h}x{w} feature window)")
    plan.windows.append((1, 1))
    plan.pools_dropped += 1
    (out,) = b.node("Mul", [src, b.const("cells", np.asarray(h * w, dtype=dtype))], "cell_sum")
    return out, f"times {h * w} (dense mode: every feature cell is scored on its own, as a whole window of it)"


def window_average(ctx: HeadContext, b: Builder, src: str, c: int, h: int, w: int, dtype: np.dtype,
                   weight_value: float | None = None) -> str:
    """A stride-1 h x w average as a depthwise Conv with weights 1/(h*w).

    Not an AveragePool: onnxruntime's NCHWc pool divides by zero when its output size is 0, and
    the padded pool that avoids it (``window_pool``) costs H*W*h*w even when no window fits. The
    Conv computes only the valid windows and refuses a map smaller than its kernel with a clean
    error. Rounding: fl(1/n) adds at most one unit roundoff, the same sign for every term, which
    the bound of the original's mean (gamma_n) covers with LAMBDA*sqrt(n)*u >= u. From opset 9
    the weights are a ConstantOfShape (no bytes in the file).
    """
    value = np.asarray([1.0 / (h * w) if weight_value is None else weight_value], dtype=dtype)
    if ctx.index.opset >= 9:
        (weight,) = b.node("ConstantOfShape", [b.ints("mean_shape", [c, 1, h, w])], "mean_weight",
                           value=numpy_helper.from_array(value, "value"))
    else:
        weight = b.const("mean_weight", np.full((c, 1, h, w), value[0], dtype=dtype))
    (out,) = b.node("Conv", [src, weight], "window_mean", kernel_shape=[h, w], strides=[1, 1],
                    pads=[0, 0, 0, 0], group=c)
    return out


def window_pool(ctx: HeadContext, b: Builder, pool_op: str, src: str, h: int, w: int) -> str:
    """A stride-1 h x w pool whose own output is never empty (MaxPool; AveragePool in bfloat16).

    onnxruntime's NCHWc pooling kernel divides by zero (SIGFPE, the host process dies) when a
    pool's output size is exactly 0, i.e. when the map is one cell short of the window. So the
    map is first padded by h-1, w-1 at the bottom and right, which makes the pool's output as
    large as its input, and a Slice then drops the windows that reach into the padding (their
    values never matter). A map smaller than the window gives an empty slice; nothing divides by
    zero. The padding is a Pad node, not the pool's own asymmetric ``pads``: onnx.reference
    (1.23) reads a unit-stride MaxPool's pads as [top, bottom, left, right] and gets the shape
    wrong. Its ``mode`` is written out (the default, "constant"): pnnx translates a Pad to ncnn's
    Padding only when it is there.
    """
    if (h, w) == (1, 1):
        (out,) = b.node(pool_op, [src], "window_pool", kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0])
        return out
    pads = [0, 0, 0, 0, 0, 0, h - 1, w - 1]
    if ctx.index.opset >= 11:
        (padded,) = b.node("Pad", [src, b.ints("window_pads", pads)], "window_pad", mode="constant")
    else:
        (padded,) = b.node("Pad", [src], "window_pad", pads=pads, mode="constant")
    (pooled,) = b.node(pool_op, [padded], "window_pool", kernel_shape=[h, w], strides=[1, 1], pads=[0, 0, 0, 0])
    return valid_windows(ctx, b, pooled, h, w)


def valid_windows(ctx: HeadContext, b: Builder, pooled: str, h: int, w: int, output: str | None = None) -> str:
    """Drop the last h-1 rows and w-1 columns of a pool run over a map padded at the end by as
    much: the windows that reach into the padding. Negative ends, not "to INT_MAX from h-1":
    tract cannot slice a symbolic dim to INT_MAX."""
    outputs = [output] if output else None
    axes = [ax for ax, k in ((2, h), (3, w)) if k > 1]
    ends = [1 - k for k in (h, w) if k > 1]
    if not axes:
        return b.node("Identity", [pooled], "window_valid", outputs=outputs)[0] if output else pooled
    if ctx.index.opset >= 10:
        inputs = [pooled, b.ints("starts", [0] * len(axes)), b.ints("ends", ends), b.ints("axes", axes)]
        return b.node("Slice", inputs, "window_valid", outputs=outputs)[0]
    return b.node("Slice", [pooled], "window_valid", outputs=outputs, starts=[0] * len(axes), ends=ends, axes=axes)[0]
