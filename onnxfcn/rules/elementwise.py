"""Ops that act on each feature vector alone: activations, per-feature arithmetic, and the
normalizations. They are copied onto the 4-D tensors; constants broadcast over N x D are
reshaped to 1 x D x 1 x 1."""

from __future__ import annotations

import onnx

from ..graph import attr
from ..head import TensorState
from ..rewrite import Builder, HeadContext, Mapped
from .base import Rule, register

UNARY = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
    "Gelu", "Clip", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Shrink", "Exp", "Log", "Neg",
    "Abs", "Sqrt", "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Dropout", "Identity",
    "Cast", "CastLike",
})
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean"})


@register
class Unary(Rule):
    """Activations and casts; PRelu's slope is per feature."""

    name = "unary"
    ops = UNARY

    @staticmethod
    def slope(ctx: HeadContext, node: onnx.NodeProto) -> str | None:
        """PRelu's slope, when it must be reshaped (the input is a vector, not a pooled map)."""
        if node.op_type == "PRelu" and len(node.input) > 1 and ctx.state(node.input[0]) is not TensorState.POOLED:
            return node.input[1]
        return None

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        if (why := ctx.unmapped(node)) is not None:
            return why
        slope = self.slope(ctx, node)
        return ctx.per_feature_reason(slope, ctx.mapped[node.input[0]]) if slope else None

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        m = ctx.mapped[node.input[0]]
        slope = self.slope(ctx, node)
        replace = {slope: ctx.per_feature_const(node, b, slope, m)} if slope else {}
        ctx.keep(node, b, m, replace)
        return f"{node.op_type} with slope reshaped per channel" if replace else None


@register
class Binary(Rule):
    """Elementwise arithmetic between head tensors of one layout, or with per-feature constants."""

    name = "binary"
    ops = BINARY

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        heads = ctx.head_inputs(node)
        if not heads:
            return "no head tensor among the operands"
        if (why := ctx.unmapped(node, heads)) is not None:
            return why
        m = ctx.mapped[heads[0]]
        if any((ctx.mapped[h].layout, ctx.mapped[h].window) != (m.layout, m.window) for h in heads[1:]):
            return "operands have different layouts"
        if ctx.state(heads[0]) is TensorState.POOLED:
            return None  # 4-D already: constants broadcast as they did
        for i in node.input:
            if i and i not in heads and (why := ctx.per_feature_reason(i, m)) is not None:
                return why
        return None

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        heads = ctx.head_inputs(node)
        m = ctx.mapped[heads[0]]
        replace: dict[str, str] = {}
        if ctx.state(heads[0]) is not TensorState.POOLED:
            for i in node.input:
                if i and i not in heads:
                    new = ctx.per_feature_const(node, b, i, m)
                    if new != i:
                        replace[i] = new
        ctx.keep(node, b, m, replace)
        return "constant reshaped to 1xDx1x1" if replace else None


def _trailing_outputs_used(ctx: HeadContext, node: onnx.NodeProto) -> bool:
    return any(o for o in node.output[1:] if ctx.index.consumers.get(o))


def normalizes_features_only(ctx: HeadContext, node: onnx.NodeProto, m: Mapped, ax: int) -> bool:
    """Before opset 13 Softmax, and LayerNormalization always, normalize over axes ax..rank-1: on
    a pooled map that must be the channel axis and axes of size 1."""
    name = node.input[0]
    if ctx.state(name) is TensorState.FLAT:
        return ax == 1
    shape = ctx.index.static_shape(name) or ()
    return ax <= m.channel_axis and all(shape[i] == 1 for i in range(ax, ctx.rank(name)) if i != m.channel_axis)


@register
class BatchNormalization(Rule):
    name = "batchnorm"
    ops = frozenset({"BatchNormalization"})

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        m, why = ctx.per_cell_input(node, "normalizes")
        if m is None:
            return why
        if m.layout is not None and m.channel_axis != 1:
            return "BatchNormalization on a channels-last map"
        if _trailing_outputs_used(ctx, node):
            return "training-mode outputs are used"
        return None

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        ctx.keep(node, b, ctx.mapped[node.input[0]])
        del b.nodes[-1].output[1:]
        return None


@register
class LayerNormalization(Rule):
    name = "layernorm"
    ops = frozenset({"LayerNormalization"})

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        (node,) = nodes
        m, why = ctx.per_cell_input(node, "normalizes")
        if m is None:
            return why
        if _trailing_outputs_used(ctx, node):
            return "Mean/InvStdDev outputs are used"
        ax = attr(node, "axis", -1) % ctx.rank(node.input[0])
        if not normalizes_features_only(ctx, node, m, ax):
            return f"axis={attr(node, 'axis', -1)} normalizes more than the feature axis"
        return None

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        (node,) = nodes
        m = ctx.mapped[node.input[0]]
        if m.channel_axis == 3 and attr(node, "axis", -1) % ctx.rank(node.input[0]) == 3:
            ctx.keep(node, b, m)
            return None
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.output[1:]
        ctx.channels_last(new, b, m, {"axis": -1})
        return "normalizes over channels: Transpose, LayerNormalization(axis=-1), Transpose"
