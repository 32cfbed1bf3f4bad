"""The image input: which graph input is the image, its layout and its reference size."""

from __future__ import annotations

import logging

import onnx

from ..errors import UnsupportedModelError
from ..graph import attr, constant_tensors
from .types import ImageInput

log = logging.getLogger(__name__)


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
        c = _channels_from_graph(g, frontier, inits)
        if c is None:
            raise UnsupportedModelError(
                f"input '{vi.name}' has no fixed channel count, and no convolution reading it fixes one")
        log.info("input '%s': channel count %s from the graph (the input's is %s)", vi.name, c,
                 dims[3] if nhwc else dims[1])
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


_CONVS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}  # op -> the weight's input index
_TO_FIRST_CONV = {"Transpose", "Pad", "QuantizeLinear", "DequantizeLinear"}  # leave the channel count as it is
_WEIGHT_PASSTHROUGH = {"DequantizeLinear", "Identity", "Cast", "CastLike"}


def _channels_from_graph(g: onnx.GraphProto, frontier: list[onnx.NodeProto], inits: set[str]) -> int | None:
    """The channel count the first layer that reads the image fixes (optimum exports leave the
    input's symbolic): a convolution's weight has C/group input channels. Looks through the layout
    Transpose, a Pad (EfficientNet's) and QuantizeLinear/DequantizeLinear pairs; None when the first layer is no
    convolution with a constant weight."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    todo, found = list(frontier), set()
    while todo:
        n = todo.pop()
        if n.op_type in _CONVS:
            dims = _weight_dims(g, n.input[_CONVS[n.op_type]], inits)
            if dims is not None and len(dims) == 4:
                found.add(int(dims[1]) * int(attr(n, "group", 1)))
        elif n.op_type in _TO_FIRST_CONV and n.output:
            todo.extend(consumers.get(n.output[0], []))
    return found.pop() if len(found) == 1 else None


def _weight_dims(g: onnx.GraphProto, name: str, inits: set[str]) -> list[int] | None:
    producers = {o: n for n in g.node for o in n.output}
    while name not in inits:
        n = producers.get(name)
        if n is None:
            return None
        if n.op_type == "Constant":
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            return list(value.dims) if value is not None else None
        if n.op_type not in _WEIGHT_PASSTHROUGH:
            return None
        name = n.input[0]
    t = next(t for t in g.initializer if t.name == name)
    return list(t.dims)
