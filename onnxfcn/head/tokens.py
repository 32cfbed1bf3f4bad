"""Tokens: a map's H x W positions laid on one axis, as attention inside a trunk does.

YOLO11's C2PSA, non-local blocks and MobileViT-style stages reshape a C x H x W map to C x (H*W)
tokens, apply token-wise ops and attention over the token axis, and reshape back to C x H x W.
That generalizes to any input size (the reshapes follow the map; ``trunk.py`` rewrites constant
ones), with every later cell seeing every position: global context, as a squeeze-excitation pool.

Each tensor computed from tokens carries ``Tokens``: where its token axes and its batch axis are,
which map they came from, the first node that mixes positions, and the first op that fixes the
token count (a position embedding, a class token, weights over the token axis), which blocks the
conversion: a transformer whose token count is fixed has no fully convolutional form.
"""

from __future__ import annotations

import math
from dataclasses import replace

import onnx

from ..errors import UnsupportedModelError
from ..graph import GraphIndex, attr, node_label, softmax_axes
from .types import NCHW_AXES, NHWC_AXES, TensorInfo, TensorState, Tokens

_UNARY = {"Relu", "Sigmoid", "Tanh", "Erf", "Gelu", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Identity",
          "Cast", "CastLike", "Dropout", "Clip", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu",
          "Softplus", "Softsign", "Mish", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "Sin", "Cos",
          "QuantizeLinear", "DequantizeLinear"}
_BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "Greater",
              "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "PRelu", "Mod"}
_SOFTMAX = {"Softmax", "LogSoftmax", "Hardmax"}
_REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceLogSumExp", "ReduceSumSquare"}
_RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
_RUN_ON_CROPS = "the token count is fixed, so there is no fully convolutional form (a ViT has none); run it on crops"


class _Blocked(Exception):
    """An op the tool cannot generalize over the token axis."""


def _map_axis(src: tuple[int, ...], axis: int, dst: tuple[int, ...]) -> int | None:
    """Where axis ``axis`` of a tensor of shape ``src`` lands after a reshape to ``dst``: the axis
    of the same size with the same number of elements before it (None: merged or split)."""
    before, after = math.prod(src[:axis]), math.prod(src[axis + 1:])
    for j, d in enumerate(dst):
        if d == src[axis] and math.prod(dst[:j]) == before and math.prod(dst[j + 1:]) == after:
            return j
    return None


def to_tokens(index: GraphIndex, node: onnx.NodeProto, src: TensorInfo) -> TensorInfo | None:
    """A Reshape of a map that puts its H x W positions on one axis; None when it does not."""
    lay = src.layout or NCHW_AXES
    shape, out = index.static_shape(node.input[0]), index.static_shape(node.output[0])
    if shape is None or out is None or lay[3] != lay[2] + 1:
        return None
    h, w = shape[lay[2]], shape[lay[3]]
    if h * w <= 1:
        return None
    merged = (*shape[:lay[2]], h * w, *shape[lay[3] + 1:])
    axis = _map_axis(merged, lay[2], out)
    if axis is None:
        return _grouped(shape, lay, out, node)
    if len(out) == len(shape) and out[-2:] == shape[-2:]:  # H, W still there
        return None
    batch = _map_axis(shape, lay[0], out) if lay[0] < lay[2] else None
    return TensorInfo(TensorState.TOKENS, tokens=Tokens((axis,), batch, node.input[0], (h, w)))


def _grouped(shape: tuple[int, ...], lay: tuple[int, ...], out: tuple[int, ...], node: onnx.NodeProto) -> TensorInfo | None:
    """A group norm's Reshape of an NCHW map to N x G x (C/G * H * W): its groups' channels and
    positions on one axis, normalized together (InstanceNormalization) and reshaped back."""
    if lay != NCHW_AXES or len(shape) != 4 or len(out) != 3 or out[0] != shape[0]:
        return None
    n, c, h, w = shape
    if out[1] <= 0 or c % out[1] or out[2] != (c // out[1]) * h * w:
        return None
    return TensorInfo(TensorState.TOKENS, tokens=Tokens((2,), 0, node.input[0], (h, w), inner=c // out[1]))


def token_state(index: GraphIndex, info: dict[str, TensorInfo], node: onnx.NodeProto) -> TensorInfo:
    """The state of a node reading tokens: tokens again (their axes followed), a map again (a
    Reshape back to the map they came from), or tokens blocked at this node with the reason."""
    toks = [info[i].tokens for i in node.input if i and i in info and info[i].tokens is not None]
    assert toks, node_label(node)
    base = toks[0]
    assert base is not None
    mixer = next((t for t in toks if t is not None and t.mixing), None)
    mixed = replace(base, mixing=mixer.mixing, mixing_kind=mixer.mixing_kind) if mixer is not None else base
    blocked = next((t.blocked for t in toks if t is not None and t.blocked), None)
    if blocked is None and all(t is not None and not t.axes and t.batch == 0 for t in toks):
        # tokens contracted away (a global-context block's softmax-weighted sum over the positions;
        # linear attention's k^T v): used for anything but tokens, a pooled vector per image
        return TensorInfo(TensorState.POOLED, NCHW_AXES)
    if blocked is not None:
        return TensorInfo(TensorState.TOKENS, tokens=replace(mixed, blocked=blocked))
    try:
        out = _follow(index, info, node, mixed)
    except _Blocked as why:
        return TensorInfo(TensorState.TOKENS, tokens=replace(mixed, blocked=(node_label(node), str(why))))
    return out


def _shape(index: GraphIndex, name: str) -> tuple[int, ...]:
    shape = index.static_shape(name)
    if shape is None:
        raise _Blocked(f"'{name}' has no static shape at the reference size")
    return shape


def _follow(index: GraphIndex, info: dict[str, TensorInfo], node: onnx.NodeProto, base: Tokens) -> TensorInfo:
    op = node.op_type
    others = [i for i in node.input if i and i in info and info[i].state not in
              (TensorState.TOKENS, TensorState.CONST, TensorState.SHAPE, TensorState.POOLED)]
    if others:
        raise _Blocked(f"{op} combines tokens with a {info[others[0]].state.value} tensor ('{others[0]}')")
    if base.mixing is None and any(i in info and info[i].state is TensorState.POOLED for i in node.input):
        # a vector per image pooled over the whole map (a gate, tokens contracted away) applied to tokens
        base = replace(base, mixing=node_label(node), mixing_kind="statistics")
    sizes = {info[i].tokens.hw for i in node.input if i in info and info[i].tokens is not None}  # type: ignore[union-attr]
    if len(sizes) > 1:
        raise _Blocked(f"{op} combines tokens of maps of different sizes {sorted(sizes)}")
    out = _shape(index, node.output[0])
    if op == "Transpose":
        perm = list(attr(node, "perm") or reversed(range(len(out))))
        return _tokens(base, tuple(perm.index(a) for a in base.axes),
                       perm.index(base.batch) if base.batch is not None else None)
    if op in _RESHAPES:
        return _reshaped(index, node, base, out)
    if op == "MatMul":
        return _matmul(index, info, node, base, out)
    if op in _BROADCAST:
        return _broadcast(index, info, node, base, out)
    rank = len(out)
    if op in _SOFTMAX:  # before opset 13: over every axis from ``axis`` on (the input coerced to 2-D)
        over = softmax_axes(node, rank, index.opset)
        return _tokens(replace(base, mixing=base.mixing or _mixes(base, node, over)), base.axes, base.batch)
    if op == "LayerNormalization":
        axis = attr(node, "axis", -1) % rank
        return _tokens(replace(base, mixing=base.mixing or _mixes(base, node, range(axis, rank))), base.axes,
                       base.batch)
    if op == "InstanceNormalization":  # over every axis after N and C: a group norm's statistics
        if base.mixing is None and _mixes(base, node, range(2, rank)):
            base = replace(base, mixing=node_label(node), mixing_kind="statistics")
        return _tokens(base, base.axes, base.batch)
    if op in _REDUCE:
        return _reduced(index, node, base, rank)
    if op in ("Split", "Slice", "Gather", "Concat"):
        return _indexed(index, info, node, base, out)
    if op == "Pad":  # along other axes (linear attention pads v with a column of ones)
        if any(out[a] != _shape(index, node.input[0])[a] for a in (*base.axes, *(() if base.batch is None else (base.batch,)))):
            raise _Blocked(f"Pad adds tokens by position: {_RUN_ON_CROPS}")
        return _tokens(base, base.axes, base.batch)
    if op in _UNARY and _shape(index, node.input[0]) == out:
        return _tokens(base, base.axes, base.batch)
    raise _Blocked(f"{op}: the tool cannot follow what it does to the tokens")


def _tokens(base: Tokens, axes: tuple[int, ...], batch: int | None) -> TensorInfo:
    return TensorInfo(TensorState.TOKENS, tokens=replace(base, axes=tuple(sorted(axes)), batch=batch))


def _mixes(base: Tokens, node: onnx.NodeProto, axes: object) -> str | None:
    """The node's label when it works across a token axis (attention's softmax, a norm over positions)."""
    return node_label(node) if any(a in base.axes for a in axes) else None  # type: ignore[attr-defined]


def _reshaped(index: GraphIndex, node: onnx.NodeProto, base: Tokens, out: tuple[int, ...]) -> TensorInfo:
    src = _shape(index, node.input[0])
    axes = [_map_axis(src, a, out) for a in base.axes]
    batch = _map_axis(src, base.batch, out) if base.batch is not None else None
    if all(a is not None for a in axes):
        return _tokens(base, tuple(a for a in axes if a is not None), batch)
    if node.op_type == "Reshape" and len(base.axes) == 1 and len(out) == 4:
        layout = _back_to_map(src, base, out)
        if layout is not None and batch == 0:
            return TensorInfo(TensorState.SPATIAL, layout)
    raise _Blocked(f"{node.op_type} {list(src)} -> {list(out)} merges or splits the {base.count} tokens "
                   f"otherwise than back into the {base.hw[0]}x{base.hw[1]} map they came from")


def _back_to_map(src: tuple[int, ...], base: Tokens, out: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """The layout of a Reshape of tokens back into their map's H x W (NCHW or NHWC), if it is one."""
    t = base.axes[0]
    for j, layout in ((2, NCHW_AXES), (1, NHWC_AXES)):
        if tuple(out[j:j + 2]) == base.hw and math.prod(out[:j]) == math.prod(src[:t]) * base.inner \
                and math.prod(out[j + 2:]) == math.prod(src[t + 1:]):
            return layout
    return None


def _matmul(index: GraphIndex, info: dict[str, TensorInfo], node: onnx.NodeProto, base: Tokens,
            out: tuple[int, ...]) -> TensorInfo:
    """Rows of A and columns of B stay; the contracted axis goes. Contracting tokens against
    tokens is attention (every position mixes); against weights, the count is fixed."""
    r = len(out)
    operands = [(info[i].tokens if i in info else None, len(_shape(index, i)), i) for i in node.input[:2]]
    if any(rank < 2 for _, rank, _ in operands):
        raise _Blocked("MatMul of a vector with tokens")
    axes: set[int] = set()
    batch: int | None = None
    contracted = [False, False]
    for k, (tok, rank, _) in enumerate(operands):
        if tok is None:
            continue
        # A (.., m, k) @ B (.., k, n): A's rows and B's columns stay, k goes, batch axes broadcast.
        keep = (rank - 2, r - 2) if k == 0 else (rank - 1, r - 1)
        contract = rank - 1 if k == 0 else rank - 2
        for a in tok.axes:
            if a == contract:
                contracted[k] = True
            else:
                axes.add(keep[1] if a == keep[0] else a + r - rank)
        if batch is None and tok.batch is not None and tok.batch < rank - 2:
            batch = tok.batch + r - rank
    if contracted[0] != contracted[1]:
        weights = operands[1 if contracted[0] else 0]
        if weights[0] is None:
            raise _Blocked(f"MatMul multiplies the {base.count} tokens by fixed weights ('{weights[2]}'): "
                           + _RUN_ON_CROPS)
        raise _Blocked("MatMul contracts tokens with an axis that holds no tokens")
    mixing = base.mixing or (node_label(node) if contracted[0] else None)
    return _tokens(replace(base, mixing=mixing), tuple(axes), batch)


def _broadcast(index: GraphIndex, info: dict[str, TensorInfo], node: onnx.NodeProto, base: Tokens,
               out: tuple[int, ...]) -> TensorInfo:
    """Elementwise with broadcasting: a constant as long as the tokens is a position embedding."""
    r = len(out)
    placed: set[tuple[int, ...]] = set()  # each token operand's token axes, as output axes
    batch = None
    for i in node.input:
        tok = info[i].tokens if i and i in info else None
        if tok is not None:
            shift = r - len(_shape(index, i))
            placed.add(tuple(a + shift for a in tok.axes))
            if batch is None and tok.batch is not None:
                batch = tok.batch + shift
    if len(placed) != 1:
        raise _Blocked(f"{node.op_type} combines tokens laid on different axes")
    axes = placed.pop()
    for i in node.input:  # the other operands (constants): as long as the tokens, they fix the count
        if not i or (i in info and info[i].tokens is not None):
            continue
        shape = _shape(index, i)
        for a in axes:
            pos = a - (r - len(shape))
            if 0 <= pos < len(shape) and shape[pos] == out[a] > 1:
                raise _Blocked(f"position embedding of {out[a]} tokens ('{i}'): {_RUN_ON_CROPS}")
    return _tokens(base, axes, batch)


def _reduced(index: GraphIndex, node: onnx.NodeProto, base: Tokens, rank: int) -> TensorInfo:
    axes = index.axes(node)
    reduced = sorted(a % rank for a in axes) if axes is not None else list(range(rank))
    if not attr(node, "keepdims", 1):
        if any(a in base.axes for a in reduced):
            raise _Blocked(f"{node.op_type} pools the tokens away: the head reads tokens, not a map")
        shift = [a - sum(1 for x in reduced if x < a) for a in base.axes]
        batch = None if base.batch is None or base.batch in reduced else \
            base.batch - sum(1 for x in reduced if x < base.batch)
        return _tokens(base, tuple(shift), batch)
    return _tokens(replace(base, mixing=base.mixing or _mixes(base, node, reduced)), base.axes, base.batch)


def _indexed(index: GraphIndex, info: dict[str, TensorInfo], node: onnx.NodeProto, base: Tokens,
             out: tuple[int, ...]) -> TensorInfo:
    """Split, Slice, Gather and Concat: fine along other axes; along the tokens they fix the count."""
    op, src = node.op_type, _shape(index, node.input[0])
    rank = len(src)
    if op == "Slice":
        if out == src:
            return _tokens(base, base.axes, base.batch)
        cut = [a for a in range(rank) if out[a] != src[a]]
    elif op == "Concat":
        cut = [attr(node, "axis", 0) % rank]
    else:
        cut = [attr(node, "axis", 0) % rank]
    on_tokens = [a for a in cut if a in base.axes]
    if on_tokens:
        if op == "Concat":
            extra = next((i for i in node.input if i in info and info[i].tokens is None), None)
            if extra is not None:
                raise _Blocked(f"class token ('{extra}') concatenated to the {base.count} tokens: {_RUN_ON_CROPS}")
        raise _Blocked(f"{op} on the token axis picks or adds tokens by position: {_RUN_ON_CROPS}")
    if op == "Gather":
        indices = _shape(index, node.input[1])
        g = cut[0]
        moved = [a if a < g else a - 1 + len(indices) for a in base.axes]
        batch = None if base.batch is None or base.batch == g else \
            (base.batch if base.batch < g else base.batch - 1 + len(indices))
        return _tokens(base, tuple(moved), batch)
    if op == "Concat":
        for i in node.input:
            tok = info[i].tokens if i in info else None
            if tok is not None and tok.axes != base.axes:
                raise _Blocked("Concat joins tokens laid on different axes")
    return _tokens(base, base.axes, base.batch)


def refuse_fixed_tokens(index: GraphIndex, info: dict[str, TensorInfo]) -> None:
    """Raise at the first op that fixes the token count, on the way to an output; and where an
    output is computed from tokens that never return to a map (a transformer's head)."""
    needed = index.ancestors(index.graph_outputs)
    for node in index.graph.node:
        for o in node.output:
            tok = info[o].tokens if o in needed and o in info else None
            if tok is not None and tok.blocked is not None and tok.blocked[0] == node_label(node):
                raise UnsupportedModelError(tok.blocked[1], tok.blocked[0])
    _refuse_pooled_tokens_head(index, info)
    for o in index.graph_outputs:
        if o in info and info[o].state is TensorState.TOKENS:
            raise UnsupportedModelError(
                f"output '{o}' is computed from tokens (of the map '{info[o].tokens.source}') that never "  # type: ignore[union-attr]
                "return to a feature map: the head reads tokens, as a transformer's does; the tool converts heads "
                "that read a feature map")


def _refuse_pooled_tokens_head(index: GraphIndex, info: dict[str, TensorInfo]) -> None:
    """An output computed from an attention pooling of the tokens (attention pooling as the
    classifier's pool), with no map in between: its head reads no feature map."""
    pooled: dict[str, str] = {}  # tensor -> the pooling node it comes from, through non-map tensors
    for node in index.graph.node:
        toks = [info[i].tokens for i in node.input if i and i in info and info[i].tokens is not None]
        source = next((pooled[i] for i in node.input if i in pooled), None)
        for o in node.output:
            if not o or o not in info or info[o].state is TensorState.SPATIAL:
                continue
            if toks and info[o].state is TensorState.POOLED:
                pooled[o] = next((t.mixing for t in toks if t is not None and t.mixing), node_label(node))
            elif source is not None:
                pooled[o] = source
    for o in index.graph_outputs:
        if o in pooled:
            raise UnsupportedModelError(
                f"output '{o}' is computed from an attention pooling of the tokens over the whole map, with no feature "
                "map after it: the head pools by attention; the tool converts heads that read a feature map", pooled[o])
