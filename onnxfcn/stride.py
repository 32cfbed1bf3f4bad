"""Output stride: what the a-trous rewrite changes in each node, and changing it.

The geometry walk (``geometry/``) carries the stride arithmetic and asks this module, node by
node, what the target stride makes of a layer (``new_stride``, ``ceil_end_pad``, ``kernel_edit``,
``scaled_pads``). This module also holds the edit itself, plans the head's share (the
feature-window kernels the rules built read a map that is now denser, so they are dilated alike)
and applies edits to nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import UnsupportedModelError
from .graph import attr, node_label, set_attr
from .head import Analysis
from .opspec import pad_spec

KERNEL_OPS = frozenset({"Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool",
                        "QLinearAveragePool"})

# A pool's dilations attribute, from this opset (None: it has none).
_DILATIONS_FROM: dict[str, int | None] = {"MaxPool": 10, "AveragePool": 19, "LpPool": 18, "QLinearAveragePool": None}


@dataclass(frozen=True)
class Edit:
    """How the output-stride rewrite changes one node (keyed by its first output).

    Kernel ops: dilations multiplied by ``factor`` (H, W); ``strides`` and ``pads`` (H begin,
    W begin, H end, W end), where given, replace the node's, and explicit pads replace auto_pad.
    ``pad_with``: the pads move into a Pad node before the pool that fills with this value of
    element type ``pad_dtype`` (onnxruntime refuses a pool whose pads reach its kernel size).
    Pad and Slice: ``values`` are the new pads or ends, all of them.
    ``subsample``: a global pooling inside the trunk (squeeze-excitation) reads every (H, W)-th
    cell of the denser map, the cells the original has; a MaxPool 1x1 with those strides, which
    picks them without arithmetic, goes before it.
    """

    op: str
    factor: tuple[int, int]
    strides: tuple[int, int] | None = None
    pads: tuple[int, int, int, int] | None = None
    values: tuple[int, ...] | None = None
    subsample: tuple[int, int] | None = None
    pad_with: float | None = None
    pad_dtype: int = onnx.TensorProto.FLOAT
    # An AveragePool before opset 19 (no dilations) becomes a depthwise Conv of weights 1/(h*w)
    # over this many channels, of element type ``pad_dtype``.
    as_conv: int | None = None


def dilation_reason(op: str, opset: int) -> str | None:
    """Why ``op`` cannot take a dilation at ``opset``, or None."""
    if op not in _DILATIONS_FROM:
        return None
    since = _DILATIONS_FROM[op]
    if since is None:
        return f"{op} has no dilations attribute: it cannot read a dilated window"
    if opset < since:
        return f"{op} has dilations only from opset {since} (the model is opset {opset}); re-export at opset {since}"
    return None



# ---- what the target stride makes of a trunk layer ----------------------------------------------
def new_stride(node: onnx.NodeProto, jump: int, dense: int, s: int, target: int) -> int:
    """A kernel's stride under output stride ``target``, its input at stride ``jump`` with ``dense``
    new cells per original one: kept while the map stays at or above the target's density,
    removed after, and split where the target falls inside it."""
    if jump * dense * s <= target:
        return s
    if jump >= target:
        return 1
    if target % jump or s % (target // jump):
        raise UnsupportedModelError(f"output stride {target} falls inside this stride-{s} layer (its input is at "
                                    f"stride {jump}); choose a stride the layers' strides multiply to",
                                    node_label(node))
    return target // jump


def ceil_end_pad(node: onnx.NodeProto, ref_in: int, ke: int, s: int, pb: int, pe: int) -> int:
    """A ceil_mode pool loses its last, partial window when its stride is removed: end padding
    that keeps it (at the reference size; a max ignores padding as it ignores the cells past
    the edge)."""
    n_out = -((-(ref_in + pb + pe - ke)) // s) + 1
    need = (n_out - 1) * s + ke - ref_in - pb
    if need <= pe:
        return pe
    if node.op_type != "MaxPool":
        raise UnsupportedModelError(f"output stride: the {node.op_type}'s ceil_mode window past the edge has no "
                                    "stride-1 equivalent", node_label(node))
    return need


def kernel_edit(analysis: Analysis, node: onnx.NodeProto, target: tuple[int, int], factor: list[int],
                strides: list[int], pads: list[int]) -> Edit:
    """The edit of a kernel op under an output stride, or why it cannot be made."""
    index = analysis.index
    where = f"output stride {target[0]}x{target[1]}"
    edit = Edit(node.op_type, (factor[0], factor[1]), (strides[0], strides[1]), (pads[0], pads[1], pads[2], pads[3]))
    if max(factor) > 1 and (why := dilation_reason(node.op_type, index.opset)) is not None:
        if node.op_type != "AveragePool":
            raise UnsupportedModelError(f"{where}: {why}", node_label(node))
        return _average_as_conv(analysis, node, edit, where, why)
    kernel = attr(node, "kernel_shape")
    asymmetric = node.op_type == "MaxPool" and (pads[0], pads[1]) != (pads[2], pads[3])
    if node.op_type in ("MaxPool", "AveragePool") and kernel and (asymmetric or any(
            p >= kernel[k % 2] for k, p in enumerate(pads))):
        # onnxruntime refuses a pool whose pads reach its kernel_shape (dilation aside), and
        # onnx.reference (1.23) misreads a stride-1 MaxPool's asymmetric pads (a ceil_mode pool's
        # end padding): the pads go into a Pad node, the same where its value is one the pool ignores.
        dtype = index.dtypes.get(node.input[0]) or onnx.TensorProto.FLOAT
        if node.op_type == "AveragePool" and not attr(node, "count_include_pad", 0):
            raise UnsupportedModelError(f"{where}: the AveragePool's pads {pads} reach its kernel {list(kernel)} once "
                                        "dilated, and excluding them from the mean has no Pad equivalent",
                                        node_label(node))
        low = 0.0 if node.op_type == "AveragePool" else lowest(dtype)
        edit = replace(edit, pad_with=low, pad_dtype=dtype)
    return edit


def _average_as_conv(analysis: Analysis, node: onnx.NodeProto, edit: Edit, where: str, why: str) -> Edit:
    """An AveragePool with no dilations in its opset, as the depthwise Conv that computes the same
    mean: exact in value, rounded as a Conv (weights fl(1/n)). Only where every window divides by
    its full size: no pads left out of the count."""
    index = analysis.index
    if any(edit.pads or ()) and not attr(node, "count_include_pad", 0):
        raise UnsupportedModelError(f"{where}: {why}; its padding is left out of the mean, which a Conv cannot do",
                                    node_label(node))
    shape = index.static_shape(node.input[0])
    dtype = index.dtypes.get(node.input[0]) or onnx.TensorProto.FLOAT
    channels = shape[analysis.layout(node.input[0])[1]] if shape else None
    if not isinstance(channels, int) or dtype not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                                      onnx.TensorProto.FLOAT16):
        raise UnsupportedModelError(f"{where}: {why}", node_label(node))
    return replace(edit, as_conv=channels, pad_dtype=dtype)


def scaled_pads(analysis: Analysis, node: onnx.NodeProto, dh: int, dw: int) -> tuple[int, ...]:
    """A trunk Pad's pads (all of them, as the node lists them) with those on H and W scaled."""
    pads, axes = pad_spec(analysis, node)
    lay = analysis.layout(node.input[0])
    scale = {lay[2]: dh, lay[3]: dw}
    return tuple(v * scale.get(axes[k % len(axes)], 1) for k, v in enumerate(pads))


def _const_ints(node: onnx.NodeProto, attr_name: str, input_pos: int,
                consts: dict[str, onnx.TensorProto]) -> list[int] | None:
    if (v := attr(node, attr_name)) is not None:
        return list(v)
    if len(node.input) > input_pos and node.input[input_pos] in consts:
        return [int(x) for x in numpy_helper.to_array(consts[node.input[input_pos]]).reshape(-1)]
    return None


def plan_head_dilation(nodes: Iterable[onnx.NodeProto], sources: Sequence[str], factor: tuple[int, int],
                       opset: int, initializers: Sequence[onnx.TensorProto],
                       dtype: int = onnx.TensorProto.FLOAT) -> dict[str, Edit]:
    """Edits for the head nodes the rules built (in graph order) that read the NCHW feature maps
    ``sources`` (of element type ``dtype``): every kernel wider than 1 is dilated by ``factor``,
    the window pool's end Pad and its Slice of the valid windows are scaled alike. Raises, naming
    the node, where a kernel cannot be dilated."""
    if tuple(factor) == (1, 1):
        return {}
    consts = {t.name: t for t in initializers}
    live, edits = set(sources), {}
    for node in nodes:
        if not any(i in live for i in node.input):
            continue
        live.update(o for o in node.output if o)
        if node.op_type in KERNEL_OPS:
            kernel = attr(node, "kernel_shape") or [1, 1]
            f = (factor[0] if kernel[0] > 1 else 1, factor[1] if kernel[1] > 1 else 1)
            if f != (1, 1):
                if (why := dilation_reason(node.op_type, opset)) is not None:
                    raise UnsupportedModelError(f"output stride: {why}", node.name)
                edits[node.output[0]] = Edit(node.op_type, f)
        elif node.op_type in ("Pad", "Slice"):
            pos, name = (1, "pads") if node.op_type == "Pad" else (2, "ends")
            values = _const_ints(node, name, pos, consts)
            if values is None:
                raise UnsupportedModelError(f"output stride: {node.op_type} {name} are not constant", node.name)
            if node.op_type == "Pad":  # N, C, H, W begins then ends
                new = [v * (factor[(k % 4) - 2] if k % 4 >= 2 else 1) for k, v in enumerate(values)]
            else:
                axes = _const_ints(node, "axes", 3, consts) or list(range(len(values)))
                if any(v > 0 for a, v in zip(axes, values) if a in (2, 3)):
                    raise UnsupportedModelError("output stride: a Slice that keeps a fixed number of cells", node.name)
                new = [v * factor[a - 2] if a in (2, 3) else v for a, v in zip(axes, values)]
            # The window pool's padding is sliced away, so its value is free: not 0, which
            # onnxruntime 1.31's PadFusion folds into the MaxPool's own pads, and then refuses
            # them for reaching the kernel size once dilated.
            low = lowest(dtype) if node.op_type == "Pad" else None
            edits[node.output[0]] = Edit(node.op_type, factor, values=tuple(new), pad_with=low, pad_dtype=dtype)
    return edits


def lowest(dtype: int) -> float:
    """The value a max ignores: -inf, or the integer type's least."""
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    return float("-inf") if np.issubdtype(np_type, np.floating) else float(np.iinfo(np_type).min)


def apply_edits(graph: onnx.GraphProto, edits: dict[str, Edit], opset: int) -> None:
    """Change ``graph``'s nodes as ``edits`` say, inserting the nodes some need before them. The
    constants they replace may be shared and are left to the caller's dead-weight sweep."""
    if not edits:
        return
    added: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        e = edits.get(node.output[0]) if node.output else None
        if e is not None:
            nodes.extend(_before(node, e, opset, added))
            _edit(node, e, added)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)


def _before(node: onnx.NodeProto, e: Edit, opset: int, added: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """The nodes an edit puts in front of ``node`` (reading its first input instead of it)."""
    if node.op_type in ("Pad", "Slice"):  # edited in place
        return []
    if e.as_conv is not None:
        kh, kw = attr(node, "kernel_shape") or [1, 1]
        value = np.asarray([1.0 / (kh * kw)], helper.tensor_dtype_to_np_dtype(e.pad_dtype))
        weight = f"{node.output[0]}__os_mean"
        node.input.append(weight)
        if opset >= 9:
            shape = numpy_helper.from_array(np.asarray([e.as_conv, 1, kh, kw], np.int64), f"{weight}_shape")
            added.append(shape)
            return [helper.make_node("ConstantOfShape", [shape.name], [weight], name=weight,
                                     value=numpy_helper.from_array(value, "value"))]
        added.append(numpy_helper.from_array(np.full((e.as_conv, 1, kh, kw), value[0]), weight))
        return []
    out = f"{node.output[0]}__os_in"
    if e.subsample is not None:
        pick = helper.make_node("MaxPool", [node.input[0]], [out], name=f"{node.name or node.output[0]}__os_subsample",
                                kernel_shape=[1, 1], strides=list(e.subsample))
    elif e.pad_with is not None:
        assert e.pads is not None
        hb, wb, he, we = e.pads
        pads = [0, 0, hb, wb, 0, 0, he, we]
        value = np.asarray(e.pad_with, helper.tensor_dtype_to_np_dtype(e.pad_dtype))
        name = f"{node.name or node.output[0]}__os_pad"
        if opset >= 11:
            p = numpy_helper.from_array(np.asarray(pads, np.int64), f"{out}_pads")
            v = numpy_helper.from_array(value, f"{out}_value")
            added.extend([p, v])
            pick = helper.make_node("Pad", [node.input[0], p.name, v.name], [out], name=name, mode="constant")
        else:  # (mode written out: pnnx translates a Pad to ncnn only with it)
            pick = helper.make_node("Pad", [node.input[0]], [out], name=name, pads=pads, value=float(value),
                                    mode="constant")
    else:
        return []
    node.input[0] = out
    return [pick]


def _edit(node: onnx.NodeProto, e: Edit, added: list[onnx.TensorProto]) -> None:
    if e.as_conv is not None:  # an AveragePool: the Conv keeps its window, strides and pads
        node.op_type = "Conv"
        for a in list(node.attribute):
            if a.name not in ("kernel_shape", "strides", "pads", "dilations", "auto_pad"):
                node.attribute.remove(a)
        node.attribute.append(helper.make_attribute("group", e.as_conv))
    if node.op_type in ("Pad", "Slice"):
        assert e.values is not None
        name, pos = ("pads", 1) if node.op_type == "Pad" else ("ends", 2)
        attrs = attr(node, name) is not None  # Pad before opset 11, Slice before 10
        if attrs:
            set_attr(node, name, list(e.values))
        else:
            tensor = numpy_helper.from_array(np.asarray(e.values, np.int64), f"{node.output[0]}__os_{name}")
            added.append(tensor)
            node.input[pos] = tensor.name
        if node.op_type == "Pad" and e.pad_with is not None:
            if attrs:
                set_attr(node, "value", e.pad_with)
            else:
                v = numpy_helper.from_array(np.asarray(e.pad_with, helper.tensor_dtype_to_np_dtype(e.pad_dtype)),
                                            f"{node.output[0]}__os_value")
                added.append(v)
                del node.input[2:]
                node.input.append(v.name)
        return
    if e.factor != (1, 1):
        old = attr(node, "dilations") or [1, 1]
        set_attr(node, "dilations", [old[0] * e.factor[0], old[1] * e.factor[1]])
    if e.strides is not None:
        set_attr(node, "strides", list(e.strides))
    if e.pads is not None:
        for a in list(node.attribute):
            if a.name == "auto_pad":
                node.attribute.remove(a)
        set_attr(node, "pads", [0, 0, 0, 0] if e.pad_with is not None else list(e.pads))
