"""What a trunk node does to a map, read off its attributes: a kernel's extent, stride and
padding per axis, a Pad's amounts, a Resize's whole-number factors. The geometry (``geometry/``)
and the output-stride edits (``stride.py``) both read nodes through these."""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx

from .errors import UnsupportedModelError
from .graph import attr, node_label, walk_back
from .head import Analysis

WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}  # where a convolution's weight is


@dataclass(frozen=True)
class KernelAxis:
    """A kernel op along one spatial axis, at the reference size."""

    extent: int  # the dilated kernel: dilation * (kernel - 1) + 1
    stride: int
    pad_begin: int
    pad_end: int
    ceil_mode: bool
    auto_pad: str  # NOTSET, VALID, SAME_UPPER or SAME_LOWER


def kernel_axis(node: onnx.NodeProto, analysis: Analysis, ax: int, ref_in: int) -> KernelAxis:
    """A kernel op's geometry along axis ``ax`` (0: H, 1: W) for an input of ``ref_in`` cells
    (SAME padding is resolved at that size)."""
    index = analysis.index
    k_attr = attr(node, "kernel_shape")
    if k_attr is None and node.op_type in WEIGHT_INPUT:
        wshape = index.static_shape(node.input[WEIGHT_INPUT[node.op_type]])
        if wshape is None:
            raise UnsupportedModelError(f"{node.op_type} weight has no static shape", node_label(node))
        k_attr = list(wshape[2:])
    if k_attr is None or len(k_attr) != 2:
        raise UnsupportedModelError(f"{node.op_type} is not 2-D", node_label(node))
    k = int(k_attr[ax])
    s = int((attr(node, "strides") or [1, 1])[ax])
    d = int((attr(node, "dilations") or [1, 1])[ax])
    ke = d * (k - 1) + 1
    auto = attr(node, "auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = max((math.ceil(ref_in / s) - 1) * s + ke - ref_in, 0)
        pb = total // 2 if auto == "SAME_UPPER" else total - total // 2
        return KernelAxis(ke, s, pb, total - pb, False, auto)
    if auto == "VALID":
        return KernelAxis(ke, s, 0, 0, False, auto)
    pads = attr(node, "pads") or [0, 0, 0, 0]
    return KernelAxis(ke, s, int(pads[ax]), int(pads[ax + 2]), bool(attr(node, "ceil_mode", 0)), "NOTSET")


def map_hw(analysis: Analysis, name: str) -> tuple[int, int] | None:
    """A map's height and width at the reference size, where its shape and layout are known."""
    shape = analysis.index.static_shape(name)
    info = analysis.info.get(name)
    if shape is None or info is None or info.layout is None or max(info.layout) >= len(shape):
        return None
    return int(shape[info.layout[2]]), int(shape[info.layout[3]])


def pad_spec(analysis: Analysis, node: onnx.NodeProto) -> tuple[list[int], list[int]]:
    """A Pad node's pads (begins, then ends, as the node lists them) and the axes they are for."""
    index = analysis.index
    rank = index.rank(node.input[0]) or 4
    pads = attr(node, "pads")
    if pads is None:
        pads = index.int_list(node.input[1]) if len(node.input) > 1 and index.is_const(node.input[1]) else None
    if pads is None and len(node.input) > 1:
        pads = reference_pads(analysis, node)  # computed from the input size (SAME): the trunk fixes them
    if pads is None:
        raise UnsupportedModelError("Pad amounts are computed, not constant", node_label(node))
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        given = index.int_list(node.input[3])
        if given is None:
            raise UnsupportedModelError("Pad axes are computed, not constant", node_label(node))
        axes = [a % rank for a in given]
    return [int(p) for p in pads], axes


def reference_pads(analysis: Analysis, node: onnx.NodeProto) -> list[int] | None:
    """The amounts of a Pad that computes them from its input's size (timm's and TensorFlow's
    SAME padding), at the reference size; None where they cannot be evaluated there."""
    value = analysis.index.shape_value(node.input[1])
    if value is None or value.dtype.kind not in "iu" or value.ndim != 1:
        return None
    return [int(v) for v in value]


def computed_size_scales(analysis: Analysis, node: onnx.NodeProto) -> list[float] | None:
    """A Resize to ``sizes`` computed from another map's Shape (``F.interpolate(g, size=x.shape[-2:])``
    exported with dynamic H and W): the scales those sizes make at the reference size; None
    where the sizes are constant (the reference size baked in) or cannot be evaluated. The walk
    keeps the sizes at which the other map is exactly that multiple (``geometry/steps.resize``)."""
    index = analysis.index
    sizes = node.input[3]
    if index.is_const(sizes):
        return None
    value, shape = index.shape_value(sizes), index.static_shape(node.input[0])
    if value is None or shape is None or value.ndim != 1 or len(value) != len(shape) or 0 in shape:
        return None
    return [float(v) / float(d) for v, d in zip(value.tolist(), shape, strict=True)]


def shape_sources(analysis: Analysis, name: str) -> set[str]:
    """The tensors whose Shape a computed shape (``name``) is made from."""
    producer = analysis.index.producer
    reached = walk_back([name], producer, inputs_of=lambda n: () if n.op_type == "Shape" else n.input)
    return {producer[t].input[0] for t in reached if t in producer and producer[t].op_type == "Shape"}


def resize_factors(analysis: Analysis, node: onnx.NodeProto) -> tuple[tuple[int, int] | None, str]:
    """A Resize/Upsample's integer upsampling factors on H and W and its interpolation, or None
    and why not. Only constant scales qualify: ``sizes`` hold the reference size, and a scale that
    is not a whole number puts output cells between input cells, where no sliding geometry exists."""
    index = analysis.index
    lay = analysis.layout(node.input[0])
    if node.op_type == "Upsample" and len(node.input) < 2:
        raw = attr(node, "scales")
        scales = None if raw is None else [float(v) for v in raw]
    else:
        pos = 1 if node.op_type == "Upsample" or index.opset < 11 else 2
        if len(node.input) > 3 and node.input[3]:
            scales = computed_size_scales(analysis, node)
            if scales is None:
                return None, "it resizes to constant sizes (the reference size's), not by a scale"
        else:
            value = index.const_value(node.input[pos]) if len(node.input) > pos and node.input[pos] else None
            scales = None if value is None else [float(v) for v in value.reshape(-1)]
    if not scales or lay is None or len(scales) != 4:
        return None, "its scales are not a constant of one value per axis"
    if scales[lay[0]] != 1 or scales[lay[1]] != 1:
        return None, f"it scales the batch or channel axis ({scales})"
    f = (scales[lay[2]], scales[lay[3]])
    if any(v < 1 or v != int(v) for v in f):
        return None, f"its spatial scales {f[0]:g}x{f[1]:g} are not whole numbers of at least 1"
    mode = str(attr(node, "mode", "nearest"))
    coord = str(attr(node, "coordinate_transformation_mode", "half_pixel" if index.opset >= 11 else "asymmetric"))
    if mode not in ("nearest", "linear"):
        return None, f"its {mode} interpolation is not modelled (nearest and linear are)"
    if coord not in ("asymmetric", "half_pixel", "pytorch_half_pixel"):
        # align_corners maps positions by the input's own size: a window's cells move with the image
        return None, f"its coordinate_transformation_mode {coord} depends on the input size"
    nearest_mode = str(attr(node, "nearest_mode", "round_prefer_floor"))
    if mode == "nearest" and ((coord == "asymmetric" and nearest_mode == "floor") or node.op_type == "Upsample"):
        mode = "nearest_floor"  # output cell k is input cell floor(k / f) exactly
    return (int(f[0]), int(f[1])), mode
