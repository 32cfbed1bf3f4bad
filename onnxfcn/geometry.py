"""Geometry of the trunk: total stride, offset, receptive field, output grid and exactness.

Receptive-field arithmetic per spatial axis, layer by layer (as in the FCN and OverFeat papers):
``jump`` is the distance in input pixels between neighbouring cells, ``start`` the input
coordinate where the receptive field of cell 0 begins, ``rf`` its extent. A converted model is
*exact* (every cell equals the original classifier on its crop) only if nothing inside a window
sees beyond it: no zero padding, no partial ceil-mode windows, no global pooling in the trunk.

An output stride S below the network's own (``plan_geometry(output_stride=...)``) is the same
arithmetic with the strides taken out of the last strided layers and every later kernel dilated
by the factor removed (a trous, as in OverFeat and DeepLab): ``jump`` becomes the new distance
between cells, ``dense`` how many new cells lie between two of the original's. Receptive fields
and offsets do not change; the layers to edit are returned as :class:`Edit`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import onnx

from .errors import OnnxFcnError, UnsupportedModelError
from .graph import attr, node_label
from .head import NCHW, Analysis, State
from .stride import KERNEL_OPS, Edit, dilation_reason, lowest

log = logging.getLogger(__name__)

_WEIGHT_INPUT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}  # where a convolution's weight is
WHOLE_IMAGE = "sees the whole image"
# The input sizes a model runs at, per axis: n with n % period in residues ((1, (0,)): any size).
Lattice = tuple[int, tuple[int, ...]]
ANY_SIZE: Lattice = (1, (0,))
_SCALE_OPS = {"ConvTranspose", "DepthToSpace", "SpaceToDepth", "MaxUnpool"}
_RESIZE_OPS = {"Resize", "Upsample"}

SizeFn = Callable[[int], int]


@dataclass
class _Axis:
    jump: int = 1
    start: int = 0
    rf: int = 1
    size: SizeFn = field(default=lambda n: n)
    dense: int = 1  # output stride: new cells per original cell (the dilation later kernels need)


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
    # Output stride below the network's: the feature window's cells lie this far apart.
    feature_dilation: tuple[int, int] = (1, 1)
    # Where cell (0, 0)'s receptive field begins (negative: it reaches into the zero padding);
    # cell (i, j)'s is shifted by (i, j) * stride. Tiling keeps a cell only where this lies inside.
    receptive_field_start: tuple[int, int] = (0, 0)
    # A global pool inside the trunk: every cell depends on the whole image, not only its field.
    global_context: bool = False
    # Branches that merge maps whose sizes agree only at some input sizes (Inception v2, DLA):
    # the sizes the model runs at, per axis.
    lattice: tuple[Lattice, Lattice] = (ANY_SIZE, ANY_SIZE)

    def on_lattice(self, height: int, width: int) -> bool:
        return on_lattice(height, self.lattice[0]) and on_lattice(width, self.lattice[1])

    def check_size(self, height: int, width: int, what: str = "size") -> None:
        """Refuse, with one line, a size the model does not run at."""
        check_on_lattice(height, width, self.lattice, what)

    def next_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest size at least ``height`` x ``width`` that the model runs at."""
        return next_on_lattice(height, self.lattice[0]), next_on_lattice(width, self.lattice[1])

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Output cells for an input of ``height`` x ``width`` (<= 0: too small)."""
        (kh, kw), (dh, dw) = self.feature_window, self.feature_dilation
        return (self._size_h(height) - (kh - 1) * dh, self._size_w(width) - (kw - 1) * dw)

    def min_size(self) -> tuple[int, int]:
        """Smallest input height and width (that the model runs at) that give at least one cell."""
        out = []
        for axis, ref in ((0, self.window[0]), (1, self.window[1])):
            n, best = ref, ref
            while n > 1 and self._cells(axis, n - 1) >= 1:
                n -= 1
                if on_lattice(n, self.lattice[axis]):
                    best = n
            out.append(best)
        return out[0], out[1]

    def _cells(self, axis: int, n: int) -> int:
        return self.grid(n, self.window[1])[0] if axis == 0 else self.grid(self.window[0], n)[1]

    def formula(self, axis: int) -> str:
        """The output grid as ``floor((X - a) / s) + 1``, read off the exact size function."""
        sym = "H" if axis == 0 else "W"
        s = self.stride[axis]
        lo = self.min_size()[axis]
        # cells(X) = floor((X - lo) / s) + 1 holds for stride-aligned trunks; check it on a range.
        lat = self.lattice[axis]
        ok = all(self._cells(axis, x) == (x - lo) // s + 1 for x in range(lo, lo + 4 * max(s, lat[0]) + 1)
                 if on_lattice(x, lat))
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
            "feature_dilation": list(self.feature_dilation),
            "receptive_field_start": list(self.receptive_field_start), "global_context": self.global_context,
            "sizes": [lattice_text(self.lattice[0]), lattice_text(self.lattice[1])],
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


def on_lattice(n: int, lattice: Lattice) -> bool:
    return n % lattice[0] in lattice[1]


def check_on_lattice(height: int, width: int, lattice: tuple[Lattice, Lattice], what: str = "size") -> None:
    """Refuse, with one line, a size off the lattice, naming the next size on it."""
    if on_lattice(height, lattice[0]) and on_lattice(width, lattice[1]):
        return
    nh, nw = next_on_lattice(height, lattice[0]), next_on_lattice(width, lattice[1])
    raise OnnxFcnError(f"{what} {height}x{width} is not a size the model runs at (H = {lattice_text(lattice[0])}, "
                       f"W = {lattice_text(lattice[1])}: merged branches' sizes differ at other sizes, and onnxruntime "
                       f"fails at the merge); the next size that is: {nh}x{nw}")


def next_on_lattice(n: int, lattice: Lattice) -> int:
    return next(m for m in range(n, n + lattice[0]) if on_lattice(m, lattice))


def lattice_text(lattice: Lattice) -> str:
    """'any', '32k+7' or '32k+{7,8}'."""
    period, residues = lattice
    if period == 1:
        return "any"
    return f"{period}k+{residues[0]}" if len(residues) == 1 else f"{period}k+{{{','.join(map(str, residues))}}}"


def parse_lattice(text: str) -> Lattice:
    """The inverse of ``lattice_text``."""
    if text == "any":
        return ANY_SIZE
    try:
        period_text, rest = text.split("k+", 1)
        period = int(period_text)
        residues = tuple(sorted(int(r) for r in rest.strip("{}").split(",")))
    except ValueError:
        raise OnnxFcnError(f"{text!r} is not a size lattice such as 32k+7") from None
    if period < 1 or not residues or any(not 0 <= r < period for r in residues):
        raise OnnxFcnError(f"{text!r} is not a size lattice such as 32k+7")
    return period, residues


def _meet(a: Lattice, b: Lattice) -> Lattice:
    period = math.lcm(a[0], b[0])
    return period, tuple(r for r in range(period) if on_lattice(r, a) and on_lattice(r, b))


def _agreeing(mine: SizeFn, theirs: SizeFn, period: int, ref: int) -> Lattice:
    """The sizes at which two merged branches have the same size: residues modulo ``period`` (the
    stride at the merge, after which the sizes repeat) that agree at every probed size."""
    bad: set[int] = set()
    for n in range(max(1, ref - 2 * period), ref + 4 * period):
        a, b = mine(n), theirs(n)
        if (a >= 1 or b >= 1) and a != b:
            bad.add(n % period)
    return period, tuple(r for r in range(period) if r not in bad)


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


def resize_factors(analysis: Analysis, node: onnx.NodeProto) -> tuple[tuple[int, int] | None, str]:
    """A Resize/Upsample's integer upsampling factors on H and W, or None and why not. Only
    constant scales qualify: ``sizes`` hold the reference size, and a scale that is not a whole
    number puts output cells between input cells, where no sliding geometry exists."""
    index = analysis.index
    lay = analysis.layout(node.input[0])
    if node.op_type == "Upsample" and len(node.input) < 2:
        raw = attr(node, "scales")
        scales = None if raw is None else [float(v) for v in raw]
    else:
        pos = 1 if node.op_type == "Upsample" or index.opset < 11 else 2
        if len(node.input) > 3 and node.input[3]:
            return None, "it resizes to constant sizes (the reference size's), not by a scale"
        value = index.const_value(node.input[pos]) if len(node.input) > pos and node.input[pos] else None
        scales = None if value is None else [float(v) for v in value.reshape(-1)]
    if not scales or lay is None or len(scales) != 4:
        return None, "its scales are not a constant of one value per axis"
    if scales[lay[0]] != 1 or scales[lay[1]] != 1:
        return None, f"it scales the batch or channel axis ({scales})"
    f = (scales[lay[2]], scales[lay[3]])
    if any(v < 1 or v != int(v) for v in f):
        return None, f"its spatial scales {f[0]:g}x{f[1]:g} are not whole numbers of at least 1"
    mode = attr(node, "mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    coord = attr(node, "coordinate_transformation_mode", "half_pixel" if index.opset >= 11 else "asymmetric")
    coord = coord.decode() if isinstance(coord, bytes) else str(coord)
    if mode not in ("nearest", "linear"):
        return None, f"its {mode} interpolation is not modelled (nearest and linear are)"
    if coord not in ("asymmetric", "half_pixel", "pytorch_half_pixel"):
        # align_corners maps positions by the input's own size: a window's cells move with the image
        return None, f"its coordinate_transformation_mode {coord} depends on the input size"
    nearest_mode = attr(node, "nearest_mode", "round_prefer_floor")
    nearest_mode = nearest_mode.decode() if isinstance(nearest_mode, bytes) else str(nearest_mode)
    if mode == "nearest" and ((coord == "asymmetric" and nearest_mode == "floor") or node.op_type == "Upsample"):
        mode = "nearest_floor"  # output cell k is input cell floor(k / f) exactly
    return (int(f[0]), int(f[1])), mode


def _scaled_size_fn(prev: SizeFn, factor: int) -> SizeFn:
    return lambda n: prev(n) * factor


def _padded_size_fn(prev: SizeFn, extra: int) -> SizeFn:
    return lambda n: prev(n) + extra


def _pad_spec(analysis: Analysis, node: onnx.NodeProto) -> tuple[list[int], list[int]]:
    """A Pad node's pads (begins, then ends, as the node lists them) and the axes they are for."""
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
    return [int(p) for p in pads], axes


def _pad_amounts(analysis: Analysis, node: onnx.NodeProto, h: _Axis, w: _Axis) -> list[tuple[str, _Axis, int, int]]:
    """(axis name, axis, pad begin, pad end) for H and W of a Pad node on the trunk."""
    pads, axes = _pad_spec(analysis, node)
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


def _ceil_end_pad(node: onnx.NodeProto, ref_in: int, ke: int, s: int, pb: int, pe: int) -> int:
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


def _kernel_edit(analysis: Analysis, node: onnx.NodeProto, target: tuple[int, int], factor: list[int],
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


def _scaled_pads(analysis: Analysis, node: onnx.NodeProto, dh: int, dw: int) -> tuple[int, ...]:
    """A trunk Pad's pads (all of them, as the node lists them) with those on H and W scaled."""
    pads, axes = _pad_spec(analysis, node)
    lay = analysis.layout(node.input[0])
    scale = {lay[2]: dh, lay[3]: dw}
    return tuple(v * scale.get(axes[k % len(axes)], 1) for k, v in enumerate(pads))


def _size_fn(prev: SizeFn, ke: int, s: int, pb: int, pe: int, ceil: bool, auto: str) -> SizeFn:
    if auto.startswith("SAME"):
        return lambda n: math.ceil(prev(n) / s)
    if ceil:
        return lambda n: -((-(prev(n) + pb + pe - ke)) // s) + 1
    return lambda n: (prev(n) + pb + pe - ke) // s + 1


def compute_geometry(analysis: Analysis, features: list[str], feature_window: tuple[int, int], mode: str) -> Geometry:
    """Walk the trunk from the image input to ``features`` and compose the per-layer geometry."""
    return plan_geometry(analysis, features, feature_window, mode)[0]


def plan_geometry(analysis: Analysis, features: list[str], feature_window: tuple[int, int], mode: str,
                  output_stride: tuple[int, int] | None = None) -> tuple[Geometry, dict[str, Edit]]:
    """The geometry, and with ``output_stride`` S the trunk edits that give it (S must divide the
    network's own stride; equal to it, nothing changes)."""
    if output_stride is None:
        return _walk(analysis, features, feature_window, mode, None)
    natural, _ = _walk(analysis, features, feature_window, mode, None)
    for ax, name in ((0, "H"), (1, "W")):
        if natural.stride[ax] % output_stride[ax]:
            raise OnnxFcnError(f"output stride {output_stride[0]}x{output_stride[1]} must divide the network's own "
                               f"stride {natural.stride[0]}x{natural.stride[1]} (on {name})")
    if tuple(output_stride) == natural.stride:
        return natural, {}
    return _walk(analysis, features, feature_window, mode, output_stride)


def _new_stride(node: onnx.NodeProto, axis: _Axis, s: int, target: int) -> int:
    """A kernel's stride under output stride ``target``: kept while the map stays at or above the
    target's density, removed after, and split where the target falls inside it."""
    if axis.jump * axis.dense * s <= target:
        return s
    if axis.jump >= target:
        return 1
    if target % axis.jump or s % (target // axis.jump):
        raise UnsupportedModelError(f"output stride {target} falls inside this stride-{s} layer (its input is at "
                                    f"stride {axis.jump}); choose a stride the layers' strides multiply to",
                                    node_label(node))
    return target // axis.jump


def _walk(analysis: Analysis, features: list[str], feature_window: tuple[int, int], mode: str,
          target: tuple[int, int] | None) -> tuple[Geometry, dict[str, Edit]]:
    image = analysis.image
    edits: dict[str, Edit] = {}
    index = analysis.index
    geo: dict[str, _Geo] = {image.name: _Geo(_Axis(), _Axis(), [])}
    lattice = [ANY_SIZE, ANY_SIZE]
    coarse = [1, 1]  # the coarsest stride any map so far has had, per axis
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
            seen = geo[ins[0]]
            if (seen.h.dense, seen.w.dense) != (1, 1):
                if node.input[0] != ins[0] or analysis.layout(ins[0]) != NCHW:
                    raise UnsupportedModelError("output stride: a global pooling inside the trunk over a map that is "
                                                "not NCHW", node_label(node))
                edits[node.output[0]] = Edit(node.op_type, (1, 1), subsample=(seen.h.dense, seen.w.dense))
            continue
        if out_info is None or out_info.state is not State.SPATIAL:
            continue
        base = geo[ins[0]]
        reasons = list(dict.fromkeys(r for i in ins for r in geo[i].reasons))
        h = _Axis(base.h.jump, base.h.start, base.h.rf, base.h.size, base.h.dense)
        w = _Axis(base.w.jump, base.w.start, base.w.rf, base.w.size, base.w.dense)
        for other in ins[1:]:  # merge branches (residual Add, Concat): union of receptive fields
            for axis_key, (mine, theirs, ref_n) in enumerate(((h, geo[other].h, image.height),
                                                              (w, geo[other].w, image.width))):
                if (theirs.jump, theirs.dense) != (mine.jump, mine.dense):
                    raise UnsupportedModelError(
                        f"merges maps of stride {mine.jump * mine.dense} and {theirs.jump * theirs.dense}"
                        + (f" (at output stride {mine.jump} and {theirs.jump})" if target else ""), node_label(node))
                # Sizes repeat with the coarsest stride on the way here (an upsampled branch's too).
                agree = _agreeing(mine.size, theirs.size, math.lcm(coarse[axis_key], mine.jump * mine.dense), ref_n)
                if len(agree[1]) < agree[0]:
                    met = _meet(lattice[axis_key], agree)
                    if not on_lattice(ref_n, met):  # the original itself runs at the reference size
                        raise UnsupportedModelError(
                            f"merges branches whose sizes differ at the reference size ({mine.size(ref_n)} vs "
                            f"{theirs.size(ref_n)})", node_label(node))
                    lattice[axis_key] = met
                    log.info("%s: branch sizes agree only at %s", node_label(node), lattice_text(agree))
                end = max(mine.start + mine.rf, theirs.start + theirs.rf)
                mine.start = min(mine.start, theirs.start)
                mine.rf = end - mine.start
        for i in node.input:
            if i in pooled_in_trunk:
                reasons.append(f"global pooling inside the trunk ({pooled_in_trunk[i]}) {WHOLE_IMAGE}")
        if node.op_type in KERNEL_OPS and analysis.info[node.input[0]].state is State.SPATIAL:
            lay = analysis.layout(node.input[0])
            shape = index.static_shape(node.input[0])
            factor, strides, pads, edited = [1, 1], [1, 1], [0, 0, 0, 0], False
            for ax, axis in ((0, h), (1, w)):
                ref_in = int(shape[lay[2 + ax]]) if shape else 0
                ke, s, pb, pe, ceil, auto = _kernel_axis(node, analysis, ax, ref_in)
                if pb or pe:
                    reasons.append(f"zero padding at {node_label(node)} ({node.op_type} pads {pb},{pe})")
                elif ceil and ref_in and (ref_in - ke) % s:
                    reasons.append(f"ceil_mode window past the edge at {node_label(node)}")
                s_new = s if target is None else _new_stride(node, axis, s, target[ax])
                if ceil and s_new != s and ref_in:
                    pe = _ceil_end_pad(node, ref_in, ke, s, pb, pe)
                dil = axis.dense
                if dil > 1 or s_new != s:
                    # Dilate by the density gained before this layer; SAME padding becomes the
                    # explicit pads it has at the reference size, scaled alike.
                    edited = True
                    factor[ax] = dil if ke > 1 else 1
                    ke, pb, pe, auto = (ke - 1) * dil + 1, pb * dil, pe * dil, "NOTSET"
                strides[ax], pads[ax], pads[ax + 2] = s_new, pb, pe
                axis.rf += (ke - 1) * axis.jump
                axis.start -= pb * axis.jump
                axis.jump *= s_new
                axis.dense = dil * s // s_new
                axis.size = _size_fn(axis.size, ke, s_new, pb, pe, ceil, auto)
            if edited:
                assert target is not None
                edits[node.output[0]] = _kernel_edit(analysis, node, target, factor, strides, pads)
        elif node.op_type in _RESIZE_OPS and analysis.info[node.input[0]].state is State.SPATIAL:
            factors, interp = resize_factors(analysis, node)
            if factors is None:
                raise UnsupportedModelError(f"{node.op_type} changes the spatial scale and {interp}; sliding-window "
                                            "geometry is undefined", node_label(node))
            if target is not None:
                raise UnsupportedModelError("output stride: an upsampling trunk is not supported", node_label(node))
            for ax, axis in ((0, h), (1, w)):
                f = factors[ax]
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
                reasons.append(f"linear Resize at {node_label(node)} clamps at the map's edge")
        elif node.op_type == "Pad" and analysis.info[node.input[0]].state is State.SPATIAL:
            pad_mode = attr(node, "mode", "constant")
            for axis_name, axis, pb, pe in _pad_amounts(analysis, node, h, w):
                if pb or pe:
                    reasons.append(f"zero padding at {node_label(node)} (Pad {pad_mode} {pb},{pe} on {axis_name})")
                pb, pe = pb * axis.dense, pe * axis.dense
                axis.start -= pb * axis.jump
                axis.size = _padded_size_fn(axis.size, pb + pe)
            if (h.dense, w.dense) != (1, 1):
                if pad_mode != "constant":
                    raise UnsupportedModelError(f"output stride: a {pad_mode} Pad mirrors or repeats neighbouring "
                                                "cells, which a dilated map does not have", node_label(node))
                edits[node.output[0]] = Edit("Pad", (h.dense, w.dense), values=_scaled_pads(analysis, node, h.dense,
                                                                                              w.dense))
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
        coarse = [math.lcm(coarse[0], h.jump * h.dense), math.lcm(coarse[1], w.jump * w.dense)]
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
    if shape is not None and target is None:  # (at an output stride the map is denser than inferred)
        got = (g0.h.size(ref[0]), g0.w.size(ref[1]))
        want = (int(shape[lay[2]]), int(shape[lay[3]]))
        if got != want:
            raise UnsupportedModelError(
                f"geometry model gives a {got[0]}x{got[1]} feature map at the reference size, shape inference {want[0]}x{want[1]}",
                features[0])
    kh, kw = feature_window
    reasons = list(dict.fromkeys(r for g in feats for r in g.reasons))
    for axis_name, jump, coarsest in (("H", g0.h.jump * g0.h.dense, coarse[0]), ("W", g0.w.jump * g0.w.dense, coarse[1])):
        if coarsest > jump:
            # An upsampled branch: its stride-`coarsest` cells pair up differently for a crop that
            # starts between them, so only every (coarsest / jump)-th cell is a crop's.
            reasons.append(f"upsampling: the stride-{jump} map on {axis_name} draws on a stride-{coarsest} one, so "
                           f"only cells every {coarsest} px see it as their crops do")
    if mode == "dense":
        reasons.append("dense mode: each cell scores one feature position, not a reference-size window")
        rf = (g0.h.rf, g0.w.rf)
        offset = (g0.h.start, g0.w.start)
    else:  # the window's cells lie jump * dense apart: the network's own stride
        rf = (g0.h.rf + (kh - 1) * g0.h.jump * g0.h.dense, g0.w.rf + (kw - 1) * g0.w.jump * g0.w.dense)
        offset = (0, 0)
    return Geometry(
        window=ref, stride=(g0.h.jump, g0.w.jump), offset=offset, receptive_field=rf,
        feature_window=(kh, kw), mode=mode, exact=not reasons, reasons=tuple(reasons),
        _size_h=g0.h.size, _size_w=g0.w.size, feature_dilation=(g0.h.dense, g0.w.dense),
        receptive_field_start=(g0.h.start, g0.w.start), global_context=any(WHOLE_IMAGE in r for r in reasons),
        lattice=(lattice[0], lattice[1]),
    ), edits
