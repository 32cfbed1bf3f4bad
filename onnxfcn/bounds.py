"""The original head in float64, with a bound on the rounding error of any float evaluation of it.

The checks compare a converted model with the *exact* result of the original classifier's head on
the same feature map, not with ``rtol * max|y|``. This module evaluates the original's head nodes
in float64 (numpy) and carries, for every element, how far a float evaluation (in the model's own
dtype, in any summation order) can be from that exact value, in two ways at once:

- ``det``, a worst case that holds for any rounding: Higham's ``gamma_n = n u / (1 - n u)`` times
  ``sum|w_i x_i|`` for a dot product or sum of ``n`` terms, with input errors carried through
  ``|W|``;
- ``rss``, a scale under the model of Higham and Mary ("A new approach to probabilistic rounding
  error analysis", SIAM J. Sci. Comput. 41, 2019): rounding errors are independent and bounded by
  ``u`` times what they round, so each dot product adds a sub-Gaussian error of scale
  ``sqrt(n) u sum|w_i x_i|``, and errors carried through a dense layer add in quadrature,
  ``sqrt(sum w_i^2 rss_i^2)``. Scales of independent errors add in quadrature; where errors may be
  correlated (two operands of one node) they add linearly.

The bound used is ``min(det, LAMBDA * rss)``. By Hoeffding's inequality the error exceeds
``LAMBDA * rss`` with probability below ``2 exp(-LAMBDA^2 / 2)`` = 4e-22 per element for
``LAMBDA = 10``. Nonlinear ops (activations, softmax) push the interval ``[x - e, x + e]``
through the function (exact for monotone functions) and return to a scale by dividing by
``LAMBDA``. Elementwise ops round once (1 ulp), or ``TRANSCENDENTAL_ULPS`` for exp, tanh, erf,
... whose vectorized kernels are not correctly rounded. Softmax errors are ``p (exp(2 e) - 1)``;
arg-max and top-k indices may differ only where two candidates are within ``2 e`` (their bound
is then infinite). Flushed subnormals add an absolute ``4 * tiny`` of the dtype.

A head op without a rule raises :class:`NoBoundError`; the checks then fall back to a relative
tolerance and say so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import GraphIndex, attr, node_label, tensor_nbytes

LAMBDA = 10.0
TRANSCENDENTAL_ULPS = 128.0
_LAZY_BYTES = 16 * 2**20  # initializers this large are read at run time, not copied in advance
_BIG_CONST = 2**20  # elements: constants this large are read in float64 blocks, never whole
# float64 weight columns converted at a time (VGG's 25088x4096 layer: 822 MB whole): per row of
# the input, up to a cap. A few rows make the products memory-bound, and blocks that stay in the
# cache are 3x faster than 64 MB ones (VGG16's head, batch 2: 0.16 s against 0.50 s); many rows
# make them compute-bound, and BLAS wants wide blocks (400 rows: 1.9 s at 64 MB, 11 s at 1 MB).
_BLOCK_BYTES_PER_ROW = 2**19
_BLOCK_BYTES_MIN, _BLOCK_BYTES_MAX = 2**20, 64 * 2**20


class NoBoundError(Exception):
    """The head holds an op this module has no rounding rule for."""


@dataclass
class Bounded:
    """A tensor's exact (float64) value, a worst-case error bound and a probabilistic error scale."""

    value: np.ndarray
    det: np.ndarray
    rss: np.ndarray

    @property
    def err(self) -> np.ndarray:
        """The bound a float evaluation stays within: min(worst case, LAMBDA * scale)."""
        return np.minimum(self.det, LAMBDA * self.rss)

    @classmethod
    def exact(cls, value: np.ndarray, err: np.ndarray | None = None) -> Bounded:
        e = np.zeros(np.shape(value)) if err is None else _f64(err)
        return cls(_f64(value), e, e)

    @classmethod
    def from_bounds(cls, value: np.ndarray, det: np.ndarray, likely: np.ndarray) -> Bounded:
        """From a worst case and a high-probability bound (after a nonlinear op)."""
        return cls(value, det, likely / LAMBDA)


def unit_roundoff(dtype: Any) -> float:
    dt = np.dtype(dtype)
    if dt.name == "bfloat16" or str(dt) == "bfloat16":
        return 2.0**-8
    return float(np.finfo(dt).eps) / 2 if dt.kind == "f" else 2.0**-24


def gamma(n: int, u: float) -> float:
    """Higham's deterministic bound on the relative error (to sum|terms|) of a sum of n terms."""
    n = max(int(n), 1)
    return n * u / (1 - n * u) if n * u < 1 else math.inf


def _f64(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


_MONOTONE: dict[str, Callable[[np.ndarray, onnx.NodeProto], np.ndarray]] = {
    "Relu": lambda x, n: np.maximum(x, 0.0),
    "LeakyRelu": lambda x, n: np.where(x < 0, attr(n, "alpha", 0.01) * x, x),
    "Elu": lambda x, n: np.where(x < 0, attr(n, "alpha", 1.0) * np.expm1(np.minimum(x, 0)), x),
    "Selu": lambda x, n: attr(n, "gamma", 1.0507009873554805) * np.where(
        x <= 0, attr(n, "alpha", 1.6732632423543772) * np.expm1(np.minimum(x, 0)), x),
    "Celu": lambda x, n: np.maximum(x, 0) + np.minimum(0, attr(n, "alpha", 1.0) * np.expm1(np.minimum(x, 0) / attr(n, "alpha", 1.0))),
    "Sigmoid": lambda x, n: 0.5 * (1 + np.tanh(0.5 * x)),
    "Tanh": lambda x, n: np.tanh(x),
    "HardSigmoid": lambda x, n: np.clip(attr(n, "alpha", 0.2) * x + attr(n, "beta", 0.5), 0, 1),
    "Softplus": lambda x, n: np.logaddexp(0, x),
    "Softsign": lambda x, n: x / (1 + np.abs(x)),
    "ThresholdedRelu": lambda x, n: np.where(x > attr(n, "alpha", 1.0), x, 0.0),
    "Shrink": lambda x, n: np.where(x < -attr(n, "lambd", 0.5), x + attr(n, "bias", 0.0),
                                    np.where(x > attr(n, "lambd", 0.5), x - attr(n, "bias", 0.0), 0.0)),
    "Exp": lambda x, n: np.exp(x),
    "Log": lambda x, n: np.log(x),
    "Sqrt": lambda x, n: np.sqrt(x),
    "Erf": lambda x, n: _erf(x),
    "Floor": lambda x, n: np.floor(x),
    "Ceil": lambda x, n: np.ceil(x),
    "Round": lambda x, n: np.round(x),
    "Sign": lambda x, n: np.sign(x),
}
# Not monotone: carried with a Lipschitz constant instead of the interval's ends.
_LIPSCHITZ: dict[str, tuple[float, Callable[[np.ndarray, onnx.NodeProto], np.ndarray]]] = {
    "Abs": (1.0, lambda x, n: np.abs(x)),
    "HardSwish": (1.5, lambda x, n: x * np.clip(x / 6 + 0.5, 0, 1)),
    "Gelu": (1.13, lambda x, n: 0.5 * x * (1 + _erf(x / math.sqrt(2)))
             if attr(n, "approximate", "none") == "none"
             else 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))),
    "Mish": (1.09, lambda x, n: x * np.tanh(np.logaddexp(0, x))),
}
_LINEAR_UNARY = {"Identity", "Dropout", "Neg"}
_EXACT = {"Relu", "Abs", "Floor", "Ceil", "Round", "Sign", "ThresholdedRelu"}
_TRANSCENDENTAL = {"Elu", "Selu", "Celu", "Sigmoid", "Tanh", "Softplus", "Exp", "Log", "Erf", "Gelu", "Mish",
                   "Softsign", "Sqrt"}


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
        unsupported = [n for n in nodes if n.op_type not in _RULES]
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
                outs = _RULES[node.op_type](self, node, ins)
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


Rule = Callable[[HeadEvaluator, onnx.NodeProto, list[Bounded | None]], list[Bounded]]


def _arg(b: Bounded | None) -> Bounded:
    assert b is not None
    return b


def _const(b: Bounded | None) -> np.ndarray:
    return _arg(b).value


def _full(b: Bounded) -> tuple[np.ndarray, np.ndarray]:
    shape = b.value.shape
    return np.broadcast_to(b.det, shape), np.broadcast_to(b.rss, shape)


def _dense(ev: HeadEvaluator, x: Bounded, w: np.ndarray, alpha: float = 1.0
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x @ w over x's last axis: (value, carried worst case, carried scale, sum |x||w|), w in blocks."""
    d, k = w.shape
    lead = x.value.shape[:-1]
    xv = x.value.reshape(-1, d)
    block_bytes = min(max(_BLOCK_BYTES_PER_ROW * xv.shape[0], _BLOCK_BYTES_MIN), _BLOCK_BYTES_MAX)
    blk = max(1, block_bytes // (8 * max(d, 1)))
    xa = np.abs(xv)
    xdet, xrss = (a.reshape(-1, d) for a in _full(x))
    carried = bool(np.any(xdet)) or bool(np.any(xrss))
    xrss2 = xrss * xrss if carried else xrss
    # Carried errors the same across a row (the floor every node adds, a per-sample trunk
    # allowance) need column sums of |w| and w*w, not two more products with every row.
    per_row = carried and bool(np.all(xdet == xdet[:, :1])) and bool(np.all(xrss2 == xrss2[:, :1]))
    val, det, rss, mag = (np.zeros((xv.shape[0], k)) for _ in range(4))
    xa32 = _up_to_f32(xa) if w.dtype == np.float32 else None
    for j in range(0, k, blk):
        wj = w[:, j:j + blk]
        wb = np.asarray(wj, dtype=np.float64)
        val[:, j:j + blk] = xv @ wb
        mag[:, j:j + blk] = _magnitude(xa, xa32, wj, wb)
        if carried:
            with np.errstate(invalid="ignore"):
                if per_row:  # column sums, each a single pass over the block
                    det[:, j:j + blk] = xdet[:, :1] * np.add.reduce(np.abs(wj), axis=0, dtype=np.float64)
                    rss[:, j:j + blk] = np.sqrt(xrss2[:, :1] * np.einsum("ij,ij->j", wb, wb))
                else:
                    det[:, j:j + blk] = xdet @ np.abs(wb)
                    rss[:, j:j + blk] = np.sqrt(xrss2 @ (wb * wb))
    a = abs(alpha)
    return tuple(v.reshape(*lead, k) for v in (alpha * val, a * det, a * rss, a * mag))  # type: ignore[return-value]


_U32 = 2.0**-24
_SUBNORMAL_STEP = 2.0**-149  # float32's smallest step: the most a product or sum loses to underflow


def _up_to_f32(a: np.ndarray) -> np.ndarray | None:
    """Non-negative ``a`` in float32, the values that rounded down raised by one step, so that
    none is below ``a``; None where a value does not fit float32. (Zeros, a ReLU's many, stay
    zero: raised, they would be subnormals, which slow the products down 20 times.)"""
    with np.errstate(over="ignore"):
        a32 = a.astype(np.float32)
    if not np.all(np.isfinite(a32)):
        return None
    low = a32 < a
    a32[low] = np.nextafter(a32[low], np.float32(np.inf))
    return a32


def _magnitude(xa: np.ndarray, xa32: np.ndarray | None, w: np.ndarray, w64: np.ndarray) -> np.ndarray:
    """An upper bound on ``xa @ |w|`` (sum of |x_i w_i|, all terms non-negative); ``w64``: ``w``
    in float64.

    With float32 weights it is computed in float32, twice as fast as in float64 where most rows
    make the products compute-bound: the float32 sum of n non-negative terms (products of values
    not below |x| and |w|) is within gamma_n of their exact sum in any order (Higham, ch. 3), and
    underflow loses at most one subnormal step per operation, so the exact sum is at most
    s / (1 - gamma_n) + 2 n 2^-149, and s (1 + 2 gamma_n) is above s / (1 - gamma_n) while
    gamma_n <= 1/2. A sum that overflows float32, or a width where gamma_n > 1/2: in float64."""
    n = w.shape[0]
    g = gamma(n + 1, _U32)
    if xa32 is not None and g <= 0.5:
        with np.errstate(over="ignore"):
            s = (xa32 @ np.abs(w)).astype(np.float64)
        if np.all(np.isfinite(s)):
            return s * (1 + 2 * g) + 2 * n * _SUBNORMAL_STEP
    return xa @ np.abs(w64)


def _gemm(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    if attr(node, "transA", 0):
        raise NoBoundError("Gemm transA")
    gemm = node.op_type == "Gemm"
    return dense_bound(ev, ins[0], ins[1], trans_b=gemm and bool(attr(node, "transB", 0)),
                       alpha=float(attr(node, "alpha", 1.0)) if gemm else 1.0,
                       bias=ins[2] if gemm and len(ins) > 2 else None, beta=float(attr(node, "beta", 1.0)))


def dense_bound(ev: HeadEvaluator, x_in: Bounded | None, w_in: Bounded | None, *, trans_b: bool,
                alpha: float = 1.0, bias: Bounded | None = None, beta: float = 1.0) -> list[Bounded]:
    """alpha * x @ W (W.T when trans_b) + beta * bias, with its rounding bound: for the head rules
    of every dense spelling (Gemm, MatMul, Einsum)."""
    x = _arg(x_in)
    w = _const(w_in)
    if trans_b:
        w = w.T
    val, det, rss, mag = _dense(ev, x, w, alpha)
    if bias is not None:
        c = _const(bias)
        val = val + beta * c
        mag = mag + abs(beta) * np.abs(c)
    # n products summed, plus alpha, beta and the bias add (3 more roundings per term at most).
    rd, rr = ev.rounding(w.shape[0] + 3, mag)
    return [Bounded(val, det + rd, np.sqrt(rss * rss + rr * rr))]


def _conv1x1(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    x = _arg(ins[0])
    w = _const(ins[1])
    if attr(node, "group", 1) != 1 or w.shape[2:] != (1, 1) or x.value.ndim != 4:
        raise NoBoundError("Conv in the head is not a 1x1 convolution")
    xd, xr = _full(x)
    moved = Bounded(np.moveaxis(x.value, 1, -1), np.moveaxis(xd, 1, -1), np.moveaxis(xr, 1, -1))
    val, det, rss, mag = _dense(ev, moved, w.reshape(w.shape[0], -1).T)
    if len(ins) > 2 and ins[2] is not None:
        b = _const(ins[2])
        val, mag = val + b, mag + np.abs(b)
    rd, rr = ev.rounding(w.shape[1] + 1, mag)
    return [Bounded(*(np.moveaxis(a, -1, 1) for a in (val, det + rd, np.sqrt(rss * rss + rr * rr))))]


def _reduce_axes(ev: HeadEvaluator, node: onnx.NodeProto, rank: int) -> tuple[tuple[int, ...], bool]:
    op = node.op_type
    if op in ("GlobalAveragePool", "GlobalMaxPool", "AveragePool", "MaxPool"):
        return tuple(range(2, rank)), True
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = ev.index.int_list(node.input[1])
    if axes is None:
        if attr(node, "noop_with_empty_axes", 0):
            return (), bool(attr(node, "keepdims", 1))
        axes = list(range(rank))
    return tuple(sorted(int(a) % rank for a in axes)), bool(attr(node, "keepdims", 1))


def _reduce(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    x = _arg(ins[0])
    axes, keep = _reduce_axes(ev, node, x.value.ndim)
    d, r = _full(x)
    n = int(np.prod([x.value.shape[a] for a in axes])) if axes else 1
    op = node.op_type
    kw: dict[str, Any] = {"axis": axes, "keepdims": keep}
    if op in ("GlobalMaxPool", "MaxPool", "ReduceMax", "ReduceMin"):
        val = x.value.max(**kw) if op != "ReduceMin" else x.value.min(**kw)
        return [Bounded(val, d.max(**kw), r.max(**kw))]
    if op in ("GlobalAveragePool", "AveragePool", "ReduceMean", "ReduceSum"):
        scale = 1.0 / n if op != "ReduceSum" else 1.0
        val = x.value.sum(**kw) * scale
        mag = np.abs(x.value).sum(**kw) * scale
        rd, rr = ev.rounding(n + 1, mag)
        return [Bounded(val, d.sum(**kw) * scale + rd, np.sqrt((r * r).sum(**kw) * scale**2 + rr * rr))]
    if op == "ReduceLogSumExp":
        m = x.value.max(axis=axes, keepdims=True)
        val = m + np.log(np.exp(x.value - m).sum(axis=axes, keepdims=True))
        val = val if keep else val.squeeze(axis=axes)
        rounding = (ev.g(n) + TRANSCENDENTAL_ULPS * ev.u) * (1 + np.abs(val))
        e = np.minimum(d, LAMBDA * r).max(**kw)
        return [Bounded.from_bounds(val, d.max(**kw) + rounding, e + rounding)]
    raise NoBoundError(op)


def _elementwise(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    x = _arg(ins[0])
    op = node.op_type
    d, r = _full(x)
    if op in _LINEAR_UNARY or op in ("Cast", "CastLike"):
        if op == "Cast" and onnx.helper.tensor_dtype_to_np_dtype(attr(node, "to")).kind != "f":
            raise NoBoundError("Cast to a non-float type")
        val = -x.value if op == "Neg" else x.value
        return [Bounded(val, d, r)]
    if op in _LIPSCHITZ:
        lip, f = _LIPSCHITZ[op]
        val = f(x.value, node)
        out = Bounded(val, lip * d, lip * r)
    elif op == "Clip":
        lo = attr(node, "min") if len(node.input) < 2 or not node.input[1] else float(_const(ins[1]))
        hi = attr(node, "max") if len(node.input) < 3 or not node.input[2] else float(_const(ins[2]))
        val = np.clip(x.value, -np.inf if lo is None else lo, np.inf if hi is None else hi)
        out = Bounded(val, d, r)
    elif op == "PRelu":
        s = np.maximum(1.0, np.abs(_const(ins[1])))
        val = np.where(x.value < 0, _const(ins[1]) * x.value, x.value)
        out = Bounded(val, s * d, s * r)
    else:
        f = _MONOTONE[op]
        val = f(x.value, node)

        def spread(e: np.ndarray) -> np.ndarray:
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                dev = np.maximum(np.abs(f(x.value + e, node) - val), np.abs(f(x.value - e, node) - val))
            return np.where(np.isnan(dev), np.inf, dev)

        out = Bounded.from_bounds(val, spread(d), spread(np.minimum(d, LAMBDA * r)))
    ulps = 0.0 if op in _EXACT else (TRANSCENDENTAL_ULPS if op in _TRANSCENDENTAL else 1.0)
    rnd = ulps * ev.u * np.abs(out.value)
    return [Bounded(out.value, out.det + rnd, out.rss + rnd)]


def _binary(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    args = [b for b in ins if b is not None]
    op = node.op_type
    if op in ("Sum", "Mean", "Max", "Min") and len(args) != 2:
        acc = args[0]
        for other in args[1:]:
            acc = _pair("Add" if op in ("Sum", "Mean") else op, ev, acc, other)
        if op == "Mean":
            k = len(args)
            acc = Bounded(acc.value / k, acc.det / k + ev.u * np.abs(acc.value / k), acc.rss / k + ev.u * np.abs(acc.value / k))
        return [acc]
    return [_pair({"Sum": "Add", "Mean": "Add"}.get(op, op), ev, args[0], args[1])]


def _is_const(b: Bounded) -> bool:
    return not np.any(b.det) and not np.any(b.rss)


def _pair(op: str, ev: HeadEvaluator, a: Bounded, b: Bounded) -> Bounded:
    av, bv = a.value, b.value
    u = ev.u
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if op in ("Add", "Sub"):
            val = av + bv if op == "Add" else av - bv
            rnd = u * np.abs(val)
            return Bounded(val, a.det + b.det + rnd, a.rss + b.rss + rnd)  # operands may be correlated
        if op in ("Mul", "Div") and (_is_const(a) or _is_const(b)):
            if op == "Div" and not _is_const(b):
                pass  # a constant divided by a head tensor: nonlinear, below
            else:
                x, c = (b, av) if _is_const(a) else (a, bv)
                val = av * bv if op == "Mul" else av / bv
                scale = np.abs(c) if op == "Mul" else 1.0 / np.abs(c)
                rnd = u * np.abs(val)
                return Bounded(val, scale * x.det + rnd, scale * x.rss + rnd)
        ea, eb = a.err, b.err
        if op == "Mul":
            val = av * bv

            def mul(x: np.ndarray, y: np.ndarray) -> np.ndarray:
                return np.abs(av) * y + np.abs(bv) * x + x * y

            rnd = u * np.abs(val)
            return Bounded.from_bounds(val, mul(a.det, b.det) + rnd, mul(ea, eb) + rnd)
        if op == "Div":
            val = av / bv

            def div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
                room = np.abs(bv) - y
                e = (np.abs(av) * y + np.abs(bv) * x) / (np.abs(bv) * np.maximum(room, 1e-300))
                return np.where(room > 0, e, np.inf)

            rnd = u * np.abs(val)
            return Bounded.from_bounds(val, div(a.det, b.det) + rnd, div(ea, eb) + rnd)
        if op in ("Max", "Min"):
            val = np.maximum(av, bv) if op == "Max" else np.minimum(av, bv)
            shp = val.shape
            return Bounded(val, np.maximum(np.broadcast_to(a.det, shp), np.broadcast_to(b.det, shp)),
                           np.maximum(np.broadcast_to(a.rss, shp), np.broadcast_to(b.rss, shp)))
        if op == "Pow":
            val = np.power(av, bv)

            def pw(x: np.ndarray, y: np.ndarray) -> np.ndarray:
                corners = [np.abs(np.power(av + sa * x, bv + sb * y) - val) for sa in (-1, 1) for sb in (-1, 1)]
                e = np.max(corners, axis=0)
                return np.where(np.isnan(e), np.inf, e)

            rnd = TRANSCENDENTAL_ULPS * u * np.abs(val)
            return Bounded.from_bounds(val, pw(a.det, b.det) + rnd, pw(ea, eb) + rnd)
    raise NoBoundError(op)


def _softmax(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    x = _arg(ins[0])
    op = node.op_type
    rank = x.value.ndim
    opset = ev.index.opset
    axis = attr(node, "axis", -1 if opset >= 13 else 1) % rank
    shape = x.value.shape
    d, r = _full(x)
    if opset < 13:  # coerced to 2-D at axis
        rows = int(np.prod(shape[:axis]))
        v2, d2, r2, ax = x.value.reshape(rows, -1), d.reshape(rows, -1), r.reshape(rows, -1), 1
    else:
        v2, d2, r2, ax = x.value, d, r, axis
    k = v2.shape[ax]
    z = v2 - v2.max(axis=ax, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=ax, keepdims=True))
    round_ = ev.g(k) + 2 * TRANSCENDENTAL_ULPS * ev.u
    bounds = [d2.max(axis=ax, keepdims=True), np.minimum(d2, LAMBDA * r2).max(axis=ax, keepdims=True)]
    if op == "Softmax":
        val = np.exp(z - lse)
        with np.errstate(over="ignore", invalid="ignore"):
            outs = [np.nan_to_num(val * (np.expm1(2 * e) + round_), nan=np.inf) for e in bounds]
    elif op == "LogSoftmax":
        val = z - lse
        outs = [2 * e + round_ * (1 + np.abs(val)) + ev.u * np.abs(v2) for e in bounds]
    else:  # Hardmax: one-hot; either answer where the top two are within 2e
        idx = np.argmax(v2, axis=ax)
        val = np.zeros_like(v2)
        np.put_along_axis(val, np.expand_dims(idx, ax), 1.0, axis=ax)
        outs = [np.where(_near_tie(v2, e, ax), np.inf, 0.0) * np.ones_like(v2) for e in bounds]
    det, likely = (np.broadcast_to(o, v2.shape).reshape(shape) for o in outs)
    return [Bounded.from_bounds(val.reshape(shape), det, likely)]


def _near_tie(v: np.ndarray, emax: np.ndarray, ax: int) -> np.ndarray:
    if v.shape[ax] < 2:
        return np.zeros_like(emax, dtype=bool)
    top2 = -np.partition(-v, 1, axis=ax).take([0, 1], axis=ax)
    gap = np.abs(np.diff(top2, axis=ax))
    return gap <= 2 * emax


def _argmax(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    x = _arg(ins[0])
    ax = attr(node, "axis", 0) % x.value.ndim
    keep = bool(attr(node, "keepdims", 1))
    v = -x.value if node.op_type == "ArgMin" else x.value
    if attr(node, "select_last_index", 0):
        idx = v.shape[ax] - 1 - np.argmax(np.flip(v, axis=ax), axis=ax)
    else:
        idx = np.argmax(v, axis=ax)
    emax = np.broadcast_to(x.err, v.shape).max(axis=ax, keepdims=True)
    val = np.expand_dims(idx, ax).astype(np.float64)
    err = np.where(_near_tie(v, emax, ax), np.inf, 0.0)
    if not keep:
        val, err = val.squeeze(ax), err.squeeze(ax)
    return [Bounded.exact(val, err)]


def _topk(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    x = _arg(ins[0])
    ax = attr(node, "axis", -1) % x.value.ndim
    ks = ev.index.int_list(node.input[1]) if len(node.input) > 1 else [int(attr(node, "k"))]
    if not ks:
        raise NoBoundError("TopK k is not a constant")
    k = int(ks[0])
    v = x.value if attr(node, "largest", 1) else -x.value
    order = np.argsort(-v, axis=ax, kind="stable")
    sorted_v = np.take_along_axis(v, order, axis=ax)
    idx = order.take(range(k), axis=ax)
    vals = np.take_along_axis(x.value, idx, axis=ax)
    emax = np.broadcast_to(x.err, v.shape).max(axis=ax, keepdims=True)
    gaps = np.abs(np.diff(sorted_v.take(range(min(k + 1, v.shape[ax])), axis=ax), axis=ax))
    tie = (gaps <= 2 * emax).any(axis=ax, keepdims=True) if gaps.size else np.zeros_like(emax, dtype=bool)
    return [Bounded.exact(vals, np.broadcast_to(emax, vals.shape)),
            Bounded.exact(idx.astype(np.float64), np.where(tie, np.inf, 0.0) * np.ones(idx.shape))]


def _batchnorm(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    x = _arg(ins[0])
    scale, bias, mean, var = (_const(b) for b in ins[1:5])
    eps = float(attr(node, "epsilon", 1e-5))
    shape = [1, -1] + [1] * (x.value.ndim - 2)
    s = (scale / np.sqrt(var + eps)).reshape(shape)
    mu, beta = mean.reshape(shape), bias.reshape(shape)
    val = s * (x.value - mu) + beta
    rnd = 4 * ev.u * (np.abs(s) * (np.abs(x.value) + np.abs(mu)) + np.abs(beta) + np.abs(val))
    return [Bounded(val, np.abs(s) * x.det + rnd, np.abs(s) * x.rss + rnd)]


def _layernorm(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    x = _arg(ins[0])
    rank = x.value.ndim
    axes = tuple(range(attr(node, "axis", -1) % rank, rank))
    eps = float(attr(node, "epsilon", 1e-5))
    scale = _const(ins[1])
    bias = _const(ins[2]) if len(ins) > 2 and ins[2] is not None else np.zeros(())
    n = int(np.prod([x.value.shape[a] for a in axes]))
    mean = x.value.mean(axis=axes, keepdims=True)
    cen = x.value - mean
    sigma = np.sqrt((cen * cen).mean(axis=axes, keepdims=True) + eps)
    val = cen / sigma * scale + bias
    d, _ = _full(x)

    def carried(e_in: np.ndarray) -> np.ndarray:
        e = e_in.max(axis=axes, keepdims=True)
        room = np.maximum(sigma - 2 * e, 1e-300)
        return np.abs(scale) * (2 * e / sigma + np.abs(cen) * 2 * e / (sigma * room))

    rounding = ev.g(2 * n + 10) * np.abs(scale) * (np.abs(x.value) + np.abs(mean) + np.abs(cen)) / sigma
    rounding = rounding + ev.u * (np.abs(val) + np.abs(bias))
    return [Bounded.from_bounds(val, carried(d) + rounding, carried(np.minimum(d, x.err)) + rounding)]


def _reshape(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    x = _arg(ins[0])
    shape = ev.out_shape(node.output[0])
    d, r = _full(x)
    return [Bounded(x.value.reshape(shape), d.reshape(shape), r.reshape(shape))]


def _transpose(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    x = _arg(ins[0])
    perm = list(attr(node, "perm", list(range(x.value.ndim))[::-1]))
    if perm[0] != 0:
        raise NoBoundError("Transpose moves the batch axis")
    d, r = _full(x)
    return [Bounded(*(np.transpose(a, perm) for a in (x.value, d, r)))]


def _concat(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    parts = [b for b in ins if b is not None]
    ax = attr(node, "axis")
    fulls = [_full(b) for b in parts]
    return [Bounded(np.concatenate([b.value for b in parts], axis=ax),
                    np.concatenate([f[0] for f in fulls], axis=ax), np.concatenate([f[1] for f in fulls], axis=ax))]


def _gather(ev: HeadEvaluator, node: onnx.NodeProto, ins: list[Bounded | None]) -> list[Bounded]:
    """Only the identity Gather of dynamo's as_strided (the rewrite accepts no other)."""
    idx = ev.index.const_value(node.input[1])
    if idx is None or not np.array_equal(np.asarray(idx).reshape(-1), np.arange(np.asarray(idx).size)):
        raise NoBoundError("Gather that is not an identity")
    return _reshape(ev, node, ins)


def register_bound(op: str, rule: Rule) -> None:
    """The rounding rule for a head op that a rule module adds (``rules/dense.py``: Einsum)."""
    _RULES[op] = rule


_RULES: dict[str, Rule] = {
    "Gemm": _gemm, "MatMul": _gemm, "Conv": _conv1x1,
    **{op: _reduce for op in ("GlobalAveragePool", "GlobalMaxPool", "AveragePool", "MaxPool", "ReduceMean",
                              "ReduceMax", "ReduceMin", "ReduceSum", "ReduceLogSumExp")},
    **{op: _elementwise for op in (*_MONOTONE, *_LIPSCHITZ, *_LINEAR_UNARY, "Clip", "PRelu", "Cast", "CastLike")},
    **{op: _binary for op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean")},
    "Softmax": _softmax, "LogSoftmax": _softmax, "Hardmax": _softmax,
    "ArgMax": _argmax, "ArgMin": _argmax, "TopK": _topk,
    "BatchNormalization": _batchnorm, "LayerNormalization": _layernorm,
    **{op: _reshape for op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze")},
    "Transpose": _transpose, "Concat": _concat, "Gather": _gather,
}
