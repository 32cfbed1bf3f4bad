"""Rounding rules of dense products: Gemm, MatMul and the head's 1x1 Conv, in float64 blocks."""

from __future__ import annotations

import numpy as np
import onnx

from ..graph import attr
from .core import (
    _BLOCK_BYTES_MAX,
    _BLOCK_BYTES_MIN,
    _BLOCK_BYTES_PER_ROW,
    Bounded,
    NoBoundError,
    _arg,
    _const,
    _full,
    gamma,
)
from .evaluator import RULES, HeadEvaluator


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



RULES.update({"Gemm": _gemm, "MatMul": _gemm, "Conv": _conv1x1})
