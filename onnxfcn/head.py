"""Head matching: find the image input, the trunk's feature maps and the dense head after them.

Every tensor gets a *state* by forward propagation from the image input:

- ``CONST``: depends on no graph input (weights, shape constants);
- ``SHAPE``: computed from tensor shapes only (the ``x.view(x.size(0), -1)`` subgraph);
- ``SPATIAL``: an image-like map whose height and width follow the input size;
- ``POOLED``: a map pooled to 1x1 over the whole feature map (global pooling);
- ``FLAT``: a per-sample vector, N x D (after Flatten, Reshape or a keepdims=0 reduction).

The head is every node whose output is POOLED or FLAT and reaches a graph output through
POOLED/FLAT tensors only. POOLED tensors that flow back into the trunk (squeeze-excitation
blocks) are not head: they are global-context ops inside the trunk, recorded for geometry.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import onnx

from .errors import AlreadyConvolutionalError, UnsupportedModelError
from .graph import GraphIndex, ShapeProbe, attr, constant_tensors, node_label, walk_back


class State(enum.Enum):
    CONST = "const"
    SHAPE = "shape"
    SPATIAL = "spatial"
    POOLED = "pooled"
    FLAT = "flat"


@dataclass(frozen=True)
class ImageInput:
    """The image input: its name, layout and reference (export-time) size."""

    name: str
    layout: str  # "NCHW" or "NHWC"
    batch: int | str | None
    channels: int
    height: int
    width: int

    def shape_at(self, batch: int, height: int, width: int) -> list[int]:
        if self.layout == "NCHW":
            return [batch, self.channels, height, width]
        return [batch, height, width, self.channels]


# Layout of a spatial tensor: the axis positions of (N, C, H, W) in the actual tensor.
Layout = tuple[int, int, int, int]
NCHW: Layout = (0, 1, 2, 3)
NHWC: Layout = (0, 3, 1, 2)


def perm_to(layout: Layout, target: Layout) -> list[int]:
    """Transpose perm taking a tensor in ``layout`` to ``target`` (both as N,C,H,W positions)."""
    perm = [0, 0, 0, 0]
    for canon in range(4):
        perm[target[canon]] = layout[canon]
    return perm


@dataclass
class TensorInfo:
    state: State
    layout: Layout | None = None  # SPATIAL and POOLED


@dataclass
class Head:
    """One dense head: the nodes after a feature map, up to one or more graph outputs."""

    nodes: list[onnx.NodeProto]
    features: list[str]  # SPATIAL tensors the head reads (usually one)
    outputs: list[str]


@dataclass
class Analysis:
    index: GraphIndex
    image: ImageInput
    info: dict[str, TensorInfo]
    heads: list[Head]

    def layout(self, name: str) -> Layout:
        lay = self.info[name].layout
        assert lay is not None, name
        return lay


_GLOBAL_POOLS = {"GlobalAveragePool": "AveragePool", "GlobalMaxPool": "MaxPool",
                 "QLinearGlobalAveragePool": "QLinearAveragePool"}  # the last: com.microsoft, quantized
_REDUCE_POOLS = {"ReduceMean": "AveragePool", "ReduceMax": "MaxPool"}
_WINDOW_POOLS = ("AveragePool", "MaxPool")


def find_image_input(model: onnx.ModelProto, name: str | None = None,
                     size: tuple[int, int] | None = None) -> ImageInput:
    """The rank-4 float graph input, with its layout and reference size."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    candidates = []
    for vi in g.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        if name is not None and vi.name != name:
            continue
        if tt.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16):
            continue
        if len(tt.shape.dim) != 4:
            continue
        candidates.append(vi)
    if name is not None and not candidates:
        raise UnsupportedModelError(f"input '{name}' is not a rank-4 float graph input")
    if not candidates:
        raise UnsupportedModelError("no image input: the model has no rank-4 float input (N,C,H,W or N,H,W,C)")
    if len(candidates) > 1:
        names = ", ".join(v.name for v in candidates)
        raise UnsupportedModelError(f"several image-like inputs ({names}); choose one with --input")
    vi = candidates[0]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]
    frontier = _layout_frontier(g, vi.name, inits)
    nhwc = bool(frontier) and all(
        n.op_type == "Transpose" and list(attr(n, "perm", [])) == [0, 3, 1, 2] for n in frontier
    )
    layout = "NHWC" if nhwc else "NCHW"
    c = dims[3] if nhwc else dims[1]
    hw = (dims[1], dims[2]) if nhwc else (dims[2], dims[3])
    if size is not None:
        fixed = tuple(d for d in hw if isinstance(d, int) and d > 0)
        if len(fixed) == 2 and fixed != tuple(size):
            raise UnsupportedModelError(
                f"input '{vi.name}' is fixed at {fixed[0]}x{fixed[1]}; --size {size[0]}x{size[1]} is for inputs "
                "whose height and width are dynamic")
        hw = size
    if not all(isinstance(d, int) and d > 0 for d in hw):
        raise UnsupportedModelError(
            f"input '{vi.name}' has no fixed height and width ({hw[0]}x{hw[1]}); give the reference size with --size HxW"
        )
    if not isinstance(c, int) or c <= 0:
        raise UnsupportedModelError(f"input '{vi.name}' has no fixed channel count")
    return ImageInput(vi.name, layout, dims[0], c, int(hw[0]), int(hw[1]))  # type: ignore[arg-type]


# Ops that keep every axis where it is; the image passes through them before the first op that
# reads a layout (Keras's Rescaling and Normalization layers export as Mul, Add, Sub, Div).
_ELEMENTWISE = {"Mul", "Add", "Sub", "Div", "Cast", "Clip", "Relu", "Identity", "Neg", "Abs", "Sqrt", "Pow",
                "Max", "Min", "Sigmoid", "Tanh", "Floor", "Ceil", "Round", "CastLike"}


def _layout_frontier(g: onnx.GraphProto, name: str, inits: set[str]) -> list[onnx.NodeProto]:
    """The first nodes that read the image with a layout in mind: its consumers, looking through
    elementwise preprocessing whose other operands are constants (not through anything that mixes
    the image with another input)."""
    consts = constant_tensors(g, inits)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    frontier: list[onnx.NodeProto] = []
    todo, seen = [name], {name}
    while todo:
        t = todo.pop()
        for n in consumers.get(t, []):
            passes = (n.op_type in _ELEMENTWISE and len(n.output) == 1
                      and all(not i or i == t or i in consts for i in n.input))
            if not passes:
                frontier.append(n)
            elif n.output[0] not in seen:
                seen.add(n.output[0])
                todo.append(n.output[0])
    return frontier


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


def _reduce_axes(index: GraphIndex, node: onnx.NodeProto, rank: int) -> list[int] | None:
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = index.int_list(node.input[1])
        if axes is None:
            return None
    if axes is None:
        return list(range(rank))  # reduce over everything
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


def collapse_kind(a: Analysis, node: onnx.NodeProto) -> str | None:
    """How a node on a SPATIAL tensor removes the spatial axes: 'pool', 'pool+flatten', 'flatten'."""
    return _collapse_kind(a.index, node, a.info[node.input[0]])


def _collapse_kind(index: GraphIndex, node: onnx.NodeProto, src: TensorInfo) -> str | None:
    op = node.op_type
    lay = src.layout or NCHW
    if src.state not in (State.SPATIAL, State.POOLED):
        return None
    if src.state is State.SPATIAL and op in _GLOBAL_POOLS:
        return "pool"
    if src.state is State.SPATIAL and op in _REDUCE_POOLS:
        rank = index.rank(node.input[0]) or 4
        axes = _reduce_axes(index, node, rank)
        if axes is None or sorted(axes) != sorted((lay[2], lay[3])):
            return None
        return "pool" if attr(node, "keepdims", 1) else "pool+flatten"
    if src.state is State.SPATIAL and op in _WINDOW_POOLS and _covers_whole_map(index, node, lay):
        return "pool"
    if op in ("Flatten", "Reshape", "Squeeze"):
        out = index.shape(node.output[0])
        if out is not None and len(out) == 2:
            return "flatten"
    return None


def analyze(model: onnx.ModelProto, image: ImageInput, probe: ShapeProbe | None = None) -> Analysis:
    """Propagate tensor states, then collect the head nodes behind each dense output. ``probe``
    reads the shapes ONNX inference leaves open (``runtime.probe_shapes``)."""
    index = GraphIndex(model, {image.name: image.shape_at(1 if not isinstance(image.batch, int) else image.batch,
                                                         image.height, image.width)}, probe)
    info: dict[str, TensorInfo] = {image.name: TensorInfo(State.SPATIAL, NCHW if image.layout == "NCHW" else NHWC)}
    for name in index.initializers:
        info[name] = TensorInfo(State.CONST)
    for vi in model.graph.input:
        info.setdefault(vi.name, TensorInfo(State.CONST))  # other inputs: treated as given values

    for node in model.graph.node:
        ins = [info.get(i, TensorInfo(State.CONST)) for i in node.input if i]
        states = {t.state for t in ins}
        spatial = [t for t in ins if t.state is State.SPATIAL]
        out: TensorInfo
        if node.op_type == "Shape" and states & {State.SPATIAL, State.POOLED, State.FLAT}:
            out = TensorInfo(State.SHAPE)
        elif states <= {State.CONST}:
            out = TensorInfo(State.CONST)
        elif states <= {State.CONST, State.SHAPE}:
            out = TensorInfo(State.SHAPE)
        else:
            first = info.get(node.input[0], TensorInfo(State.CONST)) if node.input else TensorInfo(State.CONST)
            kind = _collapse_kind(index, node, first)
            if kind == "pool":
                out = TensorInfo(State.POOLED, first.layout)
            elif kind in ("pool+flatten", "flatten"):
                out = TensorInfo(State.FLAT)
            elif spatial:
                lay = spatial[0].layout or NCHW
                if node.op_type == "Transpose" and first.state is State.SPATIAL:
                    perm = list(attr(node, "perm", []))
                    if perm:
                        lay = _transpose_layout(lay, perm, node)
                elif node.op_type == "Reshape" and first.state is State.SPATIAL:
                    lay = _reshape_layout(index, node, lay)
                out = TensorInfo(State.SPATIAL, lay)
            elif State.FLAT in states:
                out = TensorInfo(State.FLAT)
            else:
                pooled = [t for t in ins if t.state is State.POOLED]
                lay = pooled[0].layout or NCHW
                if node.op_type == "Transpose" and first.state is State.POOLED:
                    perm = list(attr(node, "perm", []))
                    if len(perm) == 4:
                        lay = _transpose_layout(lay, perm, node)
                out = TensorInfo(State.POOLED, lay)
        for o in node.output:
            if o:
                info[o] = out

    # Heads: walk back from each dense output through POOLED/FLAT tensors.
    head_nodes: dict[int, onnx.NodeProto] = {}
    order = {id(n): k for k, n in enumerate(model.graph.node)}
    groups: list[tuple[set[int], set[str], set[str]]] = []
    for out_name in index.graph_outputs:
        st = info.get(out_name)
        if st is None or st.state not in (State.POOLED, State.FLAT):
            continue
        reached = walk_back([out_name], index.producer,
                            follow=lambda t: t in info and info[t].state in (State.POOLED, State.FLAT))
        found = [index.producer[t] for t in reached if t in index.producer]
        nodes = {id(n) for n in found}
        head_nodes.update((id(n), n) for n in found)
        feats = {i for n in found for i in n.input if i in info and info[i].state is State.SPATIAL}
        # Heads sharing nodes (fan-out from one flatten) are merged into one.
        merged = False
        for g in groups:
            if g[0] & nodes:
                g[0].update(nodes)
                g[1].update(feats)
                g[2].add(out_name)
                merged = True
                break
        if not merged:
            groups.append((nodes, feats, {out_name}))
    heads = [
        Head(sorted((head_nodes[i] for i in ns), key=lambda n: order[id(n)]), sorted(fs), sorted(os_))
        for ns, fs, os_ in groups
    ]
    a = Analysis(index, image, info, heads)
    if not heads:
        outs = ", ".join(f"{o} ({info[o].state.value if o in info else '?'})" for o in index.graph_outputs)
        if all(info.get(o, TensorInfo(State.CONST)).state is State.SPATIAL for o in index.graph_outputs):
            _refuse_lost_map(model, index, info)
            raise AlreadyConvolutionalError(
                f"already fully convolutional: no dense head or global pool before the outputs ({outs})"
            )
        raise UnsupportedModelError(f"no convertible head: no output is computed from pooled or flattened features ({outs})")
    return a


def _declared_rank(model: onnx.ModelProto, name: str) -> int | None:
    for vi in model.graph.output:
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def _refuse_lost_map(model: onnx.ModelProto, index: GraphIndex, info: dict[str, TensorInfo]) -> None:
    """'Already fully convolutional' only when every output is a 4-D map. An output of another
    rank (N x K scores, say) went through a node whose effect on the map the tool cannot follow
    (a custom or quantized op with no shape inference): refuse it, naming that node."""
    flat = [o for o in index.graph_outputs
            if (index.rank(o) if index.rank(o) is not None else _declared_rank(model, o)) not in (None, 4)]
    if not flat:
        return
    needed = index.ancestors(flat)
    for node in model.graph.node:
        if not any(o in needed for o in node.output):
            continue
        if not any(info.get(i) is not None and info[i].state is State.SPATIAL for i in node.input if i):
            continue
        out = node.output[0] if node.output else ""
        if index.rank(out) is None or index.rank(out) != index.rank(node.input[0]):
            domain = f" ({node.domain})" if node.domain else ""
            raise UnsupportedModelError(
                f"{node.op_type}{domain}: op not supported: the tool cannot follow what it does to the feature map "
                f"(output '{flat[0]}' is not a 4-D map, so the model is not fully convolutional)", node_label(node))
    raise UnsupportedModelError(f"output '{flat[0]}' is not a 4-D map, and no node that collapses the feature map "
                                "was recognized")


def flatten_order(a: Analysis, feature: str) -> tuple[str, tuple[int, int, int]]:
    """Order in which a Flatten of ``feature`` lays out (C, H, W), and their sizes at reference."""
    lay = a.layout(feature)
    shape = a.index.static_shape(feature)
    if shape is None:
        raise UnsupportedModelError("feature map has no static shape at the reference size", feature)
    c, h, w = shape[lay[1]], shape[lay[2]], shape[lay[3]]
    order = "".join("CHW"[[lay[1], lay[2], lay[3]].index(p)] for p in (1, 2, 3))
    return order, (int(c), int(h), int(w))
