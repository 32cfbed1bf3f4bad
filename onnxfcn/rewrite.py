"""The head rewrite: dense layers become convolutions, global pools become sliding pools.

Every head tensor of the original graph (N x D vectors, or N x C x 1 x 1 pooled maps) gets a
4-D counterpart in the new graph that holds one such vector per output cell. Rewritten nodes keep
their original output names, so graph outputs and the names pipelines use stay the same.

The rewrite is planned first (``plan_head_rewrite``) and applied after (``apply``): ``inspect``
shows a plan without touching the model, and a plan with a rejected node changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import UnsupportedModelError
from .graph import GraphIndex, attr, node_label, walk_back
from .head import NCHW, Analysis, Head, Layout, State, collapse_kind, flatten_order, perm_to

log = logging.getLogger(__name__)

MODES = ("window", "dense")

_UNARY = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
    "Gelu", "Clip", "Softplus", "Softsign", "Mish", "ThresholdedRelu", "Shrink", "Exp", "Log", "Neg",
    "Abs", "Sqrt", "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Dropout", "Identity",
    "Cast", "CastLike",
}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean"}
_SOFTMAX = {"Softmax", "LogSoftmax", "Hardmax"}
_ARG = {"ArgMax", "ArgMin"}
_CLASS_REDUCE = {"ReduceMax", "ReduceMin", "ReduceMean", "ReduceSum", "ReduceLogSumExp"}


@dataclass
class Mapped:
    """The new-graph counterpart of a head tensor."""

    name: str
    layout: Layout | None  # axis positions of (N, C, H, W); None for rank-3 (N, H, W) results
    fold: tuple[str, tuple[int, int, int]] | None = None  # flattened window: order and (C, h, w)

    @property
    def cax(self) -> int:
        assert self.layout is not None
        return self.layout[1]


@dataclass
class Change:
    node: str
    before: str
    after: str


@dataclass
class Plan:
    mode: str
    replacements: dict[int, list[onnx.NodeProto]] = field(default_factory=dict)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    retarget: list[tuple[str, list[int]]] = field(default_factory=list)  # initializer dims only
    changes: list[Change] = field(default_factory=list)
    outputs: dict[str, Mapped] = field(default_factory=dict)
    windows: list[tuple[int, int]] = field(default_factory=list)  # feature-map window per head
    features: list[str] = field(default_factory=list)
    # The tensor each head reads in the converted graph (NCHW): verify's feature check reads it there.
    sources: list[str] = field(default_factory=list)
    pools_dropped: int = 0  # dense mode: global pools removed (none: the head slides windows anyway)


class _Reject(Exception):
    def __init__(self, node: onnx.NodeProto, reason: str) -> None:
        super().__init__(reason)
        self.node = node
        self.reason = reason


# dtypes onnxruntime's CPU Conv and ONNX's Conv accept (bfloat16 keeps the pool)
_CONV_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


class _Builder:
    def __init__(self, index: GraphIndex, plan: Plan) -> None:
        self.index = index
        self.plan = plan
        self.nodes: list[onnx.NodeProto] = []

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.index.fresh(hint)
        self.plan.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def ints(self, hint: str, values: Sequence[int]) -> str:
        return self.const(hint, np.asarray(values, dtype=np.int64))

    def node(self, op: str, inputs: Sequence[str], hint: str, outputs: Sequence[str] | None = None,
             n_out: int = 1, **attrs: Any) -> list[str]:
        outs = list(outputs) if outputs is not None else [self.index.fresh(hint) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.index.fresh(hint), **attrs))
        return outs


def _np_dtype(index: GraphIndex, name: str) -> np.dtype[Any]:
    dt = index.dtypes.get(name) or onnx.TensorProto.FLOAT
    return np.dtype(helper.tensor_dtype_to_np_dtype(dt))


class HeadRewriter:
    """Plans the rewrite of every head of an analysed model."""

    def __init__(self, analysis: Analysis, mode: str = "window") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.a = analysis
        self.index = analysis.index
        self.mode = mode
        self.plan = Plan(mode)
        self.mapped: dict[str, Mapped] = {}
        self._raveled: dict[str, tuple[Mapped, tuple[int, ...]]] = {}

    # ---- driver ------------------------------------------------------------------------
    def run(self) -> Plan:
        for head in self.a.heads:
            self._head(head)
        return self.plan

    def _head(self, head: Head) -> None:
        for node in head.nodes:
            b = _Builder(self.index, self.plan)
            try:
                before = self._describe(node)
                after = self._rewrite(node, b)
            except _Reject as r:
                raise UnsupportedModelError(f"{r.node.op_type}: {r.reason}", node_label(r.node)) from None
            self.plan.replacements[id(node)] = b.nodes
            if after:
                self.plan.changes.append(Change(node_label(node), before, after))
        for out in head.outputs:
            m = self.mapped[out]
            if m.name != out:  # an identity mapping at the very end: keep the output name
                b = _Builder(self.index, self.plan)
                b.node("Identity", [m.name], out, outputs=[out])
                last = head.nodes[-1]
                self.plan.replacements.setdefault(id(last), []).extend(b.nodes)
                m = Mapped(out, m.layout, m.fold)
            self.plan.outputs[out] = m

    def _describe(self, node: onnx.NodeProto) -> str:
        shapes = [self.index.shape(i) for i in node.input[:1]]
        s = "x".join(str(d) for d in shapes[0]) if shapes and shapes[0] else "?"
        return f"{node.op_type}({s})"

    def _m(self, name: str, node: onnx.NodeProto) -> Mapped:
        if name not in self.mapped:
            raise _Reject(node, f"input '{name}' is not a head tensor the rewrite can follow")
        return self.mapped[name]

    def _head_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i and self.a.info.get(i) is not None
                and self.a.info[i].state in (State.POOLED, State.FLAT)]

    # ---- per-op rules ------------------------------------------------------------------
    def _rewrite(self, node: onnx.NodeProto, b: _Builder) -> str | None:
        op = node.op_type
        src_info = self.a.info.get(node.input[0]) if node.input else None
        if src_info is not None and src_info.state is State.SPATIAL:
            return self._collapse(node, b)
        if op in ("Gemm", "MatMul"):
            return self._dense(node, b)
        if op in _UNARY:
            return self._unary(node, b)
        if op in _BINARY:
            return self._binary(node, b)
        if op in _SOFTMAX:
            return self._softmax(node, b)
        if op in _ARG or op == "TopK" or op in _CLASS_REDUCE:
            return self._class_axis_op(node, b)
        if op == "BatchNormalization":
            return self._batchnorm(node, b)
        if op == "LayerNormalization":
            return self._layernorm(node, b)
        if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            return self._reshape_like(node, b)
        if op == "Concat":
            return self._concat(node, b)
        if op == "Transpose":
            return self._transpose(node, b)
        if op == "Conv":
            return self._pooled_conv(node, b)
        if op == "Gather":
            return self._gather(node, b)
        raise _Reject(node, "op not supported in a dense head")

    def _keep(self, node: onnx.NodeProto, b: _Builder, m: Mapped, replace: dict[str, str] | None = None) -> None:
        """Re-emit ``node`` unchanged but for inputs; all outputs take the mapping ``m``."""
        replace = replace or {}
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:]
        for i in node.input:
            if i in replace:
                new.input.append(replace[i])
            elif i in self.mapped:
                new.input.append(self.mapped[i].name)
            else:
                new.input.append(i)
        b.nodes.append(new)
        for o in node.output:
            if o:
                self.mapped[o] = Mapped(o, m.layout, m.fold)

    # collapse: pool / flatten on the feature map
    def _collapse(self, node: onnx.NodeProto, b: _Builder) -> str | None:
        kind = collapse_kind(self.a, node)
        feat = node.input[0]
        if kind is None:
            if node.op_type == "Flatten":
                raise _Reject(node, f"Flatten with axis={attr(node, 'axis', 1)} mixes the batch and feature axes (need axis=1)")
            raise _Reject(node, "reads the feature map but neither pools it globally nor flattens it")
        if node.op_type == "Flatten" and attr(node, "axis", 1) != 1:
            raise _Reject(node, f"Flatten with axis={attr(node, 'axis', 1)} (need axis=1)")
        order, (c, h, w) = flatten_order(self.a, feat)
        lay = self.a.layout(feat)
        src = self._as_nchw(feat, lay, b)
        self.plan.sources.append(src)
        if kind == "flatten":
            out = self.index.static_shape(node.output[0])
            if out is None or out[1] != c * h * w:
                raise _Reject(node, f"flattens {c}x{h}x{w} to shape {out}, not N x {c * h * w}")
            self.plan.features.append(feat)
            self.plan.windows.append((h, w))
            fold = None if (h, w) == (1, 1) else (order, (c, h, w))
            self.mapped[node.output[0]] = Mapped(src, NCHW, fold)
            return f"removed: the next dense layer reads the {c}x{h}x{w} map as a {h}x{w} window"
        pool_op = "MaxPool" if "Max" in node.op_type else "AveragePool"
        self.plan.features.append(feat)
        if self.mode == "window":
            self.plan.windows.append((h, w))
            dtype = _np_dtype(self.index, feat)
            if pool_op == "AveragePool" and (h, w) != (1, 1) and dtype in _CONV_DTYPES:
                pooled = self._window_average(b, src, c, h, w, dtype)
                after = f"depthwise Conv {h}x{w} of 1/{h * w}, stride 1 (one cell per {h}x{w} feature window)"
            else:
                pooled = self._window_pool(b, pool_op, src, h, w)
                after = f"{pool_op} {h}x{w}, stride 1 (one cell per {h}x{w} feature window)"
        else:
            self.plan.windows.append((1, 1))
            self.plan.pools_dropped += 1
            pooled = src
            after = "removed (dense mode: every feature cell is scored on its own)"
        if kind == "pool+flatten":
            self.mapped[node.output[0]] = Mapped(pooled, NCHW, None)
        else:
            if lay != NCHW:
                (pooled,) = b.node("Transpose", [pooled], "to_layout", perm=perm_to(NCHW, lay))
            self.mapped[node.output[0]] = Mapped(pooled, lay, None)
        return after

    def _window_average(self, b: _Builder, src: str, c: int, h: int, w: int, dtype: np.dtype[Any]) -> str:
        """A stride-1 h x w average as a depthwise Conv with weights 1/(h*w).

        Not an AveragePool: onnxruntime's NCHWc pool divides by zero when its output size is 0,
        and the padded pool that avoids it (``_window_pool``) costs H*W*h*w even when no window
        fits. The Conv computes only the valid windows and refuses a map smaller than its kernel
        with a clean error. Rounding: fl(1/n) adds at most one unit roundoff, the same sign for
        every term, which the bound of the original's mean (gamma_n) already covers with
        LAMBDA*sqrt(n)*u >= u. From opset 9 the weights are a ConstantOfShape (no bytes in the file).
        """
        value = np.asarray([1.0 / (h * w)], dtype=dtype)
        if self.index.opset >= 9:
            (weight,) = b.node("ConstantOfShape", [b.ints("mean_shape", [c, 1, h, w])], "mean_weight",
                               value=numpy_helper.from_array(value, "value"))
        else:
            weight = b.const("mean_weight", np.full((c, 1, h, w), value[0], dtype=dtype))
        (out,) = b.node("Conv", [src, weight], "window_mean", kernel_shape=[h, w], strides=[1, 1],
                        pads=[0, 0, 0, 0], group=c)
        return out

    def _window_pool(self, b: _Builder, pool_op: str, src: str, h: int, w: int) -> str:
        """A stride-1 h x w pool whose own output is never empty (MaxPool; AveragePool in bfloat16).

        onnxruntime's NCHWc pooling kernel divides by zero (SIGFPE, the host process dies) when a
        pool's output size is exactly 0, i.e. when the map is one cell short of the window. So
        the map is first padded by h-1, w-1 at the bottom and right, which makes the pool's output as
        large as its input, and a Slice then drops the windows that reach into the padding (their
        values never matter). A map smaller than the window gives an empty slice; nothing divides
        by zero. The padding is a Pad node, not the pool's own asymmetric ``pads``: onnx.reference
        (1.23) reads a unit-stride MaxPool's pads as [top, bottom, left, right] and gets the shape
        wrong.
        """
        if (h, w) == (1, 1):
            (out,) = b.node(pool_op, [src], "window_pool", kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0])
            return out
        pads = [0, 0, 0, 0, 0, 0, h - 1, w - 1]
        if self.index.opset >= 11:
            (padded,) = b.node("Pad", [src, b.ints("window_pads", pads)], "window_pad")
        else:
            (padded,) = b.node("Pad", [src], "window_pad", pads=pads)
        (pooled,) = b.node(pool_op, [padded], "window_pool", kernel_shape=[h, w], strides=[1, 1],
                           pads=[0, 0, 0, 0])
        # Negative ends, not "to INT_MAX from h-1": tract cannot slice a symbolic dim to INT_MAX.
        axes = [ax for ax, k in ((2, h), (3, w)) if k > 1]
        ends = [1 - k for k in (h, w) if k > 1]
        if self.index.opset >= 10:
            (out,) = b.node("Slice", [pooled, b.ints("starts", [0] * len(axes)), b.ints("ends", ends),
                                      b.ints("axes", axes)], "window_valid")
        else:
            (out,) = b.node("Slice", [pooled], "window_valid", starts=[0] * len(axes), ends=ends, axes=axes)
        return out

    def _as_nchw(self, name: str, lay: Layout, b: _Builder) -> str:
        if lay == NCHW:
            return name
        prod = self.index.producer.get(name)
        if prod is not None and prod.op_type == "Transpose":
            src = prod.input[0]
            info = self.a.info.get(src)
            if info is not None and info.layout == NCHW:
                return src  # undo the exporter's NCHW->NHWC transpose instead of adding another
        (out,) = b.node("Transpose", [name], "to_nchw", perm=perm_to(lay, NCHW))
        return out

    # dense layers
    def _dense(self, node: onnx.NodeProto, b: _Builder) -> str:
        op = node.op_type
        a_name, w_name = node.input[0], node.input[1]
        if op == "Gemm":
            if attr(node, "transA", 0):
                raise _Reject(node, "Gemm with transA=1 puts the batch axis second; cannot slide it")
            trans_b = bool(attr(node, "transB", 0))
            alpha = float(attr(node, "alpha", 1.0))
            beta = float(attr(node, "beta", 1.0))
            c_name = node.input[2] if len(node.input) > 2 else ""
        else:
            trans_b, alpha, beta, c_name = False, 1.0, 1.0, ""
        if a_name not in self.mapped:
            raise _Reject(node, "the feature vector must be the first operand")
        m = self.mapped[a_name]
        if m.layout != NCHW and m.fold is None:
            if op == "MatMul" and m.layout is not None and m.cax == 3:
                self._keep(node, b, m)  # channels-last pooled map: MatMul already acts per position
                return "kept: MatMul on channels-last map acts per position"
            if m.layout is None or self.a.info[a_name].state is not State.FLAT:
                raise _Reject(node, "dense layer on a tensor whose last axis is not the feature axis")
        if not self.index.is_const(w_name):
            raise _Reject(node, "weight is computed from the input, not a constant")
        if self.index.rank(a_name) != 2:
            raise _Reject(node, f"input has rank {self.index.rank(a_name)}, expected N x D")
        wshape = self.index.static_shape(w_name)
        if wshape is None or len(wshape) != 2:
            raise _Reject(node, f"weight '{w_name}' has no static 2-D shape")
        k, d = (wshape[0], wshape[1]) if trans_b else (wshape[1], wshape[0])
        if m.fold is not None:
            order, (c, h, w) = m.fold
            if c * h * w != d:
                raise _Reject(node, f"weight expects {d} features, the window holds {c}x{h}x{w}")
        else:
            order, (c, h, w) = "CHW", (d, 1, 1)
        weight = self._conv_weight(node, b, w_name, trans_b, alpha, order, (k, c, h, w))
        inputs = [m.name, weight]
        post_add: str | None = None
        if c_name:
            bias, scalar = self._conv_bias(node, b, c_name, beta, k)
            if scalar:
                post_add = bias
            else:
                inputs.append(bias)
        outs = [node.output[0]] if post_add is None else None
        (y,) = b.node("Conv", inputs, "conv", outputs=outs, kernel_shape=[h, w], strides=[1, 1],
                      pads=[0, 0, 0, 0], dilations=[1, 1])
        if post_add is not None:
            b.node("Add", [y, post_add], "bias", outputs=[node.output[0]])
        self.mapped[node.output[0]] = Mapped(node.output[0], NCHW, None)
        layout_note = f", weights permuted from {order} order" if order != "CHW" else ""
        return f"Conv {h}x{w} -> {k} channels{layout_note}"

    def _conv_weight(self, node: onnx.NodeProto, b: _Builder, w_name: str, trans_b: bool, alpha: float,
                     order: str, kchw: tuple[int, int, int, int]) -> str:
        k, c, h, w = kchw
        sizes = {"C": c, "H": h, "W": w}
        in_order = [k] + [sizes[ch] for ch in order]
        to_kchw = [0] + [1 + order.index(ch) for ch in "CHW"]
        if self.index.foldable(w_name):
            consumers = self.index.consumers.get(w_name, [])
            if (w_name in self.index.initializers and trans_b and order == "CHW" and alpha == 1.0
                    and len(consumers) == 1 and w_name not in self.index.graph_outputs):
                # The Gemm weight's bytes already are the Conv weight's bytes: change dims only.
                self.plan.retarget.append((w_name, [k, c, h, w]))
                return w_name
            value = self.index.const_value(w_name)
            if value is None:
                raise _Reject(node, f"cannot evaluate constant weight '{w_name}'")
            mat = value if trans_b else value.T
            arr = mat.reshape(in_order).transpose(to_kchw)
            if alpha != 1.0:
                arr = arr * np.asarray(alpha, dtype=arr.dtype)
            return b.const(f"{w_name}_conv", arr.astype(value.dtype, copy=False))
        # A computed weight (ConstantOfShape in the light zoo graphs) stays computed.
        x = w_name
        if not trans_b:
            (x,) = b.node("Transpose", [x], "w_t", perm=[1, 0])
        (x,) = b.node("Reshape", [x, b.ints("w_shape", in_order)], "w_reshape")
        if order != "CHW":
            (x,) = b.node("Transpose", [x], "w_perm", perm=to_kchw)
        if alpha != 1.0:
            (x,) = b.node("Mul", [x, b.const("alpha", np.asarray(alpha, dtype=_np_dtype(self.index, w_name)))],
                          "w_alpha")
        return x

    def _conv_bias(self, node: onnx.NodeProto, b: _Builder, c_name: str, beta: float, k: int) -> tuple[str, bool]:
        if not self.index.is_const(c_name):
            raise _Reject(node, "bias is computed from the input, not a constant")
        shape = self.index.static_shape(c_name)
        if shape is None:
            raise _Reject(node, f"bias '{c_name}' has no static shape")
        numel = int(np.prod(shape)) if shape else 1
        if (numel == k and all(s in (1, k) for s in shape) and k > 1) or (k == 1 and numel == 1 and len(shape) >= 1):
            kind_scalar = False
        elif numel == 1:
            kind_scalar = True
        else:
            raise _Reject(node, f"bias of shape {list(shape)} does not broadcast per output feature")
        dtype = _np_dtype(self.index, c_name)
        if self.index.foldable(c_name):
            value = self.index.const_value(c_name)
            if value is None:
                raise _Reject(node, f"cannot evaluate constant bias '{c_name}'")
            arr = value.reshape(-1 if not kind_scalar else ())
            if beta != 1.0:
                arr = arr * np.asarray(beta, dtype=arr.dtype)
            if (not kind_scalar and c_name in self.index.initializers and beta == 1.0
                    and list(shape) == [k]):
                return c_name, False
            return b.const(f"{c_name}_conv", arr.astype(dtype, copy=False)), kind_scalar
        (x,) = b.node("Reshape", [c_name, b.ints("b_shape", [-1] if not kind_scalar else [1])], "b_reshape")
        if beta != 1.0:
            (x,) = b.node("Mul", [x, b.const("beta", np.asarray(beta, dtype=dtype))], "b_beta")
        return x, kind_scalar

    # per-position ops
    def _unary(self, node: onnx.NodeProto, b: _Builder) -> str | None:
        m = self._m(node.input[0], node)
        replace: dict[str, str] = {}
        pooled = self.a.info[node.input[0]].state is State.POOLED  # 4-D already: slopes broadcast
        if node.op_type == "PRelu" and len(node.input) > 1 and not pooled:
            replace[node.input[1]] = self._per_feature_const(node, b, node.input[1], m)
        self._keep(node, b, m, replace)
        return None if not replace else f"{node.op_type} with slope reshaped per channel"

    def _per_feature_const(self, node: onnx.NodeProto, b: _Builder, name: str, m: Mapped) -> str:
        """Reshape a constant broadcast over N x D to broadcast over the mapped 4-D tensor."""
        if not self.index.is_const(name):
            raise _Reject(node, f"operand '{name}' is neither a head tensor nor a constant")
        shape = self.index.static_shape(name)
        if shape is None:
            raise _Reject(node, f"constant '{name}' has no static shape")
        numel = int(np.prod(shape)) if shape else 1
        if numel == 1:
            return name
        if m.fold is not None:
            raise _Reject(node, "per-feature constant on the flattened window before the first dense layer cannot slide")
        if len(shape) > 2 or shape[-1] != numel:
            raise _Reject(node, f"constant of shape {list(shape)} is not per-feature")
        if self.index.foldable(name):
            value = self.index.const_value(name)
            if value is not None:
                return b.const(f"{name}_4d", value.reshape(1, numel, 1, 1))
        (x,) = b.node("Reshape", [name, b.ints("c_shape", [1, numel, 1, 1])], "c_reshape")
        return x

    def _binary(self, node: onnx.NodeProto, b: _Builder) -> str | None:
        heads = self._head_inputs(node)
        ms = [self._m(h, node) for h in heads]
        m = ms[0]
        for other in ms[1:]:
            if (other.layout, other.fold) != (m.layout, m.fold):
                raise _Reject(node, "operands have different layouts")
        replace: dict[str, str] = {}
        pooled = self.a.info[heads[0]].state is State.POOLED
        for i in node.input:
            if i and i not in heads:
                if pooled:
                    continue
                replace[i] = self._per_feature_const(node, b, i, m)
        self._keep(node, b, m, {k: v for k, v in replace.items() if k != v})
        return "constant reshaped to 1xDx1x1" if any(k != v for k, v in replace.items()) else None

    def _feature_axis(self, node: onnx.NodeProto, m: Mapped, axis: int | None) -> None:
        """Check that ``axis`` of the original op is the feature axis."""
        name = node.input[0]
        rank = self.index.rank(name) or 2
        if axis is None:
            raise _Reject(node, "axis not given")
        ax = axis % rank
        if self.a.info[name].state is State.FLAT:
            if ax != 1:
                raise _Reject(node, f"axis={axis} is not the class axis of an N x K tensor")
        elif ax != m.cax:
            raise _Reject(node, f"axis={axis} is not the channel axis")

    def _sandwich(self, node: onnx.NodeProto, b: _Builder, m: Mapped, attrs_override: dict[str, Any]) -> None:
        """Run ``node`` with the feature axis moved last, then move it back."""
        assert m.layout is not None
        last: Layout = (0, 3, 1, 2)
        (x,) = b.node("Transpose", [m.name], "to_last", perm=perm_to(m.layout, last))
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.input[0] = x
        mids = [self.index.fresh("last") if o else "" for o in node.output]
        del new.output[:]
        new.output.extend(mids)
        for k, v in attrs_override.items():
            for a in list(new.attribute):
                if a.name == k:
                    new.attribute.remove(a)
            new.attribute.append(helper.make_attribute(k, v))
        b.nodes.append(new)
        for mid, o in zip(mids, node.output):
            if o:
                b.node("Transpose", [mid], "from_last", outputs=[o], perm=perm_to(last, m.layout))
                self.mapped[o] = Mapped(o, m.layout, None)

    def _softmax(self, node: onnx.NodeProto, b: _Builder) -> str | None:
        m = self._m(node.input[0], node)
        opset = self.index.opset
        rank = self.index.rank(node.input[0]) or 2
        axis = attr(node, "axis", -1 if opset >= 13 else 1)
        if m.fold is not None:
            raise _Reject(node, "softmax over the flattened window cannot slide")
        if opset >= 13:
            self._feature_axis(node, m, axis)
            self._keep_with_axis(node, b, m, m.cax)
            return f"axis={axis} -> axis={m.cax}" if axis % rank != m.cax or rank != 4 else None
        # Before opset 13 the op flattens its input to 2-D at ``axis``: move the channel axis
        # last so that each cell is normalized on its own.
        shape = self.index.static_shape(node.input[0]) or ()
        ax = axis % rank
        if self.a.info[node.input[0]].state is State.FLAT:
            ok = ax == 1
        else:
            ok = ax <= m.cax and all(shape[i] == 1 for i in range(ax, rank) if i != m.cax)
        if not ok:
            raise _Reject(node, f"axis={axis} does not normalize over the class axis")
        self._sandwich(node, b, m, {"axis": 3})
        return f"axis={axis} -> Transpose, {node.op_type}(axis=3), Transpose (opset {opset} coerces to 2-D)"

    def _keep_with_axis(self, node: onnx.NodeProto, b: _Builder, m: Mapped, axis: int) -> None:
        self._keep(node, b, m)
        new = b.nodes[-1]
        for a in list(new.attribute):
            if a.name == "axis":
                new.attribute.remove(a)
        new.attribute.append(helper.make_attribute("axis", axis))

    def _class_axis_op(self, node: onnx.NodeProto, b: _Builder) -> str | None:
        m = self._m(node.input[0], node)
        if m.fold is not None:
            raise _Reject(node, "reduces over the flattened window; cannot slide")
        op = node.op_type
        rank = self.index.rank(node.input[0]) or 2
        if op in _CLASS_REDUCE:
            axes = attr(node, "axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                axes = self.index.int_list(node.input[1])
            if axes is None or len(axes) != 1:
                raise _Reject(node, "reduction must be over the class axis alone")
            self._feature_axis(node, m, int(axes[0]))
            keep = attr(node, "keepdims", 1)
            self._keep(node, b, m)
            new = b.nodes[-1]
            if attr(node, "axes") is not None:
                for a in list(new.attribute):
                    if a.name == "axes":
                        new.attribute.remove(a)
                new.attribute.append(helper.make_attribute("axes", [m.cax]))
            else:
                new.input[1] = b.ints("axes", [m.cax])
        else:
            axis = attr(node, "axis", 0 if op in _ARG else -1)
            self._feature_axis(node, m, axis)
            keep = attr(node, "keepdims", 1) if op in _ARG else 1
            self._keep_with_axis(node, b, m, m.cax)
        if not keep:
            for o in node.output:
                if o:
                    self.mapped[o] = Mapped(o, None, None)
        return f"axis -> {m.cax}" if rank == 2 else None

    def _batchnorm(self, node: onnx.NodeProto, b: _Builder) -> str | None:
        m = self._m(node.input[0], node)
        if m.fold is not None:
            raise _Reject(node, "normalizes the flattened window; cannot slide")
        if m.layout is not None and m.cax != 1:
            raise _Reject(node, "BatchNormalization on a channels-last map")
        if any(o for o in node.output[1:] if self.index.consumers.get(o)):
            raise _Reject(node, "training-mode outputs are used")
        self._keep(node, b, m)
        del b.nodes[-1].output[1:]
        return None

    def _layernorm(self, node: onnx.NodeProto, b: _Builder) -> str | None:
        m = self._m(node.input[0], node)
        if m.fold is not None:
            raise _Reject(node, "normalizes the flattened window; cannot slide")
        if any(o for o in node.output[1:] if self.index.consumers.get(o)):
            raise _Reject(node, "Mean/InvStdDev outputs are used")
        name = node.input[0]
        rank = self.index.rank(name) or 2
        ax = attr(node, "axis", -1) % rank
        shape = self.index.static_shape(name) or ()
        if self.a.info[name].state is State.FLAT:
            ok = ax == 1
        else:
            ok = ax <= m.cax and all(shape[i] == 1 for i in range(ax, rank) if i != m.cax)
        if not ok:
            raise _Reject(node, f"axis={attr(node, 'axis', -1)} normalizes more than the feature axis")
        if m.cax == 3 and ax == 3:
            self._keep(node, b, m)
            return None
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.output[1:]
        self._sandwich(new, b, m, {"axis": -1})
        return "normalizes over channels: Transpose, LayerNormalization(axis=-1), Transpose"

    def _reshape_like(self, node: onnx.NodeProto, b: _Builder) -> str | None:
        m = self._m(node.input[0], node)
        src = node.input[0]
        in_shape = self.index.static_shape(src)
        out_shape = self.index.static_shape(node.output[0])
        if self.a.info[src].state is State.POOLED and out_shape is not None and len(out_shape) == 2:
            # A pooled N x C x 1 x 1 map flattened to N x C: the 4-D map already is that.
            assert m.layout is not None
            name = self._as_nchw_mapped(m, b)
            self.mapped[node.output[0]] = Mapped(name, NCHW, None)
            return "removed: pooled map is kept 4-D"
        if in_shape is not None and in_shape == out_shape:
            self.mapped[node.output[0]] = m
            return "removed: a no-op at the reference size"
        if (self.a.info[src].state is State.POOLED and in_shape is not None and out_shape is not None
                and len(out_shape) == 1):
            # The dynamo exporter's as_strided: ravel to 1-D, then Gather it back into shape.
            self._raveled[node.output[0]] = (m, in_shape)
            return "removed: ravel undone by the Gather after it"
        raise _Reject(node, f"reshapes the head tensor {in_shape} -> {out_shape}")

    def _gather(self, node: onnx.NodeProto, b: _Builder) -> str | None:
        src = node.input[0]
        if src not in self._raveled:
            raise _Reject(node, "Gather on a head tensor")
        m, shape = self._raveled[src]
        idx = self.index.const_value(node.input[1])
        if idx is None or idx.shape != tuple(shape) or not np.array_equal(idx.reshape(-1), np.arange(idx.size)):
            raise _Reject(node, "Gather reorders the raveled features")
        self.mapped[node.output[0]] = m
        return "removed: identity Gather (as_strided)"

    def _as_nchw_mapped(self, m: Mapped, b: _Builder) -> str:
        assert m.layout is not None
        if m.layout == NCHW:
            return m.name
        (x,) = b.node("Transpose", [m.name], "to_nchw", perm=perm_to(m.layout, NCHW))
        return x

    def _concat(self, node: onnx.NodeProto, b: _Builder) -> str | None:
        heads = self._head_inputs(node)
        if len(heads) != len([i for i in node.input if i]):
            raise _Reject(node, "concatenates a head tensor with a constant")
        ms = [self._m(h, node) for h in heads]
        if any((x.layout, x.fold) != (ms[0].layout, ms[0].fold) or x.fold is not None for x in ms):
            raise _Reject(node, "operands have different layouts")
        self._feature_axis(node, ms[0], attr(node, "axis"))
        self._keep_with_axis(node, b, ms[0], ms[0].cax)
        return None

    def _transpose(self, node: onnx.NodeProto, b: _Builder) -> str | None:
        m = self._m(node.input[0], node)
        if self.a.info[node.input[0]].state is not State.POOLED or m.layout is None:
            raise _Reject(node, "transposes a flattened feature vector")
        lay = self.a.info[node.output[0]].layout
        self._keep(node, b, Mapped(node.output[0], lay, None))
        return None

    def _pooled_conv(self, node: onnx.NodeProto, b: _Builder) -> str | None:
        m = self._m(node.input[0], node)
        if self.a.info[node.input[0]].state is not State.POOLED or m.cax != 1:
            raise _Reject(node, "Conv on a flattened vector")
        wshape = self.index.static_shape(node.input[1])
        if wshape is None or tuple(wshape[2:]) != (1, 1) or any(attr(node, "pads", [0]) or [0]):
            raise _Reject(node, "Conv after the global pool must be 1x1 without padding")
        self._keep(node, b, m)
        return None


def plan_head_rewrite(analysis: Analysis, mode: str = "window") -> Plan:
    return HeadRewriter(analysis, mode).run()


def apply(model: onnx.ModelProto, analysis: Analysis, plan: Plan,
          extra_replacements: dict[int, list[onnx.NodeProto]] | None = None,
          extra_initializers: Sequence[onnx.TensorProto] = ()) -> None:
    """Apply a plan to ``model`` in place: replace head nodes, add weights, drop dead nodes.

    ``extra_*`` carry the trunk plan, keyed like ``plan`` by the analysed graph's node objects.
    """
    g = model.graph
    replacements = dict(extra_replacements or {}) | plan.replacements
    new_nodes: list[onnx.NodeProto] = []
    for node in g.node:
        rep = replacements.get(id(node))
        if rep is None:
            new = onnx.NodeProto()
            new.CopyFrom(node)
            new_nodes.append(new)
        else:
            new_nodes.extend(rep)
    del g.node[:]
    g.node.extend(new_nodes)
    inits = {t.name: t for t in g.initializer}
    for name, dims in plan.retarget:
        t = inits[name]
        del t.dims[:]
        t.dims.extend(dims)
    g.initializer.extend(plan.initializers)
    g.initializer.extend(extra_initializers)
    # Nothing dead stays: the nodes and weights the rewrite replaced (the view subgraph, flattens,
    # a MatMul's weight transposed into a Conv weight) would double a file and make onnxruntime warn.
    live = _live_nodes(g)
    keep = [n for n in g.node if _node_key(n) in live]
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in _inputs_with_subgraphs(n)} | {o.name for o in g.output}
    drop = {t.name for t in g.initializer if t.name not in used}
    if drop:
        kept = [t for t in g.initializer if t.name not in drop]
        del g.initializer[:]
        g.initializer.extend(kept)
        inputs = [i for i in g.input if i.name not in drop]
        del g.input[:]
        g.input.extend(inputs)
    _sync_ir3_inputs(model)
    log.debug("applied plan: %d changes", len(plan.changes))


def _node_key(n: onnx.NodeProto) -> tuple[str, tuple[str, ...]]:
    return (n.op_type, tuple(n.output))


def _inputs_with_subgraphs(n: onnx.NodeProto) -> list[str]:
    """A node's inputs and the outer tensors its subgraphs (If/Loop bodies) read."""
    inner = [i for a in n.attribute if a.type == onnx.AttributeProto.GRAPH for sn in a.g.node for i in sn.input]
    return [*n.input, *inner]


def _live_nodes(g: onnx.GraphProto) -> set[tuple[str, tuple[str, ...]]]:
    producer = {o: n for n in g.node for o in n.output if o}
    reached = walk_back([o.name for o in g.output], producer, inputs_of=_inputs_with_subgraphs)
    return {_node_key(producer[t]) for t in reached if t in producer}


def _sync_ir3_inputs(model: onnx.ModelProto) -> None:
    """IR < 4 lists every initializer as a graph input too: keep those entries in step."""
    if model.ir_version >= 4:
        return
    g = model.graph
    by_name = {i.name: i for i in g.input}
    for t in g.initializer:
        vi = helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        if t.name in by_name:
            by_name[t.name].CopyFrom(vi)
        else:
            g.input.append(vi)
