"""State propagation: every tensor's state (and a map's layout), forward from the image input.

A node's output is CONST or SHAPE when its inputs are; POOLED or FLAT where it collapses the
spatial axes (a global pool, a reduction over H and W, a pool covering the map, a flatten to
N x D); SPATIAL while it keeps a map (with the layout a Transpose or a channel-shuffle Reshape
gives it); TOKENS where a Reshape lays a map's positions on one axis (``tokens.py``); and it
stays FLAT or POOLED after that.
"""

from __future__ import annotations

import onnx

from ..errors import UnsupportedModelError
from ..graph import GraphIndex, attr, node_label
from .tokens import to_tokens, token_state
from .types import NCHW_AXES, NHWC_AXES, ImageInput, Layout, TensorInfo, TensorState

_GLOBAL_POOLS = {"GlobalAveragePool": "AveragePool", "GlobalMaxPool": "MaxPool",
                 "QLinearGlobalAveragePool": "QLinearAveragePool"}  # the last: com.microsoft, quantized
_REDUCE_POOLS = {"ReduceMean": "AveragePool", "ReduceMax": "MaxPool", "ReduceSum": "SumPool"}  # jax2onnx: a mean is a sum
# other reductions over H and W: global statistics inside the trunk (ConvNeXt-V2's response
# normalization takes the L2 norm of each channel over the map); the head takes only the pools above
_OTHER_REDUCTIONS = {"ReduceL2", "ReduceL1", "ReduceMin", "ReduceSumSquare", "ReduceLogSumExp", "ReduceProd"}
_WINDOW_POOLS = ("AveragePool", "MaxPool")
_CONST = TensorInfo(TensorState.CONST)
_RANK_OPS = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
             "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin", "Squeeze", "Unsqueeze"}


def propagate(model: onnx.ModelProto, index: GraphIndex, image: ImageInput) -> dict[str, TensorInfo]:
    """Each tensor's state, in one pass over the (topologically ordered) nodes."""
    info: dict[str, TensorInfo] = {
        image.name: TensorInfo(TensorState.SPATIAL, NCHW_AXES if image.layout == "NCHW" else NHWC_AXES)}
    for name in index.initializers:
        info[name] = TensorInfo(TensorState.CONST)
    for vi in model.graph.input:
        info.setdefault(vi.name, TensorInfo(TensorState.CONST))  # other inputs: treated as given values
    for node in model.graph.node:
        out = node_state(index, info, node)
        for o in node.output:
            if o:
                info[o] = out
    return info


def node_state(index: GraphIndex, info: dict[str, TensorInfo], node: onnx.NodeProto) -> TensorInfo:
    """The state of ``node``'s outputs, from its inputs'."""
    ins = [info.get(i, _CONST) for i in node.input if i]
    states = {t.state for t in ins}
    if node.op_type == "Shape" and states & {TensorState.SPATIAL, TensorState.POOLED, TensorState.FLAT,
                                             TensorState.TOKENS}:
        return TensorInfo(TensorState.SHAPE)
    if states <= {TensorState.CONST}:
        return TensorInfo(TensorState.CONST)
    if states <= {TensorState.CONST, TensorState.SHAPE}:
        return TensorInfo(TensorState.SHAPE)
    if TensorState.TOKENS in states:
        return token_state(index, info, node)
    first = info.get(node.input[0], _CONST) if node.input else _CONST
    kind = collapse_of(index, node, first)
    if kind == "pool":
        return TensorInfo(TensorState.POOLED, first.layout)
    if kind in ("pool+flatten", "flatten"):
        return TensorInfo(TensorState.FLAT)
    spatial = [t for t in ins if t.state is TensorState.SPATIAL]
    if spatial:
        lay = spatial[0].layout or NCHW_AXES
        if node.op_type == "Transpose" and first.state is TensorState.SPATIAL:
            perm = list(attr(node, "perm", []))
            if perm:
                lay = _transpose_layout(lay, perm, node)
        elif node.op_type == "Reshape" and first.state is TensorState.SPATIAL:
            tokens = to_tokens(index, node, first)
            if tokens is not None:
                return tokens
            lay = _reshape_layout(index, node, lay)
        elif node.op_type in _RANK_OPS and first.state is TensorState.SPATIAL:
            lay = _rank_layout(index, node, lay)
        rank = index.rank(node.output[0]) if node.output else None
        if rank is not None and max(lay) >= rank:
            raise UnsupportedModelError(f"{node.op_type} leaves a map of rank {rank}; the tool cannot follow "
                                        "where its batch and spatial axes went", node_label(node))
        return TensorInfo(TensorState.SPATIAL, lay)
    if TensorState.FLAT in states:
        return TensorInfo(TensorState.FLAT)
    pooled = [t for t in ins if t.state is TensorState.POOLED]
    lay = pooled[0].layout or NCHW_AXES
    if node.op_type == "Transpose" and first.state is TensorState.POOLED:
        perm = list(attr(node, "perm", []))
        if len(perm) == 4:
            lay = _transpose_layout(lay, perm, node)
    return TensorInfo(TensorState.POOLED, lay)


def _transpose_layout(layout: Layout, perm: list[int], node: onnx.NodeProto | None = None) -> Layout:
    if sorted(perm) != list(range(len(perm))) or max(layout) >= len(perm):
        raise UnsupportedModelError(f"Transpose perm {perm} is not a permutation of the tensor's axes",
                                    node_label(node) if node is not None else None)
    return tuple(perm.index(p) for p in layout)  # type: ignore[return-value]


def _reshape_layout(index: GraphIndex, node: onnx.NodeProto, lay: Layout) -> Layout:
    """Layout after a trunk Reshape (channel shuffle): batch stays first, H and W stay last."""
    out = index.rank(node.output[0])
    rank = index.rank(node.input[0])
    if out is None or rank is None or lay[2:] != (rank - 2, rank - 1):
        return lay
    return (0, 1, out - 2, out - 1)


def _rank_layout(index: GraphIndex, node: onnx.NodeProto, lay: Layout) -> Layout:
    """Layout after an op that removes or inserts axes other than the batch, H and W: a reduction
    over channel axes without keepdims (ResNeSt sums its radix splits), Squeeze, Unsqueeze. The
    channel axis is the first that is not the batch, H or W."""
    rank = index.rank(node.input[0])
    out = index.rank(node.output[0])
    if rank is None or out is None or rank == out:
        return lay
    keep = (lay[0], lay[2], lay[3])
    if out < rank:
        removed = _removed_axes(index, node, rank)
        if removed is None or set(removed) & set(keep):
            raise UnsupportedModelError(f"{node.op_type} removes the batch or a spatial axis of the map, or axes "
                                        "the tool cannot tell", node_label(node))
        moved = [a - sum(r < a for r in removed) for a in keep]
    else:
        axes = index.axes(node)
        if axes is None:
            raise UnsupportedModelError("Unsqueeze of the map with axes the tool cannot tell", node_label(node))
        inserted = {a % out for a in axes}
        kept = [a for a in range(out) if a not in inserted]  # input axis k lands at kept[k]
        moved = [kept[a] for a in keep]
    free = [a for a in range(out) if a not in moved]
    if not free:
        raise UnsupportedModelError(f"{node.op_type} leaves the map without a channel axis", node_label(node))
    return (moved[0], free[0], moved[1], moved[2])


def _removed_axes(index: GraphIndex, node: onnx.NodeProto, rank: int) -> list[int] | None:
    """The axes a reduction without keepdims or a Squeeze removes (None: not known)."""
    if node.op_type == "Squeeze":
        axes = index.axes(node)
        if axes is None:  # every axis of size 1 at the reference size
            shape = index.static_shape(node.input[0])
            return None if shape is None else [a for a, d in enumerate(shape) if d == 1]
        return sorted(a % rank for a in axes)
    if node.op_type in ("ArgMax", "ArgMin"):
        return [attr(node, "axis", 0) % rank]
    if attr(node, "keepdims", 1):
        return []
    return _reduce_axes(index, node, rank)


def _reduce_axes(index: GraphIndex, node: onnx.NodeProto, rank: int) -> list[int] | None:
    axes = index.axes(node)
    if axes is None:  # computed axes: not known; none given: reduce over everything
        return None if len(node.input) > 1 and node.input[1] else list(range(rank))
    return sorted(a % rank for a in axes)


def _covers_whole_map(index: GraphIndex, node: onnx.NodeProto, lay: Layout) -> bool:
    """An Average/MaxPool whose single window covers the whole input map."""
    shape = index.static_shape(node.input[0])
    out = index.static_shape(node.output[0])
    if shape is None or out is None:
        return False
    hw = (shape[lay[2]], shape[lay[3]])
    if (out[lay[2]], out[lay[3]]) != (1, 1) or hw == (1, 1):
        return False
    k = list(attr(node, "kernel_shape", []))
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    if node.op_type == "AveragePool" and attr(node, "count_include_pad", 0) and any(pads):
        return False  # divides by the padded window: not a plain mean, the trunk geometry handles it
    if attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return k[0] >= hw[0] and k[1] >= hw[1]
    return all(pads[i] <= 0 and k[i] - pads[i] >= hw[i] for i in range(2))


def collapse_of(index: GraphIndex, node: onnx.NodeProto, src: TensorInfo) -> str | None:
    """How ``node``, reading ``src`` first, removes the spatial axes: 'pool', 'pool+flatten',
    'flatten', or None (it does not)."""
    op = node.op_type
    lay = src.layout or NCHW_AXES
    if src.state not in (TensorState.SPATIAL, TensorState.POOLED):
        return None
    if src.state is TensorState.SPATIAL and op in _GLOBAL_POOLS:
        return "pool"
    if src.state is TensorState.SPATIAL and (op in _REDUCE_POOLS or op in _OTHER_REDUCTIONS):
        rank = index.rank(node.input[0]) or 4
        axes = _reduce_axes(index, node, rank)
        if axes is None or sorted(axes) != sorted((lay[2], lay[3])):
            return None
        return "pool" if attr(node, "keepdims", 1) else "pool+flatten"
    if src.state is TensorState.SPATIAL and op in _WINDOW_POOLS and _covers_whole_map(index, node, lay):
        return "pool"
    if op in ("Flatten", "Reshape", "Squeeze"):
        out = index.shape(node.output[0])
        if out is not None and len(out) == 2:
            return "flatten"
    return None
