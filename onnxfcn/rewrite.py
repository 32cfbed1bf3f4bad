"""The head rewrite's shared parts: what a plan holds, the node builder, the context every rule
works in, and applying a plan to a model.

Every head tensor of the original graph (N x D vectors, or N x C x 1 x 1 pooled maps) gets a
4-D counterpart in the new graph that holds one such vector per output cell (``Mapped``).
Rewritten nodes keep their original output names, so graph outputs and the names pipelines use
stay the same. The rules (``onnxfcn.rules``) decide per construct; ``matcher`` walks the heads.
The rewrite is planned first and applied after (``apply_plan``): ``inspect`` shows a plan without
touching the model, and a plan with a refused node changes nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import GraphIndex, set_attr, walk_back
from .head import NCHW_AXES, Analysis, Layout, TensorState, perm_to
from .stride import Edit, apply_edits

log = logging.getLogger(__name__)

MODES = ("window", "dense")


@dataclass
class Mapped:
    """The new-graph counterpart of a head tensor."""

    name: str
    layout: Layout | None  # axis positions of (N, C, H, W); None for rank-3 (N, H, W) results
    window: tuple[str, tuple[int, int, int]] | None = None  # a flattened window: its order and (C, h, w)

    @property
    def channel_axis(self) -> int:
        assert self.layout is not None
        return self.layout[1]


@dataclass
class Change:
    node: str
    before: str
    after: str


@dataclass
class Blocker:
    """A head node no rule can rewrite, and why."""

    node: str
    op: str
    reason: str


@dataclass
class Plan:
    mode: str
    # Replacement nodes keyed by the original node's position in graph.node.
    replacements: dict[int, list[onnx.NodeProto]] = field(default_factory=dict)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    retarget: list[tuple[str, list[int]]] = field(default_factory=list)  # initializer dims only
    changes: list[Change] = field(default_factory=list)
    blockers: list[Blocker] = field(default_factory=list)
    outputs: dict[str, Mapped] = field(default_factory=dict)
    windows: list[tuple[int, int]] = field(default_factory=list)  # feature-map window per head
    features: list[str] = field(default_factory=list)
    # The tensor each head reads in the converted graph (NCHW): verify's feature check reads it there.
    sources: list[str] = field(default_factory=list)
    pools_dropped: int = 0  # dense mode: global pools removed (none: the head slides windows anyway)


class Reject(Exception):
    """Raised while building, for what only the build finds out (a constant that will not
    evaluate); the checks in the rules catch everything else before anything is built."""

    def __init__(self, node: onnx.NodeProto, reason: str) -> None:
        super().__init__(reason)
        self.node = node
        self.reason = reason


class Builder:
    """Collects the nodes and weights that replace one matched construct."""

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


def np_dtype(index: GraphIndex, name: str) -> np.dtype[Any]:
    dt = index.dtypes.get(name) or onnx.TensorProto.FLOAT
    return np.dtype(helper.tensor_dtype_to_np_dtype(dt))


def kernel_layout(order: str, k: int, chw: tuple[int, int, int]) -> tuple[list[int], list[int]]:
    """For a dense weight with K output rows over a window flattened in ``order`` ("CHW", "HWC"):
    (its shape as K x the flatten's axes, the perm from that shape to the Conv's K x C x h x w)."""
    sizes = dict(zip("CHW", chw))
    return [k] + [sizes[ch] for ch in order], [0] + [1 + order.index(ch) for ch in "CHW"]


def conv_kernel(mat: np.ndarray, order: str, chw: tuple[int, int, int]) -> np.ndarray:
    """A K x D dense weight matrix (rows: output features) as a K x C x h x w Conv kernel: the same
    values, reordered, never converted."""
    shape, perm = kernel_layout(order, mat.shape[0], chw)
    return np.ascontiguousarray(mat.reshape(shape).transpose(perm))


def window_mismatch(m: Mapped, d: int) -> str | None:
    """Why a dense layer over ``d`` features cannot read ``m``'s flattened window; None if it can."""
    if m.window is None:
        return None
    _, (c, h, w) = m.window
    return None if c * h * w == d else f"weight expects {d} features, the window holds {c}x{h}x{w}"


class HeadContext:
    """What the rules share while one model's heads are planned: the analysis, the mode, the plan
    being built and the mapping from original head tensors to their 4-D counterparts."""

    def __init__(self, analysis: Analysis, mode: str) -> None:
        self.analysis = analysis
        self.index = analysis.index
        self.mode = mode
        self.plan = Plan(mode)
        self.mapped: dict[str, Mapped] = {}

    # ---- reading the analysis ----------------------------------------------------------
    def state(self, name: str) -> TensorState | None:
        return self.analysis.state(name)

    def rank(self, name: str) -> int:
        return self.index.rank(name) or 2

    def head_inputs(self, node: onnx.NodeProto) -> list[str]:
        """The node's inputs that are head tensors (pooled maps or feature vectors)."""
        return [i for i in node.input if i and self.state(i) in (TensorState.POOLED, TensorState.FLAT)]

    def unmapped(self, node: onnx.NodeProto, names: Sequence[str] | None = None) -> str | None:
        """A reason when one of ``names`` (default: the first input) has no counterpart yet."""
        for name in names if names is not None else node.input[:1]:
            if name not in self.mapped:
                return f"input '{name}' is not a head tensor the rewrite can follow"
        return None

    def per_cell_input(self, node: onnx.NodeProto, what: str) -> tuple[Mapped | None, str | None]:
        """(the counterpart of the node's first input, None) when the op can act on each cell's
        vector alone; else (None, why not). ``what``: what the op does over a vector ("normalizes")."""
        if (why := self.unmapped(node)) is not None:
            return None, why
        m = self.mapped[node.input[0]]
        if m.window is not None:
            return None, f"{what} the flattened window; cannot slide"
        return m, None

    def feature_axis_reason(self, node: onnx.NodeProto, m: Mapped, axis: int | None) -> str | None:
        """Why ``axis`` of the original op is not the feature axis; None when it is."""
        name = node.input[0]
        if axis is None:
            return "axis not given"
        ax = axis % self.rank(name)
        if self.state(name) is TensorState.FLAT:
            return None if ax == 1 else f"axis={axis} is not the class axis of an N x K tensor"
        return None if ax == m.channel_axis else f"axis={axis} is not the channel axis"

    def per_feature_reason(self, name: str, m: Mapped) -> str | None:
        """Why constant ``name``, broadcast over N x D, cannot broadcast over the 4-D counterpart."""
        if not self.index.is_const(name):
            return f"operand '{name}' is neither a head tensor nor a constant"
        shape = self.index.static_shape(name)
        if shape is None:
            return f"constant '{name}' has no static shape"
        numel = math.prod(int(d) for d in shape)
        if numel == 1:
            return None
        if m.window is not None:
            return "per-feature constant on the flattened window before the first dense layer cannot slide"
        if len(shape) > 2 or shape[-1] != numel:
            return f"constant of shape {list(shape)} is not per-feature"
        return None

    # ---- building ------------------------------------------------------------------------
    def keep(self, node: onnx.NodeProto, b: Builder, m: Mapped, replace: dict[str, str] | None = None) -> None:
        """Copy ``node``, reading the 4-D counterparts of its head inputs."""
        replace = replace or {}
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:]
        for i in node.input:
            if i in replace:
                new.input.append(replace[i])
            else:
                new.input.append(self.mapped[i].name if i in self.mapped else i)
        b.nodes.append(new)
        for o in node.output:
            if o:
                self.mapped[o] = Mapped(o, m.layout, m.window)

    def keep_with_axis(self, node: onnx.NodeProto, b: Builder, m: Mapped, axis: int) -> None:
        self.keep(node, b, m)
        set_attr(b.nodes[-1], "axis", axis)

    def per_feature_const(self, node: onnx.NodeProto, b: Builder, name: str, m: Mapped) -> str:
        """Constant ``name`` reshaped to broadcast over the 4-D counterpart (checked first)."""
        shape = self.index.static_shape(name) or ()
        numel = math.prod(int(d) for d in shape)
        if numel == 1:
            return name
        if self.index.foldable(name):
            value = self.index.const_value(name)
            if value is not None:
                return b.const(f"{name}_4d", value.reshape(1, numel, 1, 1))
        (x,) = b.node("Reshape", [name, b.ints("c_shape", [1, numel, 1, 1])], "c_reshape")
        return x

    def channels_last(self, node: onnx.NodeProto, b: Builder, m: Mapped, attrs: dict[str, Any]) -> None:
        """Run ``node`` with the feature axis moved last (``attrs`` set on it), then move it back."""
        assert m.layout is not None
        last: Layout = (0, 3, 1, 2)
        (x,) = b.node("Transpose", [m.name], "to_last", perm=perm_to(m.layout, last))
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.input[0] = x
        mids = [self.index.fresh("last") if o else "" for o in node.output]
        del new.output[:]
        new.output.extend(mids)
        for k, v in attrs.items():
            set_attr(new, k, v)
        b.nodes.append(new)
        for mid, o in zip(mids, node.output):
            if o:
                b.node("Transpose", [mid], "from_last", outputs=[o], perm=perm_to(last, m.layout))
                self.mapped[o] = Mapped(o, m.layout, None)

    def as_nchw(self, name: str, layout: Layout, b: Builder) -> str:
        """``name`` in NCHW: the exporter's own NCHW source when it transposed to NHWC, else a Transpose."""
        if layout == NCHW_AXES:
            return name
        prod = self.index.producer.get(name)
        if prod is not None and prod.op_type == "Transpose":
            src = prod.input[0]
            info = self.analysis.info.get(src)
            if info is not None and info.layout == NCHW_AXES:
                return src  # undo the exporter's NCHW->NHWC transpose instead of adding another
        (out,) = b.node("Transpose", [name], "to_nchw", perm=perm_to(layout, NCHW_AXES))
        return out


def apply_plan(model: onnx.ModelProto, plan: Plan,
               extra_replacements: dict[int, list[onnx.NodeProto]] | None = None,
               extra_initializers: Sequence[onnx.TensorProto] = (), edits: dict[str, Edit] | None = None) -> None:
    """Apply a plan to ``model`` in place: replace head nodes, add weights, drop dead nodes.

    ``extra_*`` carry the trunk plan, keyed like ``plan`` by node position in ``graph.node``, so
    a plan made on one copy of a model applies to another. ``edits``: the output stride's.
    """
    g = model.graph
    replacements = dict(extra_replacements or {}) | plan.replacements
    new_nodes: list[onnx.NodeProto] = []
    for position, node in enumerate(g.node):
        rep = replacements.get(position)
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
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    apply_edits(g, edits or {}, opset)
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
