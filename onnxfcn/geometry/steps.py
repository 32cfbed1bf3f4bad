"""One step per kind of trunk node: what it does to a map's per-axis geometry.

Each step takes the walk (``walk.Walk``), the node, and the geometry of the node's output as
its first input left it (``MapGeo``, already merged with the node's other inputs), and changes
that in place, recording output-stride edits and reasons for inexactness on the way. ``STEPS``
maps op types to steps; an op found there applies when its first input is a map. To teach the
geometry a new op: write its step here and add it to ``STEPS``.

Per axis (``AxisGeo``): ``jump`` is the distance in input pixels between neighbouring cells,
``start`` where cell 0's receptive field begins, ``rf`` its extent, ``size`` the map's size as a
function of the input's, ``dense`` the new cells per original cell under an output stride.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import onnx

from ..errors import UnsupportedModelError
from ..graph import attr, node_label, softmax_axes
from ..head import TensorState
from ..opspec import kernel_axis, map_hw, pad_spec, resize_factors, shape_sources
from ..stride import KERNEL_OPS, Edit, ceil_end_pad, kernel_edit, new_stride, scaled_pads
from .grid import WHOLE_IMAGE
from .lattice import SizeFn, agreeing, divisible
from .state import AxisGeo, MapGeo, Walk

Step = Callable[[Walk, onnx.NodeProto, MapGeo], None]
_SCALE_OPS = {"ConvTranspose", "DepthToSpace", "MaxUnpool"}
_UNMODELLED_KERNELS = {"DeformConv", "Col2Im", "Im2Col"}


def _kernel_size_fn(prev: SizeFn, ke: int, s: int, pb: int, pe: int, ceil: bool, auto: str) -> SizeFn:
    if auto.startswith("SAME"):
        return lambda n: math.ceil(prev(n) / s)
    if ceil:
        return lambda n: -((-(prev(n) + pb + pe - ke)) // s) + 1
    return lambda n: (prev(n) + pb + pe - ke) // s + 1


def kernel(walk: Walk, node: onnx.NodeProto, out: MapGeo) -> None:
    """Convolutions and pools: the field grows by the kernel, the padding moves its start, the
    stride multiplies the jump; under an output stride the kernel is re-strided and dilated."""
    analysis = walk.analysis
    lay = analysis.layout(node.input[0])
    shape = analysis.index.static_shape(node.input[0])
    factor, strides, pads, edited = [1, 1], [1, 1], [0, 0, 0, 0], False
    for ax, axis in ((0, out.h), (1, out.w)):
        ref_in = int(shape[lay[2 + ax]]) if shape else 0
        k = kernel_axis(node, analysis, ax, ref_in)
        ke, s, pb, pe, auto = k.extent, k.stride, k.pad_begin, k.pad_end, k.auto_pad
        if pb or pe:
            out.reasons.append(f"zero padding at {node_label(node)} ({node.op_type} pads {pb},{pe})")
        elif k.ceil_mode and ref_in and (ref_in - ke) % s:
            out.reasons.append(f"ceil_mode window past the edge at {node_label(node)}")
        s_new = s if walk.target is None else new_stride(node, axis.jump, axis.dense, s, walk.target[ax])
        if k.ceil_mode and s_new != s and ref_in:
            pe = ceil_end_pad(node, ref_in, ke, s, pb, pe)
        dil = axis.dense
        if dil > 1 or s_new != s:
            # Dilate by the density gained before this layer; SAME padding becomes the explicit
            # pads it has at the reference size, scaled alike.
            edited = True
            factor[ax] = dil if ke > 1 else 1
            ke, pb, pe, auto = (ke - 1) * dil + 1, pb * dil, pe * dil, "NOTSET"
        strides[ax], pads[ax], pads[ax + 2] = s_new, pb, pe
        axis.rf += (ke - 1) * axis.jump
        axis.start -= pb * axis.jump
        axis.jump *= s_new
        axis.dense = dil * s // s_new
        axis.size = _kernel_size_fn(axis.size, ke, s_new, pb, pe, k.ceil_mode, auto)
    if edited:
        assert walk.target is not None
        walk.edits[node.output[0]] = kernel_edit(analysis, node, walk.target, factor, strides, pads)


def _scaled_size_fn(prev: SizeFn, factor: int) -> SizeFn:
    return lambda n: prev(n) * factor


def resize(walk: Walk, node: onnx.NodeProto, out: MapGeo) -> None:
    """Upsampling by a constant whole scale: the jump divides by it, the field grows by the cells
    the interpolation reads."""
    factors, interp = resize_factors(walk.analysis, node)
    if factors is None:
        raise UnsupportedModelError(f"{node.op_type} changes the spatial scale and {interp}; sliding-window "
                                    "geometry is undefined", node_label(node))
    if walk.target is not None:
        raise UnsupportedModelError("output stride: an upsampling trunk is not supported", node_label(node))
    computed = len(node.input) > 3 and bool(node.input[3])
    for ax, axis in ((0, out.h), (1, out.w)):
        f = factors[ax]
        if computed:
            _to_other_map(walk, node, ax, axis, f)
        if axis.jump % f:
            raise UnsupportedModelError(f"{node.op_type} upsamples a stride-{axis.jump} map by {f}: its cells "
                                        "would fall between input pixels", node_label(node))
        new_jump = axis.jump // f
        # Output cell k reads input cell floor(k / f) (nearest, asymmetric, floor), a cell
        # within one of k / f (other nearest modes), or two neighbours within [k/f - 2,
        # k/f + 1] (linear): the field spans those cells' fields.
        before, after = {"nearest_floor": ((f - 1) * new_jump, 0), "nearest": (axis.jump, axis.jump),
                         "linear": (2 * axis.jump, axis.jump)}[interp]
        axis.start -= before
        axis.rf += before + after
        axis.jump = new_jump
        axis.size = _scaled_size_fn(axis.size, f)
    if interp == "linear":
        out.reasons.append(f"linear Resize at {node_label(node)} clamps at the map's edge")


def _blocks_size_fn(prev: SizeFn, b: int) -> SizeFn:
    return lambda n: prev(n) // b


def space_to_depth(walk: Walk, node: onnx.NodeProto, out: MapGeo) -> None:
    """Blocks of b x b cells into channels: a b x b kernel of stride b without padding; the map
    must divide into blocks, which narrows the sizes the model runs at."""
    b = int(attr(node, "blocksize", 1))
    if b < 1:
        raise UnsupportedModelError(f"SpaceToDepth with blocksize {b}", node_label(node))
    if walk.target is not None and b > 1:
        raise UnsupportedModelError("output stride: a space-to-depth in the trunk cannot be re-strided",
                                    node_label(node))
    for ax, axis in ((0, out.h), (1, out.w)):
        period = math.lcm(walk.coarse[ax], axis.jump) * b
        if not walk.narrow(ax, divisible(axis.size, b, period, walk.ref[ax])):
            raise UnsupportedModelError(f"SpaceToDepth of a map of {axis.size(walk.ref[ax])} cells into blocks of {b}",
                                        node_label(node))
        axis.rf += (b - 1) * axis.jump
        axis.jump *= b
        axis.size = _blocks_size_fn(axis.size, b)


def _statistic_axes(walk: Walk, node: onnx.NodeProto, rank: int) -> list[int]:
    """The axes a normalization or softmax of the map computes its statistic over."""
    op, opset = node.op_type, walk.analysis.index.opset
    if op in ("InstanceNormalization", "GroupNormalization"):
        return list(range(2, rank))
    if op == "MeanVarianceNormalization":
        return [a % rank for a in attr(node, "axes", [0, 2, 3])]
    if op == "LpNormalization":
        return [attr(node, "axis", -1) % rank]
    if op == "LayerNormalization":
        return list(range(attr(node, "axis", -1) % rank, rank))
    if op == "CumSum":
        axis = walk.analysis.index.int_list(node.input[1]) if len(node.input) > 1 else None
        return list(range(rank)) if not axis else [axis[0] % rank]  # computed axis: any
    return softmax_axes(node, rank, opset)  # Softmax, LogSoftmax, Hardmax


def statistics(walk: Walk, node: onnx.NodeProto, out: MapGeo) -> None:
    """A normalization or softmax over the map's positions (InstanceNorm, GroupNorm, a softmax
    along H or W, a running sum): every cell depends on the whole map, as a global pool's
    squeeze-excitation makes it; over other axes only (the channels), the geometry passes through."""
    lay = walk.analysis.layout(node.input[0])
    rank = walk.analysis.index.rank(node.input[0]) or 4
    if not set(_statistic_axes(walk, node, rank)) & {lay[2], lay[3]}:
        return
    if walk.target is not None:
        raise UnsupportedModelError(f"output stride: {node.op_type} over the map's positions would cover the denser "
                                    "map's extra cells too", node_label(node))
    out.reasons.append(f"statistics over the map's positions ({node_label(node)}) {WHOLE_IMAGE}")


def positional(walk: Walk, node: onnx.NodeProto, out: MapGeo) -> None:
    """Ops that read or write the map at positions fixed in the graph (Trilu's triangle, a scatter's
    indices, a grid sample's grid, a Gather along H or W): no sliding geometry; a Gather along the
    channels passes through."""
    if node.op_type in ("Gather", "GatherElements"):
        lay = walk.analysis.layout(node.input[0])
        rank = walk.analysis.index.rank(node.input[0]) or 4
        if attr(node, "axis", 0) % rank not in (lay[2], lay[3]):
            return
    raise UnsupportedModelError(f"{node.op_type} reads or writes the map at positions fixed in the graph; "
                                "sliding-window geometry is undefined", node_label(node))


def _to_other_map(walk: Walk, node: onnx.NodeProto, ax: int, axis: AxisGeo, f: int) -> None:
    """A Resize to the size of another map (its sizes computed from that map's Shape): the scale
    is ``f`` only where that map is exactly ``f`` times this one; elsewhere the cells would fall
    between input cells. The sizes the model runs at narrow to those."""
    # the map the sizes follow (the resized map's own Shape gives the batch and channels, as a rule)
    sources = [walk.maps[t] for t in shape_sources(walk.analysis, node.input[3]) if t in walk.maps and t != node.input[0]]
    if not sources:  # GhostNetV2's exports: H and W constant, only N and C from the Shape of the input
        raise UnsupportedModelError(f"{node.op_type} resizes to constant H and W (the reference size's), not by a "
                                    "scale or to another map's size; sliding-window geometry is undefined",
                                    node_label(node))
    if len(sources) > 1:
        raise UnsupportedModelError(f"{node.op_type} resizes to sizes computed from {len(sources)} maps; "
                                    "sliding-window geometry is undefined", node_label(node))
    other = sources[0].h if ax == 0 else sources[0].w
    mine = axis.size
    agree = agreeing(lambda n: f * mine(n), other.size, math.lcm(walk.coarse[ax], axis.jump, other.jump), walk.ref[ax])
    if not walk.narrow(ax, agree):
        raise UnsupportedModelError(f"{node.op_type} resizes to another map's size, not {f} times its input's, at "
                                    "the reference size", node_label(node))


def _padded_size_fn(prev: SizeFn, extra: int) -> SizeFn:
    return lambda n: prev(n) + extra


def _pad_amounts(walk: Walk, node: onnx.NodeProto, out: MapGeo) -> list[tuple[str, AxisGeo, int, int]]:
    """(axis name, axis, pad begin, pad end) for H and W of a Pad node on the trunk."""
    pads, axes = pad_spec(walk.analysis, node)
    n = len(axes)
    by_axis = {a: (int(pads[k]), int(pads[k + n])) for k, a in enumerate(axes)}
    lay = walk.analysis.layout(node.input[0])
    if by_axis.get(lay[0], (0, 0)) != (0, 0):
        raise UnsupportedModelError("Pad on the batch axis", node_label(node))
    found = []
    for name, axis, pos in (("H", out.h, lay[2]), ("W", out.w, lay[3])):
        pb, pe = by_axis.get(pos, (0, 0))
        if pb < 0 or pe < 0:
            raise UnsupportedModelError(f"negative Pad (a crop) on {name} at fixed positions", node_label(node))
        found.append((name, axis, pb, pe))
    return found


def pad(walk: Walk, node: onnx.NodeProto, out: MapGeo) -> None:
    """An explicit Pad (tf2onnx's SAME padding): the map grows, its field's start moves out."""
    pad_mode = attr(node, "mode", "constant")
    for axis_name, axis, pb, pe in _pad_amounts(walk, node, out):
        if pb or pe:
            out.reasons.append(f"zero padding at {node_label(node)} (Pad {pad_mode} {pb},{pe} on {axis_name})")
        pb, pe = pb * axis.dense, pe * axis.dense
        axis.start -= pb * axis.jump
        axis.size = _padded_size_fn(axis.size, pb + pe)
    if (out.h.dense, out.w.dense) != (1, 1):
        if pad_mode != "constant":
            raise UnsupportedModelError(f"output stride: a {pad_mode} Pad mirrors or repeats neighbouring "
                                        "cells, which a dilated map does not have", node_label(node))
        walk.edits[node.output[0]] = Edit("Pad", (out.h.dense, out.w.dense),
                                          values=scaled_pads(walk.analysis, node, out.h.dense, out.w.dense))


def pointwise(walk: Walk, node: onnx.NodeProto, out: MapGeo) -> None:
    """Elementwise ops, activations, normalizations, channel ops: the geometry passes through."""


def unknown_kernel(walk: Walk, node: onnx.NodeProto, out: MapGeo) -> None:
    """A spatial kernel the size model does not know: treating it as pointwise would miss its
    padding and its receptive field."""
    raise UnsupportedModelError(f"{node.op_type} has a spatial kernel that the geometry does not model",
                                node_label(node))


def moves_axes(walk: Walk, node: onnx.NodeProto, out: MapGeo) -> None:
    """A node that changes the map's size or moves its axes (a Reshape to tokens, say)."""
    raise UnsupportedModelError(
        f"{node.op_type} changes or moves the spatial axes {map_hw(walk.analysis, node.input[0])} -> "
        f"{map_hw(walk.analysis, node.output[0])}; sliding-window geometry is undefined", node_label(node))


def changes_scale(walk: Walk, node: onnx.NodeProto, out: MapGeo) -> None:
    raise UnsupportedModelError(f"{node.op_type} changes the spatial scale; sliding-window geometry is undefined",
                                node_label(node))


STEPS: dict[str, Step] = {
    **{op: kernel for op in KERNEL_OPS},
    "Resize": resize, "Upsample": resize,
    "Pad": pad,
    "SpaceToDepth": space_to_depth,
    **{op: statistics for op in ("InstanceNormalization", "GroupNormalization", "MeanVarianceNormalization",
                                 "LpNormalization", "LayerNormalization", "Softmax", "LogSoftmax", "Hardmax",
                                 "CumSum")},
    **{op: positional for op in ("Trilu", "ScatterND", "ScatterElements", "Scatter", "GridSample", "ReverseSequence",
                                 "DFT", "STFT", "Compress", "Gather", "GatherElements", "GatherND")},
}


def _keeps_spatial_size(walk: Walk, node: onnx.NodeProto) -> bool:
    """A non-kernel trunk op must leave H and W where the layout says, at the same size."""
    analysis = walk.analysis
    src = next((i for i in node.input if analysis.state(i) is TensorState.SPATIAL), None)
    if src is None:
        return True
    a, b = map_hw(analysis, src), map_hw(analysis, node.output[0])
    return a is None or b is None or a == b


def step_for(walk: Walk, node: onnx.NodeProto) -> Step:
    """The step that applies to ``node``: its op's, where its first input is a map; else one of
    the refusals, or ``pointwise``."""
    analysis = walk.analysis
    if node.op_type in STEPS and analysis.state(node.input[0]) is TensorState.SPATIAL:
        return STEPS[node.op_type]
    if (attr(node, "kernel_shape") is not None or node.op_type in _UNMODELLED_KERNELS) and \
            any(analysis.state(i) is TensorState.SPATIAL for i in node.input):
        return unknown_kernel
    if not _keeps_spatial_size(walk, node):
        return moves_axes
    if node.op_type in _SCALE_OPS:
        return changes_scale
    return pointwise
