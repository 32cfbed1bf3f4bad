"""Trunk generalization: nodes that baked the reference size (or batch 1) into constants.

Exporters write shapes as constants: ShuffleNet's channel shuffle becomes
``Reshape(x, [1, 2, 58, 28, 28])``, which fails at any other input size or batch. Such a shape is
rebuilt from the tensor's own shape, ``Concat(Shape(x)[:1], [2, 58], Shape(x)[-2:])``; the
constants that do not depend on the size stay. A node that cannot be generalized is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import UnsupportedModelError
from .graph import GraphIndex, node_label
from .head import Analysis, State
from .rewrite import Change

_INT_MAX = 2**63 - 1


@dataclass
class TrunkPlan:
    replacements: dict[int, list[onnx.NodeProto]] = field(default_factory=dict)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    consts: dict[tuple[int, ...], str] = field(default_factory=dict)


def _const(index: GraphIndex, plan: TrunkPlan, values: list[int]) -> str:
    """An int64 initializer, shared by every node that needs the same values."""
    key = tuple(values)
    if key not in plan.consts:
        name = index.fresh("c")
        plan.initializers.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        plan.consts[key] = name
    return plan.consts[key]


def _slice(index: GraphIndex, plan: TrunkPlan, nodes: list[onnx.NodeProto], src: str, start: int, end: int) -> str:
    out = index.fresh("dim")
    if index.opset >= 10:
        inputs = [src, _const(index, plan, [start]), _const(index, plan, [end]), _const(index, plan, [0])]
        nodes.append(helper.make_node("Slice", inputs, [out], name=index.fresh("slice")))
    else:
        nodes.append(helper.make_node("Slice", [src], [out], name=index.fresh("slice"),
                                      starts=[start], ends=[end], axes=[0]))
    return out


def plan_trunk_rewrite(analysis: Analysis) -> TrunkPlan:
    """Plan the generalization of every trunk Reshape whose shape constant holds the batch or H, W."""
    index = analysis.index
    plan = TrunkPlan()
    head_ids = {id(n) for h in analysis.heads for n in h.nodes}
    for node in index.graph.node:
        if id(node) in head_ids or node.op_type != "Reshape":
            continue
        src = analysis.info.get(node.input[0])
        out = analysis.info.get(node.output[0])
        if src is None or src.state is not State.SPATIAL or out is None or out.state is not State.SPATIAL:
            continue
        if not index.is_const(node.input[1]):
            continue  # computed from Shape already: follows the input size
        target = index.int_list(node.input[1])
        in_shape = index.static_shape(node.input[0])
        out_shape = index.static_shape(node.output[0])
        if target is None or in_shape is None or out_shape is None:
            raise UnsupportedModelError("Reshape in the trunk has no static shape to generalize", node_label(node))
        lay_in, lay_out = src.layout, out.layout
        r_in, r_out = len(in_shape), len(out_shape)
        if lay_in is None or lay_out is None or lay_in[2:] != (r_in - 2, r_in - 1) or lay_out[2:] != (r_out - 2, r_out - 1) \
                or out_shape[-2:] != in_shape[-2:] or out_shape[0] != in_shape[0]:
            raise UnsupportedModelError(
                f"Reshape {list(in_shape)} -> {list(out_shape)} moves the batch or spatial axes; cannot generalize",
                node_label(node))
        middle = [int(d) for d in out_shape[1:-2]]
        if -1 in target[1:-2] or 0 in target[1:-2]:
            middle = [int(d) for d in out_shape[1:-2]]
        nodes: list[onnx.NodeProto] = []
        shp = index.fresh("shape")
        nodes.append(helper.make_node("Shape", [node.input[0]], [shp], name=index.fresh("shape")))
        n = _slice(index, plan, nodes, shp, 0, 1)
        hw = _slice(index, plan, nodes, shp, r_in - 2, _INT_MAX)
        mid = _const(index, plan, middle)
        new_shape = index.fresh("dyn_shape")
        nodes.append(helper.make_node("Concat", [n, mid, hw], [new_shape], name=index.fresh("concat"), axis=0))
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.input[1] = new_shape
        nodes.append(new)
        plan.replacements[id(node)] = nodes
        plan.changes.append(Change(node_label(node), f"Reshape(to {target})",
                                   f"Reshape(to [N, {', '.join(map(str, middle))}, H, W] from Shape)"))
    return plan
