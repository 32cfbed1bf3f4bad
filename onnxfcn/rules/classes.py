"""Ops on the class axis at the end of a head: the Softmax family, ArgMax/ArgMin, TopK, class
reductions, and a Concat of feature vectors. Their axis becomes the channel axis of the map."""

from __future__ import annotations

import onnx

from ..graph import attr
from ..rewrite import Builder, HeadContext, Mapped, set_attr
from .base import Rule, register
from .elementwise import normalizes_features_only

ARG = frozenset({"ArgMax", "ArgMin"})
CLASS_REDUCE = frozenset({"ReduceMax", "ReduceMin", "ReduceMean", "ReduceSum", "ReduceLogSumExp"})


@register
class SoftmaxFamily(Rule):
    """From opset 13 the axis is rewritten; before, the op flattens its input to 2-D at ``axis``,
    so the class axis is moved last around it and each cell is normalized on its own."""

    name = "softmax"
    ops = frozenset({"Softmax", "LogSoftmax", "Hardmax"})

    @staticmethod
    def axis(ctx: HeadContext, node: onnx.NodeProto) -> int:
        return int(attr(node, "axis", -1 if ctx.index.opset >= 13 else 1))

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        m, why = ctx.per_cell_input(node, "softmax over")
        if m is None:
            return why
        axis = self.axis(ctx, node)
        if ctx.index.opset >= 13:
            return ctx.feature_axis_reason(node, m, axis)
        if not normalizes_features_only(ctx, node, m, axis % ctx.rank(node.input[0])):
            return f"axis={axis} does not normalize over the class axis"
        return None

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        m = ctx.mapped[node.input[0]]
        axis, rank, opset = self.axis(ctx, node), ctx.rank(node.input[0]), ctx.index.opset
        if opset >= 13:
            ctx.keep_with_axis(node, b, m, m.channel_axis)
            return f"axis={axis} -> axis={m.channel_axis}" if axis % rank != m.channel_axis or rank != 4 else None
        ctx.channels_last(node, b, m, {"axis": 3})
        return f"axis={axis} -> Transpose, {node.op_type}(axis=3), Transpose (opset {opset} coerces to 2-D)"


@register
class ClassAxis(Rule):
    """ArgMax/ArgMin, TopK and reductions over the class axis alone."""

    name = "class-axis"
    ops = ARG | CLASS_REDUCE | {"TopK"}

    @staticmethod
    def axis(ctx: HeadContext, node: onnx.NodeProto) -> int | None:
        if node.op_type in CLASS_REDUCE:
            axes = attr(node, "axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                axes = ctx.index.int_list(node.input[1])
            return int(axes[0]) if axes is not None and len(axes) == 1 else None
        return int(attr(node, "axis", 0 if node.op_type in ARG else -1))

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        m, why = ctx.per_cell_input(node, "reduces over")
        if m is None:
            return why
        axis = self.axis(ctx, node)
        if axis is None:
            return "reduction must be over the class axis alone"
        return ctx.feature_axis_reason(node, m, axis)

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        m = ctx.mapped[node.input[0]]
        op = node.op_type
        if op in CLASS_REDUCE:
            keep = attr(node, "keepdims", 1)
            ctx.keep(node, b, m)
            if attr(node, "axes") is not None:
                set_attr(b.nodes[-1], "axes", [m.channel_axis])
            else:
                b.nodes[-1].input[1] = b.ints("axes", [m.channel_axis])
        else:
            keep = attr(node, "keepdims", 1) if op in ARG else 1
            ctx.keep_with_axis(node, b, m, m.channel_axis)
        if not keep:
            for o in node.output:
                if o:
                    ctx.mapped[o] = Mapped(o, None, None)
        return f"axis -> {m.channel_axis}" if ctx.rank(node.input[0]) == 2 else None


@register
class ConcatFeatures(Rule):
    name = "concat"
    ops = frozenset({"Concat"})

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        heads = ctx.head_inputs(node)
        if len(heads) != len([i for i in node.input if i]):
            return "concatenates a head tensor with a constant"
        if (why := ctx.unmapped(node, heads)) is not None:
            return why
        ms = [ctx.mapped[h] for h in heads]
        if any((x.layout, x.window) != (ms[0].layout, ms[0].window) or x.window is not None for x in ms):
            return "operands have different layouts"
        return ctx.feature_axis_reason(node, ms[0], attr(node, "axis"))

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        m = ctx.mapped[ctx.head_inputs(node)[0]]
        ctx.keep_with_axis(node, b, m, m.channel_axis)
        return None
