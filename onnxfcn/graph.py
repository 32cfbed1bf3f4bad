"""A read-only index over an ONNX graph: producers, consumers, constants and static shapes.

Static shapes come from ONNX shape inference run on a *skeleton* of the model: the same nodes,
but every large initializer replaced by a typed graph input, so inference never copies weight
bytes (a VGG16 carries 500 MB of them).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from .errors import UnsupportedModelError

Shape = tuple[int | str | None, ...]

# Initializers at most this large stay in the skeleton: shape tensors, axes, small constants.
_SKELETON_KEEP_BYTES = 4096
# A computed constant is folded to an initializer only if it is not much larger than what it is
# computed from; otherwise (ConstantOfShape weights in the light zoo graphs) it stays computed.
_FOLD_SLACK_BYTES = 1024
_RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """An attribute's value; string attributes come back as str, not bytes."""
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def set_attr(node: onnx.NodeProto, name: str, value: Any) -> None:
    """Set (or replace) an attribute."""
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def softmax_axes(node: onnx.NodeProto, rank: int, opset: int) -> list[int]:
    """The axes a Softmax, LogSoftmax or Hardmax normalizes over: its ``axis`` from opset 13 on;
    before, every axis from ``axis`` on (the input coerced to 2-D there)."""
    axis = attr(node, "axis", -1 if opset >= 13 else 1) % rank
    return [axis] if opset >= 13 else list(range(axis, rank))


def node_label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}->{node.output[0] if node.output else '?'}"


def tensor_nbytes(t: onnx.TensorProto) -> int:
    n = math.prod(int(d) for d in t.dims)
    return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 0


def constant_tensors(graph: onnx.GraphProto, initializers: set[str]) -> set[str]:
    """Every tensor computed from initializers and Constant nodes alone (random ops excepted).
    One forward pass (nodes are in topological order) instead of a recursive walk per query,
    which would recurse as deep as the graph when asked about a trunk tensor."""
    const = set(initializers)
    for node in graph.node:
        if node.op_type in _RANDOM_OPS:
            continue
        if node.op_type == "Constant" or all(not i or i in const for i in node.input):
            const.update(o for o in node.output if o)
    return const


# (model, input shapes, {tensor: dtype or 0}) -> {tensor: (shape, dtype)} for the tensors it could run to.
ShapeProbe = Callable[[onnx.ModelProto, dict[str, Sequence[int]], dict[str, int]], dict[str, tuple[Shape, int]]]


class GraphIndex:
    """Producers, consumers, initializers and static reference-size shapes of one graph."""

    def __init__(self, model: onnx.ModelProto, input_shapes: dict[str, Sequence[int]] | None = None,
                 probe: ShapeProbe | None = None):
        self.model = model
        self.probe = probe
        self.graph = model.graph
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1
        )
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in self.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i in node.input:
                if i:
                    self.consumers.setdefault(i, []).append(node)
        self.graph_outputs = [o.name for o in self.graph.output]
        self._names = set(self.producer) | set(self.initializers) | {i.name for i in self.graph.input}
        self._const = constant_tensors(self.graph, set(self.initializers))
        self._counter = itertools.count()
        self._const_cache: dict[str, np.ndarray | None] = {}
        self.shapes: dict[str, Shape] = {}
        self.dtypes: dict[str, int] = {}
        self._infer(input_shapes or {})

    # ---- names -------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        while True:
            name = f"{hint}__fcn{next(self._counter)}"
            if name not in self._names:
                self._names.add(name)
                return name

    # ---- shapes ------------------------------------------------------------------------
    def _infer(self, input_shapes: dict[str, Sequence[int]], hints: dict[str, Shape] | None = None) -> None:
        skel = skeleton(self.model, input_shapes)
        if hints:
            known = {vi.name for vi in skel.graph.input} | {t.name for t in skel.graph.initializer}
            for name, dims in hints.items():
                if name not in known and self.dtypes.get(name) and all(isinstance(d, int) for d in dims):
                    skel.graph.value_info.append(helper.make_tensor_value_info(name, self.dtypes[name], list(dims)))
        try:
            inferred = shape_inference.infer_shapes(skel, strict_mode=False, data_prop=True)
        except Exception as exc:  # inference errors come in many types
            raise UnsupportedModelError(f"ONNX shape inference failed: {str(exc).splitlines()[0]}") from exc
        g = inferred.graph
        for vi in itertools.chain(g.input, g.value_info, g.output):
            tt = vi.type.tensor_type
            if not vi.type.HasField("tensor_type"):
                continue
            self.dtypes[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in tt.shape.dim
                )
        for name, t in self.initializers.items():
            self.shapes[name] = tuple(int(d) for d in t.dims)
            self.dtypes[name] = t.data_type
        if hints is None and self._resolve_reshapes():
            # Reshapes whose target is computed from Shape (x.view(x.size(0), -1)) that shape
            # inference could not follow: infer again with their output shapes given.
            self._infer(input_shapes, hints=dict(self.shapes))
        if hints is not None or not input_shapes:
            return
        unknown = [o for n in self.graph.node for o in n.output if o and self.static_shape(o) is None]
        if unknown:
            self._probe(input_shapes, unknown)

    def _probe(self, input_shapes: dict[str, Sequence[int]], names: list[str]) -> None:
        """Shapes that inference left open, from the caller's probe (an onnxruntime run at the
        reference size: ``runtime.probe_shapes``); the index itself never runs a model."""
        if self.probe is None:
            return
        for name, (shape, dtype) in self.probe(self.model, input_shapes, {n: self.dtypes.get(n, 0) for n in names}).items():
            self.shapes[name] = shape
            if not self.dtypes.get(name):
                self.dtypes[name] = dtype

    def _resolve_reshapes(self) -> bool:
        found = False
        for node in self.graph.node:
            if node.op_type != "Reshape" or len(node.input) < 2:
                continue
            out = self.shapes.get(node.output[0])
            if out is not None and all(isinstance(d, int) for d in out):
                continue
            src = self.static_shape(node.input[0])
            target = self.shape_value(node.input[1]) if src is not None else None
            if src is None or target is None:
                continue
            values = [int(v) for v in np.asarray(target).reshape(-1)]
            if any(v == 0 for v in values[len(src):]) or any(v < -1 for v in values) or values.count(-1) > 1:
                continue  # not a valid target for this input: shape inference or the runtime says why
            dims = [int(src[k]) if v == 0 and not attr(node, "allowzero", 0) else v for k, v in enumerate(values)]
            if dims.count(-1) == 1:
                known = math.prod(int(d) for d in dims if d != -1)
                dims[dims.index(-1)] = math.prod(int(d) for d in src) // max(known, 1)
            self.shapes[node.output[0]] = tuple(dims)
            found = True
        return found

    def shape(self, name: str) -> Shape | None:
        return self.shapes.get(name)

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        s = self.shapes.get(name)
        if s is None or not all(isinstance(d, int) for d in s):
            return None
        return tuple(int(d) for d in s)  # type: ignore[arg-type]

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    # ---- constants ---------------------------------------------------------------------
    def is_const(self, name: str) -> bool:
        """True when the tensor depends on no graph input (initializers excepted)."""
        return not name or name in self._const

    def const_leaves_nbytes(self, name: str) -> int:
        total, stack, seen = 0, [name], set()
        while stack:
            n = stack.pop()
            if not n or n in seen:
                continue
            seen.add(n)
            if n in self.initializers:
                total += tensor_nbytes(self.initializers[n])
                continue
            node = self.producer.get(n)
            if node is None:
                continue
            if node.op_type == "Constant":
                total += sum(tensor_nbytes(a.t) for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
            stack.extend(node.input)
        return total

    def foldable(self, name: str) -> bool:
        """Constant, and cheap to store: not a large tensor computed from a tiny one."""
        if not self.is_const(name):
            return False
        if name in self.initializers:
            return True
        shape = self.static_shape(name)
        dtype = self.dtypes.get(name)
        if shape is None or not dtype:
            return False
        nbytes = math.prod(int(d) for d in shape) * helper.tensor_dtype_to_np_dtype(dtype).itemsize
        return nbytes <= 2 * self.const_leaves_nbytes(name) + _FOLD_SLACK_BYTES

    def const_value(self, name: str) -> np.ndarray | None:
        """Value of a constant tensor, evaluating the subgraph that computes it (memoized)."""
        if name in self._const_cache:
            return self._const_cache[name]
        value: np.ndarray | None = None
        if name in self.initializers:
            value = numpy_helper.to_array(self.initializers[name])
        elif self.is_const(name) and self.producer[name].op_type == "DequantizeLinear":
            value = self._dequantize(self.producer[name])
        elif self.is_const(name):
            value = self._evaluate(name)
        self._const_cache[name] = value
        return value

    def _dequantize(self, node: onnx.NodeProto) -> np.ndarray | None:
        """(q - zero_point) * scale in the scale's precision, per tensor or along ``axis``: the
        reference evaluator has no DequantizeLinear before opset 19, which QDQ models use."""
        q, scale = self.const_value(node.input[0]), self.const_value(node.input[1])
        zp = self.const_value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if q is None or scale is None or attr(node, "block_size", 0):
            return None
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[attr(node, "axis", 1) % q.ndim] = scale.size
        zero = np.zeros(1, np.int64) if zp is None else zp.astype(np.int64).reshape(shape if zp.size > 1 else ())
        return ((q.astype(np.int64) - zero).astype(scale.dtype) * scale.reshape(shape if scale.size > 1 else ()))

    def shape_value(self, name: str) -> np.ndarray | None:
        """Value of a tensor computed from constants and from Shape of statically shaped tensors."""
        try:
            return self._evaluate(name, shapes=True)
        except KeyError:
            return None

    def _evaluate(self, name: str, shapes: bool = False) -> np.ndarray | None:
        from onnx.reference import ReferenceEvaluator

        nodes: list[onnx.NodeProto] = []
        inits: dict[str, onnx.TensorProto] = {}
        seen: set[str] = set()

        def visit(n: str) -> None:
            if not n or n in seen:
                return
            seen.add(n)
            if n in self.initializers:
                inits[n] = self.initializers[n]
                return
            node = self.producer[n]
            if shapes and node.op_type == "Shape":
                static = self.static_shape(node.input[0])
                if static is None:
                    raise KeyError(node.input[0])
                dims = list(static)[attr(node, "start", 0): attr(node, "end", None)]
                inits[n] = numpy_helper.from_array(np.asarray(dims, dtype=np.int64), n)
                return
            for i in node.input:
                visit(i)
            nodes.append(node)

        visit(name)
        graph = helper.make_graph(
            nodes, "const", [], [helper.make_tensor_value_info(name, 0, None)], list(inits.values())
        )
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        model.ir_version = self.model.ir_version
        try:
            (out,) = ReferenceEvaluator(model).run(None, {})
        except Exception:  # an op the reference runtime lacks: not a foldable constant
            return None
        return np.asarray(out)

    def int_list(self, name: str) -> list[int] | None:
        v = self.const_value(name) if name else None
        return None if v is None else [int(x) for x in np.asarray(v).reshape(-1)]

    def axes(self, node: onnx.NodeProto) -> list[int] | None:
        """A node's ``axes``: the attribute (older opsets) or the constant second input; None where
        neither gives them (absent, or computed)."""
        axes = attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.int_list(node.input[1])
        return None if axes is None else list(axes)

    def ancestors(self, names: Iterable[str]) -> set[str]:
        """Every tensor the given tensors depend on, themselves included."""
        return walk_back(names, self.producer)


def walk_back(starts: Iterable[str], producer: Mapping[str, onnx.NodeProto],
              follow: Callable[[str], bool] = lambda _: True,
              inputs_of: Callable[[onnx.NodeProto], Iterable[str]] = lambda n: n.input) -> set[str]:
    """Tensors reached from ``starts`` through their producers, entering only where ``follow``."""
    seen: set[str] = set()
    stack = list(starts)
    while stack:
        t = stack.pop()
        if not t or t in seen or not follow(t):
            continue
        seen.add(t)
        node = producer.get(t)
        if node is not None:
            stack.extend(inputs_of(node))
    return seen


def skeleton(model: onnx.ModelProto, input_shapes: dict[str, Sequence[int]],
             keep_output_shapes: bool = False) -> onnx.ModelProto:
    """The model without large weight bytes, for shape inference. Inputs may be re-shaped."""
    g = model.graph
    small: list[onnx.TensorProto] = []
    typed: list[onnx.ValueInfoProto] = []
    init_names = set()
    for t in g.initializer:
        init_names.add(t.name)
        if tensor_nbytes(t) <= _SKELETON_KEEP_BYTES and t.data_location != onnx.TensorProto.EXTERNAL:
            small.append(t)
        else:
            typed.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    inputs = []
    for vi in g.input:
        if vi.name in init_names:
            continue
        if vi.name in input_shapes:
            vi = helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, list(input_shapes[vi.name]))
        inputs.append(vi)
    # Output shapes and value_info are dropped for inference: they may be stale (the head's
    # outputs change rank), and inference re-derives them. The checker needs them kept.
    if keep_output_shapes:
        outputs = list(g.output)
    else:
        outputs = [helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, None) for o in g.output]
    graph = helper.make_graph(list(g.node), g.name or "g", inputs + typed, outputs, small)
    skel = helper.make_model(graph, opset_imports=list(model.opset_import))
    skel.ir_version = max(model.ir_version, 4)
    skel.functions.extend(model.functions)
    return skel
