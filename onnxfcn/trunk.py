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
from .graph import GraphIndex, attr, node_label
from .head import Analysis, TensorState
from .opspec import reference_pads
from .rewrite import Change

_INT_MAX = 2**63 - 1


@dataclass
class TrunkPlan:
    replacements: dict[int, list[onnx.NodeProto]] = field(default_factory=dict)  # by position in graph.node
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
    """Plan the generalization of trunk nodes that hold the batch or H, W as constants."""
    plan = TrunkPlan()
    plan.changes.extend(Change(*spelling) for spelling in analysis.spellings)
    head_ids = {id(n) for h in analysis.heads for n in h.nodes}
    for position, node in enumerate(analysis.index.graph.node):
        if id(node) in head_ids:
            continue
        if node.op_type == "Slice":
            _plan_slice(analysis, plan, node, position)
        elif node.op_type == "Pad":
            _plan_computed_pad(analysis, plan, node, position)
        elif node.op_type in ("Expand", "Tile", "ConstantOfShape", "Resize", "Upsample"):
            _refuse_baked(analysis, node)
        else:
            _refuse_spatial_constant(analysis, node)
            if node.op_type == "Reshape":
                vectors = (TensorState.POOLED, TensorState.FLAT)
                if analysis.state(node.input[0]) in vectors or analysis.state(node.output[0]) in vectors:
                    _plan_vector_reshape(analysis, plan, node, position)  # tokens contracted away too
                elif any(analysis.state(t) is TensorState.TOKENS for t in (node.input[0], node.output[0])):
                    _plan_token_reshape(analysis, plan, node, position)
                else:
                    _plan_reshape(analysis, plan, node, position)
    return plan


def _plan_vector_reshape(analysis: Analysis, plan: TrunkPlan, node: onnx.NodeProto, position: int) -> None:
    """A Reshape of pooled vectors inside the trunk (a squeeze-excitation's ``view(b, c)``,
    ResNeSt's radix softmax) whose constant shape holds the exported batch as its first dim: that
    dim becomes 0 (the input's batch), so the branch follows any batch."""
    index = analysis.index
    lay = analysis.layout(node.input[0]) if analysis.state(node.input[0]) is TensorState.POOLED else None
    in_shape = index.static_shape(node.input[0])
    if not index.is_const(node.input[1]) or in_shape is None or (lay is not None and lay[0] != 0):
        return
    target = index.int_list(node.input[1])
    if not target or target[0] != in_shape[0] or target[0] <= 0:
        return  # -1 or 0 follow the batch already; another first dim does not hold the batch
    if attr(node, "allowzero", 0) and 0 in target[1:]:
        raise UnsupportedModelError("Reshape with allowzero and a zero dim in the trunk; cannot generalize the batch",
                                    node_label(node))
    plan.replacements[position] = [_reshape_to(node, _const(index, plan, [0, *target[1:]]))]
    plan.changes.append(Change(node_label(node), f"Reshape(to {target})",
                               f"Reshape(to {[0, *target[1:]]}: the batch from the input)"))


def _plan_token_reshape(analysis: Analysis, plan: TrunkPlan, node: onnx.NodeProto, position: int) -> None:
    """A Reshape to tokens, between tokens, or back to the map, its shape rebuilt: the token axis
    becomes -1 (it follows the map's size), H and W come from the map's Shape, the batch from the
    input's; the other dims do not depend on the size. A shape the exporter computed is rebuilt
    too: exporters leave a batch of 1 in it where the batch was not dynamic."""
    index = analysis.index
    src, dst = analysis.info[node.input[0]], analysis.info[node.output[0]]
    if dst.tokens is not None and dst.tokens.blocked is not None:
        return  # refused where the tokens reach an output
    out = index.static_shape(node.output[0])
    if out is None:
        raise UnsupportedModelError("Reshape of tokens has no static shape to generalize", node_label(node))
    in_batch = src.tokens.batch if src.tokens is not None else (src.layout or (0,))[0]
    nodes: list[onnx.NodeProto] = []
    pieces: list[str | int | None] = list(out)  # None: covered by the piece before it
    words = [str(d) for d in out]
    if dst.tokens is not None:
        out_batch = dst.tokens.batch
        for a in dst.tokens.axes:
            pieces[a], words[a] = -1, "tokens"
    else:  # back into the map the tokens came from: H and W (adjacent) from its Shape
        assert src.tokens is not None and dst.layout is not None
        source = src.tokens.source
        out_batch, lay, h = dst.layout[0], analysis.layout(source), dst.layout[2]
        shape = index.fresh("shape")
        nodes.append(helper.make_node("Shape", [source], [shape], name=index.fresh("shape")))
        pieces[h], pieces[h + 1] = _slice(index, plan, nodes, shape, lay[2], lay[3] + 1), None
        words[h], words[h + 1] = "H", "W"
    if in_batch is None or out_batch is None:
        raise UnsupportedModelError("Reshape of tokens merges the batch with another axis; cannot generalize",
                                    node_label(node))
    words[out_batch] = "N"
    if in_batch == out_batch:
        pieces[out_batch] = 0  # Reshape's 0: the input's dim at the same position
    else:
        shape = index.fresh("shape")
        nodes.append(helper.make_node("Shape", [node.input[0]], [shape], name=index.fresh("shape")))
        pieces[out_batch] = _slice(index, plan, nodes, shape, in_batch, in_batch + 1)
    nodes.append(_reshape_to(node, _concat(index, plan, nodes, [p for p in pieces if p is not None])))
    plan.replacements[position] = nodes
    target = index.int_list(node.input[1]) if index.is_const(node.input[1]) else None
    plan.changes.append(Change(node_label(node), f"Reshape(to {target if target is not None else 'a computed shape'})",
                               f"Reshape(to [{', '.join(words)}]: the tokens follow the map's size)"))


def _reshape_to(node: onnx.NodeProto, shape: str) -> onnx.NodeProto:
    """A copy of a Reshape to ``shape``, whose 0s copy the input's dims (allowzero off)."""
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.input[1] = shape
    for a in new.attribute:
        if a.name == "allowzero":
            a.i = 0
    return new


def _concat(index: GraphIndex, plan: TrunkPlan, nodes: list[onnx.NodeProto], pieces: list[str | int]) -> str:
    """A shape from constants and computed dims: one initializer when all are constant, else a
    Concat of runs of constants and the computed ones."""
    if all(isinstance(p, int) for p in pieces):
        return _const(index, plan, [int(p) for p in pieces])
    parts: list[str] = []
    run: list[int] = []
    for p in pieces:
        if isinstance(p, int):
            run.append(p)
            continue
        if run:
            parts.append(_const(index, plan, run))
            run = []
        parts.append(p)
    if run:
        parts.append(_const(index, plan, run))
    out = index.fresh("dyn_shape")
    nodes.append(helper.make_node("Concat", parts, [out], name=index.fresh("concat"), axis=0))
    return out


def _plan_reshape(analysis: Analysis, plan: TrunkPlan, node: onnx.NodeProto, position: int) -> None:
    """A constant-shape Reshape that keeps batch first and H, W last: rebuild its shape from Shape."""
    index = analysis.index
    src = analysis.info.get(node.input[0])
    out = analysis.info.get(node.output[0])
    if src is None or src.state is not TensorState.SPATIAL or out is None or out.state is not TensorState.SPATIAL:
        return
    if not index.is_const(node.input[1]):
        return  # computed from Shape already: follows the input size
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
    middle = [int(d) for d in out_shape[1:-2]]  # channel dims: independent of the input size
    nodes: list[onnx.NodeProto] = []
    shp = index.fresh("shape")
    nodes.append(helper.make_node("Shape", [node.input[0]], [shp], name=index.fresh("shape")))
    n = _slice(index, plan, nodes, shp, 0, 1)
    hw = _slice(index, plan, nodes, shp, r_in - 2, _INT_MAX)
    new_shape = index.fresh("dyn_shape")
    nodes.append(helper.make_node("Concat", [n, _const(index, plan, middle), hw], [new_shape],
                                  name=index.fresh("concat"), axis=0))
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.input[1] = new_shape
    nodes.append(new)
    plan.replacements[position] = nodes
    plan.changes.append(Change(node_label(node), f"Reshape(to {target})",
                               f"Reshape(to [N, {', '.join(map(str, middle))}, H, W] from Shape)"))


def _plan_computed_pad(analysis: Analysis, plan: TrunkPlan, node: onnx.NodeProto, position: int) -> None:
    """A Pad of the map whose amounts are computed from its size (SAME padding): fixed at the
    reference size's, the amounts the geometry was composed with (``opspec.pad_spec``). Each window
    is then padded as the original pads the reference-size input; computed on, the amounts would
    change with the parity of the map and shift the cells."""
    index = analysis.index
    if len(node.input) < 2 or not node.input[1] or index.is_const(node.input[1]) or _spatial_axes(analysis, node.input[0]) is None:
        return
    pads = reference_pads(analysis, node)
    if pads is None:
        raise UnsupportedModelError("Pad amounts are computed, not constant", node_label(node))
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.input[1] = _const(index, plan, pads)
    plan.replacements[position] = [new]
    plan.changes.append(Change(node_label(node), "Pad(amounts computed from the input size)",
                               f"Pad({pads}: the reference size's amounts, for every window)"))


def _spatial_axes(analysis: Analysis, name: str) -> tuple[int, int, int] | None:
    info = analysis.info.get(name)
    if info is None or info.state is not TensorState.SPATIAL or info.layout is None:
        return None
    return info.layout[0], info.layout[2], info.layout[3]


def _plan_slice(analysis: Analysis, plan: TrunkPlan, node: onnx.NodeProto, position: int) -> None:
    """A Slice that keeps the whole batch/H/W extent at the reference size keeps it at any size."""
    index = analysis.index
    axes_nhw = _spatial_axes(analysis, node.input[0])
    shape = index.static_shape(node.input[0])
    if axes_nhw is None or shape is None:
        return
    rank = len(shape)
    if index.opset >= 10:
        starts, ends = index.int_list(node.input[1]), index.int_list(node.input[2])
        axes = index.int_list(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        steps = index.int_list(node.input[4]) if len(node.input) > 4 and node.input[4] else None
        if starts is None or ends is None or not (index.is_const(node.input[1]) and index.is_const(node.input[2])):
            return  # computed from Shape: follows the input size already
    else:
        starts, ends, axes, steps = attr(node, "starts"), attr(node, "ends"), attr(node, "axes"), None
    axes = [a % rank for a in (axes if axes is not None else range(len(starts)))]
    steps = steps or [1] * len(axes)
    keep = []  # entries that slice other axes (channels): they stay as they are
    for k, ax in enumerate(axes):
        if ax not in axes_nhw:
            keep.append(k)
        elif not (starts[k] == 0 and steps[k] == 1 and ends[k] >= shape[ax]):
            raise UnsupportedModelError(
                f"Slice crops the batch or spatial axis {ax} at fixed positions ({starts[k]}:{ends[k]}); "
                "cannot generalize", node_label(node))
    if len(keep) == len(axes):
        return
    # A full extent at the reference size is the full extent at any size: leave the axis out of
    # the Slice (not "to INT_MAX", which tract cannot apply to a symbolic dim before opset 10).
    if not keep:
        new = helper.make_node("Identity", [node.input[0]], list(node.output), name=node.name)
    elif index.opset >= 10:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[1:]
        new.input.extend([_const(index, plan, [starts[k] for k in keep]), _const(index, plan, [ends[k] for k in keep]),
                          _const(index, plan, [axes[k] for k in keep]), _const(index, plan, [steps[k] for k in keep])])
    else:
        new = helper.make_node("Slice", [node.input[0]], list(node.output), name=node.name,
                               starts=[starts[k] for k in keep], ends=[ends[k] for k in keep],
                               axes=[axes[k] for k in keep])
    plan.replacements[position] = [new]
    plan.changes.append(Change(node_label(node), f"Slice(ends {list(ends)})",
                               "the batch/H/W axes left out of the Slice (it kept their whole reference extent)"
                               if keep else "Identity (the Slice kept the whole reference extent)"))


def _refuse_baked(analysis: Analysis, node: onnx.NodeProto) -> None:
    """Ops whose constant shape (or sizes) holds the reference H or W at a spatial position."""
    index = analysis.index
    out = analysis.info.get(node.output[0])
    if out is None or out.state is not TensorState.SPATIAL or out.layout is None:
        return
    shape = index.static_shape(node.output[0])
    if shape is None:
        return
    if node.op_type in ("Resize", "Upsample"):
        return  # the geometry takes constant scales and refuses constant sizes (opspec.resize_factors)
    operand = node.input[1] if node.op_type in ("Expand", "Tile") else node.input[0]
    if not index.is_const(operand):
        return
    values = index.int_list(operand) or []
    hw = (shape[out.layout[2]], shape[out.layout[3]])
    if node.op_type == "Tile":
        baked = len(values) == len(shape) and (values[out.layout[2]] != 1 or values[out.layout[3]] != 1)
    else:
        baked = len(values) == len(shape) and (values[out.layout[2]], values[out.layout[3]]) == hw and hw != (1, 1)
    if baked:
        raise UnsupportedModelError(
            f"{node.op_type} has the reference size {hw[0]}x{hw[1]} baked into a constant; cannot generalize",
            node_label(node))


def _refuse_spatial_constant(analysis: Analysis, node: onnx.NodeProto) -> None:
    """A constant operand as large as the reference map (a positional bias, an expanded bias)
    broadcast against the trunk cannot follow another input size."""
    out = analysis.info.get(node.output[0]) if node.output else None
    if out is None or out.state is not TensorState.SPATIAL or out.layout is None:
        return
    index = analysis.index
    shape = index.static_shape(node.output[0])
    if shape is None:
        return
    for i in node.input[:2] if node.op_type not in ("Conv", "BatchNormalization", "PRelu") else ():
        info = analysis.info.get(i)
        if not i or info is None or info.state is not TensorState.CONST:
            continue
        cs = index.static_shape(i)
        if cs is None or len(cs) != len(shape):
            continue
        h, w = out.layout[2], out.layout[3]
        if (cs[h], cs[w]) == (shape[h], shape[w]) and (cs[h], cs[w]) != (1, 1):
            raise UnsupportedModelError(
                f"constant operand '{i}' of shape {list(cs)} holds the reference size {cs[h]}x{cs[w]}; "
                "cannot generalize", node_label(node))
