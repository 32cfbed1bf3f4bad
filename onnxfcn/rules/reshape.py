"""Reshapes of head tensors after the collapse: flattening a pooled map (which stays 4-D), no-op
reshapes, the dynamo exporter's ravel-and-Gather idiom, a Transpose of a pooled map, and a 1x1
Conv on a pooled map (MobileNetV3's head)."""

from __future__ import annotations

import numpy as np
import onnx

from ..graph import attr
from ..head import NCHW_AXES, TensorState, perm_to
from ..rewrite import Builder, HeadContext, Mapped
from .base import Rule, register


def _ravel_gather(ctx: HeadContext, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """The Gather that undoes ``node``'s ravel of a pooled map to 1-D, when there is one."""
    src = node.input[0]
    in_shape, out_shape = ctx.index.static_shape(src), ctx.index.static_shape(node.output[0])
    if ctx.state(src) is not TensorState.POOLED or in_shape is None or out_shape is None or len(out_shape) != 1:
        return None
    consumers = ctx.index.consumers.get(node.output[0], [])
    if len(consumers) != 1 or consumers[0].op_type != "Gather" or consumers[0].input[0] != node.output[0]:
        return None
    return consumers[0]


@register
class RavelGather(Rule):
    """torch.as_strided from the dynamo exporter: Reshape(pooled map, [-1]), then a Gather whose
    indices put every element back where it was. Both go: the 4-D map already is the result."""

    name = "ravel-gather"
    priority = 10
    ops = frozenset({"Reshape"})

    def match(self, ctx: HeadContext, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        if node.op_type not in self.ops:
            return None
        gather = _ravel_gather(ctx, node)
        return [node, gather] if gather is not None else None

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        ravel, gather = nodes
        if (why := ctx.unmapped(ravel)) is not None:
            return why
        shape = ctx.index.static_shape(ravel.input[0])
        idx = ctx.index.const_value(gather.input[1])
        if idx is None or shape is None or idx.shape != tuple(shape) or not np.array_equal(idx.reshape(-1), np.arange(idx.size)):
            return "Gather reorders the raveled features"
        return None

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        ravel, gather = nodes
        ctx.mapped[gather.output[0]] = ctx.mapped[ravel.input[0]]
        return "removed: ravel and the identity Gather after it (as_strided)"


@register
class ReshapeLike(Rule):
    """Flatten/Reshape/Squeeze/Unsqueeze of a head tensor: a pooled N x C x 1 x 1 map flattened
    to N x C stays 4-D; a reshape that is a no-op at the reference size goes."""

    name = "reshape"
    ops = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze"})

    @staticmethod
    def kind(ctx: HeadContext, node: onnx.NodeProto) -> str | None:
        src = node.input[0]
        in_shape, out_shape = ctx.index.static_shape(src), ctx.index.static_shape(node.output[0])
        if ctx.state(src) is TensorState.POOLED and out_shape is not None and len(out_shape) == 2:
            return "flatten-pooled"
        if in_shape is not None and in_shape == out_shape:
            return "no-op"
        return None

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        if (why := ctx.unmapped(node)) is not None:
            return why
        if self.kind(ctx, node) is None:
            return (f"reshapes the head tensor {ctx.index.static_shape(node.input[0])} -> "
                    f"{ctx.index.static_shape(node.output[0])}")
        return None

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        m = ctx.mapped[node.input[0]]
        if self.kind(ctx, node) == "no-op":
            ctx.mapped[node.output[0]] = m
            return "removed: a no-op at the reference size"
        assert m.layout is not None
        name = m.name if m.layout == NCHW_AXES else b.node("Transpose", [m.name], "to_nchw", perm=perm_to(m.layout, NCHW_AXES))[0]
        ctx.mapped[node.output[0]] = Mapped(name, NCHW_AXES, None)
        return "removed: pooled map is kept 4-D"


@register
class TransposePooled(Rule):
    name = "transpose"
    ops = frozenset({"Transpose"})

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        if (why := ctx.unmapped(node)) is not None:
            return why
        if ctx.state(node.input[0]) is not TensorState.POOLED or ctx.mapped[node.input[0]].layout is None:
            return "transposes a flattened feature vector"
        return None

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        ctx.keep(node, b, Mapped(node.output[0], ctx.analysis.info[node.output[0]].layout, None))
        return None


@register
class PooledConv(Rule):
    name = "pooled-conv"
    ops = frozenset({"Conv"})

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        if (why := ctx.unmapped(node)) is not None:
            return why
        if ctx.state(node.input[0]) is not TensorState.POOLED or ctx.mapped[node.input[0]].channel_axis != 1:
            return "Conv on a flattened vector"
        wshape = ctx.index.static_shape(node.input[1])
        if wshape is None or tuple(wshape[2:]) != (1, 1) or any(attr(node, "pads", [0]) or [0]):
            return "Conv after the global pool must be 1x1 without padding"
        return None

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        ctx.keep(node, b, ctx.mapped[node.input[0]])
        return None
