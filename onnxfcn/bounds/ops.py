"""Rounding rules of the other head ops: reductions, activations, elementwise arithmetic,
softmax and the class-axis ops, normalizations and shape ops."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from ..graph import attr
from .core import LAMBDA, TRANSCENDENTAL_ULPS, Bounded, NoBoundError, _arg, _const, _erf, _full
from .evaluator import RULES, HeadEvaluator

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



RULES.update({
    **{op: _reduce for op in ("GlobalAveragePool", "GlobalMaxPool", "AveragePool", "MaxPool", "ReduceMean",
                              "ReduceMax", "ReduceMin", "ReduceSum", "ReduceLogSumExp")},
    **{op: _elementwise for op in (*_MONOTONE, *_LIPSCHITZ, *_LINEAR_UNARY, "Clip", "PRelu", "Cast", "CastLike")},
    **{op: _binary for op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean")},
    "Softmax": _softmax, "LogSoftmax": _softmax, "Hardmax": _softmax,
    "ArgMax": _argmax, "ArgMin": _argmax, "TopK": _topk,
    "BatchNormalization": _batchnorm, "LayerNormalization": _layernorm,
    **{op: _reshape for op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze")},
    "Transpose": _transpose, "Concat": _concat, "Gather": _gather,
})
