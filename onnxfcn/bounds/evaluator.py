"""``HeadEvaluator``: the original head's nodes evaluated in float64, each by its rounding rule
(``RULES``), every tensor carrying its bounds (``Bounded``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import GraphIndex, node_label, tensor_nbytes
from .core import _BIG_CONST, _LAZY_BYTES, Bounded, NoBoundError, gamma, unit_roundoff


class HeadEvaluator:
    """The original head's nodes, evaluated in float64 with rounding-error bounds."""

    def __init__(self, index: GraphIndex, nodes: list[onnx.NodeProto], ref_batch: int, dtype: Any) -> None:
        self.index = index
        self.nodes = nodes
        self.ref_batch = ref_batch
        self.batch = ref_batch
        self.u = unit_roundoff(dtype)
        self.tiny = 4 * float(np.finfo(np.float32 if np.dtype(dtype).itemsize >= 4 else np.float16).tiny)
        self._consts: dict[str, np.ndarray] = {}
        self._lazy: dict[str, tuple[onnx.TensorProto, tuple[int, ...]]] = {}
        self._loaded: dict[str, np.ndarray] = {}  # lazy weights handed over by preload
        unsupported = [n for n in nodes if n.op_type not in RULES]
        if unsupported:
            n = unsupported[0]
            raise NoBoundError(f"no rounding model for {n.op_type} ({node_label(n)})")
        # Constant operands are read now: the caller may rewrite the graph in place afterwards.
        # Large float initializers (a VGG16's 411 MB first layer) are not copied: the rewrite
        # changes an initializer's dims in place at most (a dense weight reused as a Conv weight),
        # never its data, so they are read when a run needs them, in their original shape.
        for node in nodes:
            for i in node.input:
                t = self.index.initializers.get(i) if i else None
                if (t is not None and tensor_nbytes(t) >= _LAZY_BYTES and t.HasField("raw_data")
                        and t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)):
                    self._lazy[i] = (t, tuple(int(d) for d in t.dims))
                    continue
                if i and self.index.is_const(i):
                    v = self.index.const_value(i)
                    if v is None:
                        raise NoBoundError(f"cannot evaluate constant '{i}' of {node_label(node)}")
                    self._consts[i] = v

    def preload(self, arrays: dict[str, np.ndarray]) -> None:
        """Take the large weights from ``arrays``, values already read from this same graph before
        any rewrite (a light session's, ``runtime.session_weights``; verify's cut-out head's feeds),
        instead of reading them again at run time."""
        for name, (t, dims) in self._lazy.items():
            a = arrays.get(name)
            if a is not None and a.size == int(np.prod(dims)) and a.dtype == onnx.helper.tensor_dtype_to_np_dtype(t.data_type):
                self._loaded[name] = a.reshape(dims)

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str],
            feed_errors: dict[str, np.ndarray] | None = None) -> dict[str, Bounded]:
        """Evaluate the head on ``feeds`` (feature maps); ``feed_errors`` bounds their own errors."""
        errs = feed_errors or {}
        env: dict[str, Bounded] = {k: Bounded.exact(v, errs.get(k)) for k, v in feeds.items()}
        self.batch = next(iter(feeds.values())).shape[0]
        for node in self.nodes:
            ins = [self._get(env, i) if i else None for i in node.input]
            try:
                outs = RULES[node.op_type](self, node, ins)
            except (ValueError, IndexError, KeyError, TypeError) as exc:
                raise NoBoundError(f"cannot evaluate {node.op_type} ({node_label(node)}): {exc}") from exc
            for name, b in zip(node.output, outs):
                if name:
                    env[name] = Bounded(b.value, b.det + self.tiny, b.rss + self.tiny)
        missing = [o for o in outputs if o not in env]
        if missing:
            raise NoBoundError(f"head does not compute {missing[0]}")
        return {o: env[o] for o in outputs}

    def _get(self, env: dict[str, Bounded], name: str) -> Bounded | None:
        if name in env:
            return env[name]
        if name in self._lazy:
            t, dims = self._lazy[name]
            v = self._loaded[name] if name in self._loaded else numpy_helper.to_array(t).reshape(dims)
            if v.size >= _BIG_CONST:
                return Bounded(v, np.zeros(()), np.zeros(()))
            return Bounded.exact(v, np.zeros(()))
        if name in self._consts:
            v = self._consts[name]
            if v.size >= _BIG_CONST and v.dtype.kind == "f":
                # A dense layer's weight stays in its own (exactly representable) type; the dense
                # rules convert it to float64 a block at a time (VGG16's first layer: 822 MB whole).
                return Bounded(v, np.zeros(()), np.zeros(()))
            return Bounded.exact(v, np.zeros(()))
        return None  # a shape operand: the rules read static shapes instead

    def out_shape(self, name: str) -> list[int]:
        """A head tensor's shape with this batch: its reference shape with the batch swapped in."""
        s = self.index.static_shape(name)
        if s is None:
            raise NoBoundError(f"no static shape for '{name}'")
        shape = list(s)
        if len(shape) == 1:  # a raveled N*D vector (dynamo's as_strided): kept with its batch axis
            return [self.batch, shape[0] // max(self.ref_batch, 1)]
        if shape[0] == self.ref_batch:
            shape[0] = self.batch
        return shape

    def g(self, n: int) -> float:
        return gamma(n, self.u)

    def rounding(self, n: int, mag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(worst case, scale) of the rounding of sums of n terms whose |terms| add up to mag."""
        return self.g(n) * mag, math.sqrt(max(n, 1)) * self.u * mag


BoundRule = Callable[[HeadEvaluator, onnx.NodeProto, list[Bounded | None]], list[Bounded]]
# op type -> its rounding rule; filled by ``dense.py`` and ``ops.py``, and by head rules that add an
# op (``rules/dense.py``: Einsum)
RULES: dict[str, BoundRule] = {}


def register_bound(op: str, rule: BoundRule) -> None:
    """The rounding rule for a head op."""
    RULES[op] = rule
