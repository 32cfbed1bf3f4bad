"""Tokens in the fast tier (issue #23): a map reshaped to H*W tokens by constant-shape Reshapes,
attention over them, back to the map; and the refusals of fixed token counts. The PyTorch-built
blocks (non-local, MobileViT-style) are in test_attention.py."""

from __future__ import annotations

import numpy as np
import pytest
from builders import Builder, gemm
from helpers import assert_close, cells_vs_crops, rand, run

import onnxfcn
from onnxfcn.errors import UnsupportedModelError

C, H = 8, 6  # trunk channels; the map is H x H at the reference size 18 (a 3x3 valid conv, /2, 3x3 valid)


def _trunk(b: Builder) -> str:
    x = b.node("Relu", [b.node("Conv", ["image", b.weight("c1", (C, 3, 3, 3)), b.weight("b1", (C,), 0.1)],
                                kernel_shape=[3, 3])])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    return b.node("Relu", [b.node("Conv", [x, b.weight("c2", (C, C, 3, 3)), b.weight("b2", (C,), 0.1)],
                                  kernel_shape=[3, 3])])


def attention_model(opset: int = 13, extra: str | None = None) -> object:
    """Tokens (1, C, 36) -> q^T k -> Softmax -> v attn^T -> back to (1, C, 6, 6), residual, pool, a
    wide head. ``extra``: 'pos' adds a position embedding of 36 tokens, 'mix' a MatMul of the
    tokens with fixed 36 x 36 weights."""
    b = Builder(opset, seed=7)
    f = _trunk(b)
    t = b.node("Reshape", [f, b.ints("to_tokens", [1, C, H * H])])
    if extra == "pos":
        t = b.node("Add", [t, b.weight("pos", (1, C, H * H), 0.5)])
    if extra == "mix":
        t = b.node("MatMul", [t, b.weight("mix", (H * H, H * H))])
    q = b.node("Transpose", [t], perm=[0, 2, 1])
    attn = b.node("Softmax", [b.node("MatMul", [q, t])], axis=2 if opset < 13 else -1)
    y = b.node("MatMul", [t, b.node("Transpose", [attn], perm=[0, 2, 1])])
    y = b.node("Add", [f, b.node("Reshape", [y, b.ints("to_map", [1, C, H, H])])])
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)
    return b.model([1, 3, 18, 18], [gemm(b, y, C, 40)])


@pytest.mark.parametrize("opset", [11, 13])
def test_attention_converts_as_global_context(opset: int) -> None:
    original = attention_model(opset)
    conv, report = onnxfcn.convert(original)
    geo = report.geometry
    assert geo.global_context and not geo.exact
    assert any("attention over the map's positions" in r for r in geo.reasons)
    rows = {c.node: c.after for c in report.changes}
    assert any("[N, 8, tokens]" in a for a in rows.values()) and any("[N, 8, H, W]" in a for a in rows.values())
    x = rand([1, 3, 18, 18], seed=2)
    assert_close(run(conv, x)[0][:, :, 0, 0], run(original, x)[0], rel=1e-5)
    y = run(conv, rand([3, 3, 18 + 4 * 2, 18 + 2], seed=3))[0]  # batch 3, a larger map: 36 -> 80 tokens
    assert y.shape == (3, 40, 5, 2) and np.isfinite(y).all()


@pytest.mark.parametrize("opset", [11, 13])
def test_token_wise_softmax_is_exact_and_before_opset_13_mixes(opset: int) -> None:
    """Softmax(axis=1) of (1, C, 36) tokens: from opset 13 over the channels of each position (the
    cells stay exact: they equal the classifier on their crops); before, over every axis from 1 on,
    positions included (global context)."""
    b = Builder(opset, seed=9)
    f = _trunk(b)
    t = b.node("Softmax", [b.node("Reshape", [f, b.ints("to_tokens", [1, C, H * H])])], axis=1)
    y = b.node("Flatten", [b.node("Reshape", [t, b.ints("to_map", [1, C, H, H])])], axis=1)
    original = b.model([1, 3, 18, 18], [gemm(b, y, C * H * H, 40)])
    conv, report = onnxfcn.convert(original)
    assert report.geometry.global_context == (opset < 13) and report.geometry.exact == (opset >= 13)
    if opset >= 13:
        cells, crops = cells_vs_crops(original, conv, rand([1, 3, 24, 22], seed=4), 18, 2)
        assert_close(cells, crops, rel=1e-5)


@pytest.mark.parametrize(("extra", "reason"), [
    ("pos", r"position embedding of 36 tokens \('pos_\d+'\): the token count is fixed"),
    ("mix", r"MatMul multiplies the 36 tokens by fixed weights \('mix_\d+'\)"),
])
def test_fixed_token_counts_are_refused(extra: str, reason: str) -> None:
    original = attention_model(13, extra)
    with pytest.raises(UnsupportedModelError, match=reason) as info:
        onnxfcn.convert(original)
    assert info.value.node
    plan = onnxfcn.inspect(original)
    assert not plan and plan.blockers[0]["node"] == info.value.node


def global_context_model(head: bool = False) -> object:
    """GCNet's global-context block (timm's ``GlobalContext``): a 1x1 conv's softmax over the
    positions weights the map's tokens, their weighted sum (a MatMul contracting the tokens) is a
    pooled vector per image, a 1x1 conv of it is added to the map. ``head``: the weighted sum
    feeds the classifier instead (attention pooling as the head)."""
    b = Builder(13, seed=11)
    f = _trunk(b)
    logits = b.node("Conv", [f, b.weight("attn", (1, C, 1, 1))], kernel_shape=[1, 1])
    weights = b.node("Softmax", [b.node("Reshape", [logits, b.ints("to_t1", [1, 1, H * H])])], axis=-1,
                     name="attn_softmax")
    weights = b.node("Unsqueeze", [weights, b.ints("ax", [3])])  # N x 1 x HW x 1
    tokens = b.node("Unsqueeze", [b.node("Reshape", [f, b.ints("to_tc", [1, C, H * H])]), b.ints("ax1", [1])])
    context = b.node("Reshape", [b.node("MatMul", [tokens, weights], name="attn_pool"), b.ints("to_v", [1, C, 1, 1])])
    if head:
        return b.model([1, 3, 18, 18], [gemm(b, b.node("Flatten", [context], axis=1), C, 40)])
    context = b.node("Conv", [context, b.weight("mlp", (C, C, 1, 1))], kernel_shape=[1, 1])
    y = b.node("Flatten", [b.node("GlobalAveragePool", [b.node("Add", [f, context])])], axis=1)
    return b.model([1, 3, 18, 18], [gemm(b, y, C, 40)])


def test_attention_pooling_inside_the_trunk_is_a_global_pool() -> None:
    """The tokens contracted away leave one vector per image: a global pool inside the trunk, as
    squeeze-excitation's (timm's gcresnext was refused: "Conv: the tool cannot follow what it does
    to the tokens")."""
    original = global_context_model()
    conv, report = onnxfcn.convert(original)
    assert "global pooling inside the trunk (attn_softmax) sees the whole image" in report.geometry.reasons
    x = rand([1, 3, 18, 18], seed=2)
    assert_close(run(conv, x)[0][:, :, 0, 0], run(original, x)[0], rel=1e-5)
    assert run(conv, rand([3, 3, 26, 20], seed=3))[0].shape == (3, 40, 5, 2)


def test_attention_pooling_as_the_head_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="node 'attn_softmax': output .* attention pooling of the tokens"):
        onnxfcn.convert(global_context_model(head=True))


def linear_attention_model(pad_tokens: bool = False) -> object:
    """EfficientViT's ReLU linear attention: v padded with a column of ones, k^T v contracts the
    tokens (a matrix per image), q (k^T v) brings them back, the last column divides the rest.
    ``pad_tokens``: the Pad adds a token instead (refused)."""
    b = Builder(13, seed=13)
    f = _trunk(b)
    t = b.node("Transpose", [b.node("Reshape", [f, b.ints("to_tokens", [1, C, H * H])])], perm=[0, 2, 1])  # 1 x HW x C
    q, k = b.node("Relu", [t]), b.node("Relu", [b.node("Neg", [t])])
    if pad_tokens:  # a token of ones in front, the last one dropped: the tokens shift by one position
        v = b.node("Pad", [t, b.ints("pads", [0, 1, 0, 0, 0, 0]), b.const("one", np.asarray(1.0, np.float32))],
                   name="pad_ones")
        t = b.node("Slice", [v, b.ints("st", [0]), b.ints("en", [H * H]), b.ints("ax", [1])])
    v = b.node("Pad", [t, b.ints("pads", [0, 0, 0, 0, 0, 1]), b.const("one1", np.asarray(1.0, np.float32))],
               name="pad_ones" if not pad_tokens else "pad_column")
    kv = b.node("MatMul", [b.node("Transpose", [k], perm=[0, 2, 1]), v], name="kv")  # 1 x C x (C+1)
    out = b.node("MatMul", [q, kv])
    num = b.node("Slice", [out, b.ints("s0", [0]), b.ints("e0", [C]), b.ints("a0", [2])])
    den = b.node("Slice", [out, b.ints("s1", [C]), b.ints("e1", [C + 1]), b.ints("a1", [2])])
    y = b.node("Div", [num, b.node("Add", [den, b.const("eps", np.asarray(1e-3, np.float32))])])
    y = b.node("Reshape", [b.node("Transpose", [y], perm=[0, 2, 1]), b.ints("to_map", [1, C, H, H])])
    y = b.node("Flatten", [b.node("GlobalAveragePool", [b.node("Add", [f, y])])], axis=1)
    return b.model([1, 3, 18, 18], [gemm(b, y, C, 40)])


def test_linear_attention_converts() -> None:
    """The Pad along the channels keeps the tokens; k^T v mixes every position (timm's
    efficientvit_b0 was refused at the Pad)."""
    original = linear_attention_model()
    conv, report = onnxfcn.convert(original)
    assert "attention over the map's positions (kv) sees the whole image" in report.geometry.reasons
    x = rand([1, 3, 18, 18], seed=2)
    assert_close(run(conv, x)[0][:, :, 0, 0], run(original, x)[0], rel=1e-5)
    assert run(conv, rand([2, 3, 22, 30], seed=3))[0].shape == (2, 40, 3, 7)


def test_pad_that_adds_a_token_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="node 'pad_ones': Pad adds tokens by position"):
        onnxfcn.convert(linear_attention_model(pad_tokens=True))


def test_tokens_gated_by_a_pooled_vector_are_global_context() -> None:
    """A squeeze-excitation gate (a global pool of the map) multiplied into the map's tokens: every
    cell depends on the whole image (refused before: "combines tokens with a pooled tensor")."""
    b = Builder(13, seed=17)
    f = _trunk(b)
    gate = b.node("Sigmoid", [b.node("Conv", [b.node("GlobalAveragePool", [f]), b.weight("g", (C, C, 1, 1))],
                                     kernel_shape=[1, 1])])
    gate = b.node("Reshape", [gate, b.ints("to_row", [1, C, 1])])  # N x C x 1 against N x C x HW tokens
    t = b.node("Mul", [b.node("Reshape", [f, b.ints("to_tokens", [1, C, H * H])]), gate], name="gated")
    y = b.node("Add", [f, b.node("Reshape", [t, b.ints("to_map", [1, C, H, H])])])
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)
    original = b.model([1, 3, 18, 18], [gemm(b, y, C, 40)])
    conv, report = onnxfcn.convert(original)
    assert report.geometry.global_context
    assert "statistics over the map's positions (gated) sees the whole image" in report.geometry.reasons
    x = rand([1, 3, 18, 18], seed=2)
    assert_close(run(conv, x)[0][:, :, 0, 0], run(original, x)[0], rel=1e-5)
    assert run(conv, rand([2, 3, 22, 26], seed=3))[0].shape == (2, 40, 3, 5)
