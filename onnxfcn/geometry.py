"""Geometry of the trunk: total stride, offset, receptive field, output grid and exactness.

Receptive-field arithmetic per spatial axis, layer by layer (as in the FCN and OverFeat papers):
``jump`` is the distance in input pixels between neighbouring cells, ``start`` the input
coordinate where the receptive field of cell 0 begins, ``rf`` its extent. A converted model is
*exact* (every cell equals the original classifier on its crop) only if nothing inside a window
sees beyond it: no zero padding, no partial ceil-mode windows, no global pooling in the trunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from .errors import UnsupportedModelError
from .graph import attr, node_label
from .head import Analysis, State

_KERNEL_OPS = {"Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool", "QLinearAveragePool"}
_WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}  # where a convolution's weight is
_SCALE_OPS = {"Resize", "Upsample", "ConvTranspose", "DepthToSpace", "SpaceToDepth", "MaxUnpool"}

SizeFn = Callable[[int], int]


@dataclass
class _Axis:
    jump: int = 1
    start: int = 0
    rf: int = 1
    size: SizeFn = field(default=lambda n: n)


@dataclass
class _Geo:
    h: _Axis
    w: _Axis
    reasons: list[str]


@dataclass(frozen=True)
class Geometry:
    """What one cell of the converted model means, in input pixels."""

    window: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    receptive_field: tuple[int, int]
    feature_window: tuple[int, int]  # cells of the feature map one output cell reads
    mode: str
    exact: bool
    reasons: tuple[str, ...]
    _size_h: SizeFn
    _size_w: SizeFn

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Output cells for an input of ``height`` x ``width`` (<= 0: too small)."""
        return (self._size_h(height) - self.feature_window[0] + 1,
                self._size_w(width) - self.feature_window[1] + 1)

    def min_size(self) -> tuple[int, int]:
        """Smallest input height and width that give at least one cell."""
        out = []
        for axis, ref in ((0, self.window[0]), (1, self.window[1])):
            n = ref
            while n > 1 and self._cells(axis, n - 1) >= 1:
                n -= 1
            out.append(n)
        return out[0], out[1]

    def _cells(self, axis: int, n: int) -> int:
        return self.grid(n, self.window[1])[0] if axis == 0 else self.grid(self.window[0], n)[1]

    def formula(self, axis: int) -> str:
        """The output grid as ``floor((X - a) / s) + 1``, read off the exact size function."""
        sym = "H" if axis == 0 else "W"
        s = self.stride[axis]
        lo = self.min_size()[axis]
        # cells(X) = floor((X - lo) / s) + 1 holds for stride-aligned trunks; check it on a range.
        ok = all(self._cells(axis, x) == (x - lo) // s + 1 for x in range(lo, lo + 4 * s + 1))
        if ok:
            return f"floor(({sym} - {lo}) / {s}) + 1"
        return f"cells({sym}) (irregular; {sym}={self.window[axis]} gives {self._cells(axis, self.window[axis])})"

    def below_min(self) -> str:
        """What the converted model does on an input smaller than ``min_size``."""
        mh, mw = self.min_size()
        return (f"inputs under {mh}x{mw} fit no window: onnxruntime raises a runtime error (the window pool "
                "is emitted so that it never divides by zero; no size crashes the process)")

    def summary(self, height: int | None = None, width: int | None = None) -> dict[str, object]:
        d: dict[str, object] = {
            "window": list(self.window), "stride": list(self.stride), "offset": list(self.offset),
            "receptive_field": list(self.receptive_field), "feature_window": list(self.feature_window),
            "mode": self.mode, "exact": self.exact, "reasons": list(self.reasons),
            "grid_formula": [self.formula(0), self.formula(1)], "min_size": list(self.min_size()),
            "below_min": self.below_min(),
        }
        if height and width:
            cells = [max(c, 0) for c in self.grid(height, width)]
            grid_at: dict[str, object] = {"input": [height, width], "cells": cells}
            if min(cells) == 0:
                grid_at["note"] = self.below_min()
            d["grid_at"] = grid_at
        return d


def _kernel_axis(node: onnx.NodeProto, analysis: Analysis, ax: int, ref_in: int) -> tuple[int, int, int, int, bool, str]:
    """(effective kernel, stride, pad_begin, pad_end, ceil_mode, auto_pad) along one axis."""
    index = analysis.index
    k_attr = attr(node, "kernel_shape")
    if k_attr is None and node.op_type in _WEIGHT_INPUT:
        wshape = index.static_shape(node.input[_WEIGHT_INPUT[node.op_type]])
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
        return ke, s, pb, total - pb, False, auto
    if auto == "VALID":
        return ke, s, 0, 0, False, auto
    pads = attr(node, "pads") or [0, 0, 0, 0]
    return ke, s, int(pads[ax]), int(pads[ax + 2]), bool(attr(node, "ceil_mode", 0)), "NOTSET"


def _hw(analysis: Analysis, name: str) -> tuple[int, int] | None:
    shape = analysis.index.static_shape(name)
    info = analysis.info.get(name)
    if shape is None or info is None or info.layout is None or max(info.layout) >= len(shape):
        return None
    return int(shape[info.layout[2]]), int(shape[info.layout[3]])


def _keeps_spatial_size(analysis: Analysis, node: onnx.NodeProto) -> bool:
    """A non-kernel trunk op must leave H and W where the layout says, at the same size."""
    src = next((i for i in node.input if analysis.info.get(i) and analysis.info[i].state is State.SPATIAL), None)
    if src is None:
        return True
    a, b = _hw(analysis, src), _hw(analysis, node.output[0])
    return a is None or b is None or a == b


def _padded_size_fn(prev: SizeFn, extra: int) -> SizeFn:
    return lambda n: prev(n) + extra


def _pad_amounts(analysis: Analysis, node: onnx.NodeProto, h: _Axis, w: _Axis) -> list[tuple[str, _Axis, int, int]]:
    """(axis name, axis, pad begin, pad end) for H and W of a Pad node on the trunk."""
    index = analysis.index
    rank = index.rank(node.input[0]) or 4
    pads = attr(node, "pads")
    if pads is None:
        pads = index.int_list(node.input[1]) if len(node.input) > 1 and index.is_const(node.input[1]) else None
    if pads is None:
        raise UnsupportedModelError("Pad amounts are computed, not constant", node_label(node))
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        given = index.int_list(node.input[3])
        if given is None:
            raise UnsupportedModelError("Pad axes are computed, not constant", node_label(node))
        axes = [a % rank for a in given]
    n = len(axes)
    by_axis = {a: (int(pads[k]), int(pads[k + n])) for k, a in enumerate(axes)}
    lay = analysis.layout(node.input[0])
    if by_axis.get(lay[0], (0, 0)) != (0, 0):
        raise UnsupportedModelError("Pad on the batch axis", node_label(node))
    out = []
    for name, axis, pos in (("H", h, lay[2]), ("W", w, lay[3])):
        pb, pe = by_axis.get(pos, (0, 0))
        if pb < 0 or pe < 0:
            raise UnsupportedModelError(f"negative Pad (a crop) on {name} at fixed positions", node_label(node))
        out.append((name, axis, pb, pe))
    return out


def _size_fn(prev: SizeFn, ke: int, s: int, pb: int, pe: int, ceil: bool, auto: str) -> SizeFn:
    if auto.startswith("SAME"):
        return lambda n: math.ceil(prev(n) / s)
    if ceil:
        return lambda n: -((-(prev(n) + pb + pe - ke)) // s) + 1
    return lambda n: (prev(n) + pb + pe - ke) // s + 1


def compute_geometry(analysis: Analysis, features: list[str], feature_window: tuple[int, int], mode: str) -> Geometry:
    """Walk the trunk from the image input to ``features`` and compose the per-layer geometry."""
    image = analysis.image
    index = analysis.index
    geo: dict[str, _Geo] = {image.name: _Geo(_Axis(), _Axis(), [])}
    needed = index.ancestors(features)
    pooled_in_trunk: dict[str, str] = {}
    for node in analysis.index.graph.node:
        if not any(o in needed for o in node.output):
            continue
        ins = [i for i in node.input if i in geo]
        if not ins:
            # Trunk global pooling (squeeze-excitation): its output rejoins the trunk later.
            outs = [o for o in node.output if analysis.info.get(o) and analysis.info[o].state is State.POOLED]
            src = [i for i in node.input if i in pooled_in_trunk]
            for o in outs:
                pooled_in_trunk[o] = pooled_in_trunk[src[0]] if src else node_label(node)
            continue
        out_info = analysis.info.get(node.output[0])
        if out_info is not None and out_info.state is State.POOLED:
            pooled_in_trunk[node.output[0]] = node_label(node)
            continue
        if out_info is None or out_info.state is not State.SPATIAL:
            continue
        base = geo[ins[0]]
        reasons = list(dict.fromkeys(r for i in ins for r in geo[i].reasons))
        h, w = _Axis(base.h.jump, base.h.start, base.h.rf, base.h.size), _Axis(base.w.jump, base.w.start, base.w.rf, base.w.size)
        for other in ins[1:]:  # merge branches (residual Add, Concat): union of receptive fields
            for mine, theirs, ref_n in ((h, geo[other].h, image.height), (w, geo[other].w, image.width)):
                if theirs.jump != mine.jump:
                    raise UnsupportedModelError(
                        f"merges maps of stride {mine.jump} and {theirs.jump}", node_label(node))
                bad = next((n for n in range(ref_n, ref_n + 2 * mine.jump + 1) if mine.size(n) != theirs.size(n)),
                           None)
                if bad is not None:
                    raise UnsupportedModelError(
                        f"merges branches whose sizes differ at input size {bad} ({mine.size(bad)} vs "
                        f"{theirs.size(bad)}): the model only runs at some sizes", node_label(node))
                end = max(mine.start + mine.rf, theirs.start + theirs.rf)
                mine.start = min(mine.start, theirs.start)
                mine.rf = end - mine.start
        for i in node.input:
            if i in pooled_in_trunk:
                reasons.append(f"global pooling inside the trunk ({pooled_in_trunk[i]}) sees the whole image")
        if node.op_type in _KERNEL_OPS and analysis.info[node.input[0]].state is State.SPATIAL:
            lay = analysis.layout(node.input[0])
            shape = index.static_shape(node.input[0])
            for ax, axis in ((0, h), (1, w)):
                ref_in = int(shape[lay[2 + ax]]) if shape else 0
                ke, s, pb, pe, ceil, auto = _kernel_axis(node, analysis, ax, ref_in)
                axis.rf += (ke - 1) * axis.jump
                axis.start -= pb * axis.jump
                axis.jump *= s
                axis.size = _size_fn(axis.size, ke, s, pb, pe, ceil, auto)
                if pb or pe:
                    reasons.append(f"zero padding at {node_label(node)} ({node.op_type} pads {pb},{pe})")
                elif ceil and ref_in and (ref_in - ke) % s:
                    reasons.append(f"ceil_mode window past the edge at {node_label(node)}")
        elif node.op_type == "Pad" and analysis.info[node.input[0]].state is State.SPATIAL:
            pad_mode = attr(node, "mode", "constant")
            for axis_name, axis, pb, pe in _pad_amounts(analysis, node, h, w):
                axis.start -= pb * axis.jump
                axis.size = _padded_size_fn(axis.size, pb + pe)
                if pb or pe:
                    reasons.append(f"zero padding at {node_label(node)} (Pad {pad_mode} {pb},{pe} on {axis_name})")
        elif (attr(node, "kernel_shape") is not None or node.op_type in ("DeformConv", "Col2Im", "Im2Col")) and \
                any(analysis.info.get(i) and analysis.info[i].state is State.SPATIAL for i in node.input):
            # A spatial kernel the size model does not know: treating it as pointwise would miss
            # its padding and its receptive field.
            raise UnsupportedModelError(f"{node.op_type} has a spatial kernel that the geometry does not model",
                                        node_label(node))
        elif not _keeps_spatial_size(analysis, node):
            raise UnsupportedModelError(
                f"{node.op_type} changes or moves the spatial axes {_hw(analysis, node.input[0])} -> "
                f"{_hw(analysis, node.output[0])}; sliding-window geometry is undefined", node_label(node))
        elif node.op_type in _SCALE_OPS:
            raise UnsupportedModelError(f"{node.op_type} changes the spatial scale; sliding-window geometry is undefined",
                                        node_label(node))
        for o in node.output:
            if o:
                geo[o] = _Geo(h, w, reasons)
    feats = [geo[f] for f in features if f in geo]
    if not feats:
        raise UnsupportedModelError("the head's feature map is not computed from the image input")
    g0 = feats[0]
    for g in feats[1:]:
        if (g.h.jump, g.w.jump) != (g0.h.jump, g0.w.jump):
            raise UnsupportedModelError("heads read feature maps of different strides")
    # Check the size model against shape inference at the reference size.
    lay = analysis.layout(features[0])
    shape = index.static_shape(features[0])
    ref = (image.height, image.width)
    if shape is not None:
        got = (g0.h.size(ref[0]), g0.w.size(ref[1]))
        want = (int(shape[lay[2]]), int(shape[lay[3]]))
        if got != want:
            raise UnsupportedModelError(
                f"geometry model gives a {got[0]}x{got[1]} feature map at the reference size, shape inference {want[0]}x{want[1]}",
                features[0])
    kh, kw = feature_window
    reasons = list(dict.fromkeys(r for g in feats for r in g.reasons))
    if mode == "dense":
        reasons.append("dense mode: each cell scores one feature position, not a reference-size window")
        rf = (g0.h.rf, g0.w.rf)
        offset = (g0.h.start, g0.w.start)
    else:
        rf = (g0.h.rf + (kh - 1) * g0.h.jump, g0.w.rf + (kw - 1) * g0.w.jump)
        offset = (0, 0)
    return Geometry(
        window=ref, stride=(g0.h.jump, g0.w.jump), offset=offset, receptive_field=rf,
        feature_window=(kh, kw), mode=mode, exact=not reasons, reasons=tuple(reasons),
        _size_h=g0.h.size, _size_w=g0.w.size,
    )
