"""Every head pattern converts, and is proven numerically on onnxruntime.

For each pattern: the converted model equals the original at the reference size (max abs error
<= 1e-5 * max|y|), and, since the trunk here is padding-free, every cell of a larger image equals
the original classifier on its crop.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import C_FEAT, REF, Builder, flatten_gemm, gemm, image_shape, trunk
from helpers import assert_close, cells_vs_crops, rand, run
from patterns import PATTERNS, D, K, pooled, weight_source

import onnxfcn


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_pattern_converts_and_matches(pattern: str) -> None:
    original = PATTERNS[pattern]()
    layout = "NHWC" if pattern.startswith("nhwc") else "NCHW"
    converted, report = onnxfcn.convert(original)
    onnx.checker.check_model(converted, full_check=True)
    # Reference size, batch 2: equal to the original (reshaped N x K x 1 x 1 -> N x K).
    x = rand(image_shape(layout, 2))
    want = np.concatenate([run(original, x[n:n + 1])[0] for n in range(2)])
    got = run(converted, x)[0]
    assert got.size == want.size
    if want.dtype.kind in "iu":
        np.testing.assert_array_equal(got.reshape(want.shape), want)
    else:
        assert_close(got.reshape(want.shape), want)
    # A larger image: every cell equals the classifier on its crop (the trunk has no padding).
    assert report.geometry.exact, report.geometry.reasons
    big = rand(image_shape(layout, 2)[:1] + ([3, REF + 4, REF + 6] if layout == "NCHW" else [REF + 4, REF + 6, 3]), 2)
    big[1:] = rand(list(big.shape[1:]), 3)[None]
    if pattern.startswith("argmax_no_keepdims"):
        y = run(converted, big)[0]
        assert y.shape == (2, 3, 4)
        for i in range(3):
            for j in range(4):
                crop = big[:, :, 2 * i:2 * i + REF, 2 * j:2 * j + REF]
                want_c = np.concatenate([run(original, crop[n:n + 1])[0] for n in range(2)])
                np.testing.assert_array_equal(y[:, i, j], want_c)
        return
    cells, crops = cells_vs_crops(original, converted, big, REF, 2, layout)
    assert cells.shape[0] == 12  # 3 x 4 cells
    if crops.dtype.kind in "iu" or pattern.startswith("hardmax"):
        np.testing.assert_array_equal(cells, crops)
    else:
        assert_close(cells, crops)


@pytest.mark.parametrize("opset", [7, 8, 9, 10, 11, 12, 13, 15, 17, 18, 20, 21, 23, onnx.defs.onnx_opset_version()])
def test_every_opset(opset: int) -> None:
    """The basic head with a Softmax, at opsets 7 through the newest that onnx supports."""
    b = Builder(opset)
    y = gemm(b, b.node("Flatten", [trunk(b)], axis=1), D, K)
    y = b.node("Softmax", [y], axis=1)
    original = b.model(image_shape(), [y])
    converted, report = onnxfcn.convert(original)
    assert converted.opset_import[0].version == opset
    x = rand(image_shape(batch=2))
    assert_close(run(converted, x)[0].reshape(2, K), np.concatenate([run(original, x[n:n + 1])[0] for n in range(2)]))
    cells, crops = cells_vs_crops(original, converted, rand([1, 3, REF + 4, REF + 4], 5), REF, 2)
    assert_close(cells, crops)
    # Each cell's softmax sums to one over the classes alone (before opset 13 a naive rewrite
    # would normalize over classes x cells).
    y_big = run(converted, rand([1, 3, REF + 4, REF + 4], 5))[0]
    np.testing.assert_allclose(y_big.sum(axis=1), 1.0, rtol=1e-5)


def test_fp16_model() -> None:
    original = flatten_gemm(dtype=np.float16)
    converted, _ = onnxfcn.convert(original)
    x = rand(image_shape(batch=1), dtype=np.float16)
    want = run(original, x)[0].astype(np.float32)
    got = run(converted, x)[0].reshape(want.shape).astype(np.float32)
    assert_close(got, want, rel=1e-2)
    assert converted.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_dense_mode_scores_each_feature_cell() -> None:
    original = pooled("GlobalAveragePool")()
    converted, report = onnxfcn.convert(original, mode="dense")
    assert report.geometry.feature_window == (1, 1)
    assert not report.geometry.exact  # dense cells are not reference-size crops
    x = rand([1, 3, REF, REF])
    y = run(converted, x)[0]
    assert y.shape == (1, K, 6, 6)  # one cell per feature position: a finer grid than window mode
    # For a linear head after average pooling, the mean over dense cells is the original output.
    assert_close(y.mean(axis=(2, 3)), run(original, x)[0])
    window_model, _ = onnxfcn.convert(original, mode="window")
    assert run(window_model, x)[0].shape == (1, K, 1, 1)


def test_unsupported_head_op_names_node() -> None:
    b = Builder(13)
    y = gemm(b, b.node("Flatten", [trunk(b)], axis=1), D, K)
    b.nodes.append(onnx.helper.make_node("CumSum", [y, b.const("ax", np.asarray(1, np.int64))], ["cs"], name="my_cumsum"))
    original = b.model(image_shape(), ["cs"])
    with pytest.raises(onnxfcn.UnsupportedModelError, match="my_cumsum.*CumSum"):
        onnxfcn.convert(original)


def test_flatten_axis_2_is_refused() -> None:
    b = Builder(13)
    y = b.node("Flatten", [trunk(b)], axis=2, name="bad_flatten")
    y = b.node("MatMul", [y, b.weight("w", (36, K))])
    with pytest.raises(onnxfcn.UnsupportedModelError, match="bad_flatten.*axis=2"):
        onnxfcn.convert(b.model(image_shape(), [y]))


def test_gemm_transA_is_refused() -> None:
    """The transA check itself: the Gemm reads the flattened vector directly (1 x D, transposed
    to D x 1, times a 1 x K weight)."""
    b = Builder(13)
    y = b.node("Flatten", [trunk(b)], axis=1)
    y = b.node("Gemm", [y, b.weight("w", (1, K))], transA=1, name="gemm_ta")
    with pytest.raises(onnxfcn.UnsupportedModelError, match=r"gemm_ta.*transA=1"):
        onnxfcn.convert(b.model(image_shape(), [y]))


def test_every_blocker_is_reported() -> None:
    """Two heads, each refused at its own node: both are named, and a node that only reads a
    refused node is not reported again."""
    b = Builder(13)
    flat = b.node("Flatten", [trunk(b)], axis=1)
    y1 = b.node("Softmax", [gemm(b, flat, D, K)], axis=0, name="batch_softmax")
    y1 = b.node("Relu", [y1], name="after_softmax")
    y2 = gemm(b, flat, D, K)
    y2 = b.node("CumSum", [y2, b.const("ax", np.asarray(1, np.int64))], name="my_cumsum")
    model = b.model(image_shape(), [y1, y2])
    with pytest.raises(onnxfcn.UnsupportedModelError, match=r"batch_softmax.*and 1 more: my_cumsum") as info:
        onnxfcn.convert(model)
    assert [x.node for x in info.value.blockers] == ["batch_softmax", "my_cumsum"]  # type: ignore[attr-defined]
    plan = onnxfcn.inspect(model)
    assert [x["node"] for x in plan.blockers] == ["batch_softmax", "my_cumsum"]
    assert "axis=0" in str(plan.blockers[0]["reason"]) and "not supported" in str(plan.blockers[1]["reason"])


@pytest.mark.parametrize("equation", ["nc,ck->n", "nc,kc->kn", "nc,kc,kc->nk"])
def test_einsum_that_is_not_a_dense_layer_is_refused(equation: str) -> None:
    b = Builder(13)
    y = b.node("Flatten", [trunk(b)], axis=1)
    w = b.weight("w", (K, D))
    inputs = [y, w, w] if equation.count(",") == 2 else [y, w if "kc" in equation else b.weight("w2", (D, K))]
    y = b.node("Einsum", inputs, equation=equation, name="odd_einsum")
    with pytest.raises(onnxfcn.UnsupportedModelError, match="odd_einsum.*not a dense layer"):
        onnxfcn.convert(b.model(image_shape(), [y]))


def test_per_feature_constant_before_first_dense_is_refused() -> None:
    b = Builder(13)
    y = b.node("Flatten", [trunk(b)], axis=1)
    y = b.node("Mul", [y, b.weight("scale", (D,))], name="window_scale")
    y = gemm(b, y, D, K)
    with pytest.raises(onnxfcn.UnsupportedModelError, match="window_scale.*cannot slide"):
        onnxfcn.convert(b.model(image_shape(), [y]))


def test_gemm_weight_bytes_reused_not_copied() -> None:
    """transB=1 in NCHW order: the Conv weight is the Gemm weight with new dims, same bytes."""
    original = flatten_gemm()
    gemm_w = next(n for n in original.graph.node if n.op_type == "Gemm").input[1]
    converted, _ = onnxfcn.convert(original)
    before = next(t for t in original.graph.initializer if t.name == gemm_w)
    after = next(t for t in converted.graph.initializer if t.name == gemm_w)
    assert list(after.dims) == [16, C_FEAT, 6, 6]
    assert after.raw_data == before.raw_data
    assert abs(converted.ByteSize() - original.ByteSize()) < 4096


def test_computed_weights_stay_computed() -> None:
    """A ConstantOfShape weight is not materialized: no bloat."""
    original = weight_source("constantofshape")()
    converted, _ = onnxfcn.convert(original)
    assert converted.ByteSize() < 2 * original.ByteSize()
    assert any(n.op_type == "ConstantOfShape" for n in converted.graph.node)


def test_input_model_object_is_not_modified() -> None:
    original = flatten_gemm()
    snapshot = original.SerializeToString()
    onnxfcn.convert(original)
    assert original.SerializeToString() == snapshot


def test_dense_mode_on_a_flatten_head_slides_windows() -> None:
    """No global pool to drop: dense mode means the same as window mode, and says so."""
    converted, report = onnxfcn.convert(flatten_gemm(), mode="dense")
    assert report.mode == "window" and report.geometry.exact
    assert {p.key: p.value for p in converted.metadata_props}["onnxfcn.mode"] == "window"


def _dead(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Nodes that reach no output, and initializers no node reads."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output if o}
    live: set[str] = set()
    stack = [o.name for o in g.output]
    while stack:
        t = stack.pop()
        if t in live:
            continue
        live.add(t)
        if t in producer:
            stack.extend(i for i in producer[t].input if i)
    dead_nodes = [n.name for n in g.node if not any(o in live for o in n.output)]
    used = {i for n in g.node for i in n.input}
    return dead_nodes, [t.name for t in g.initializer if t.name not in used]


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_no_dead_weights_and_no_bloat(pattern: str) -> None:
    """Nothing the rewrite replaced stays behind, and the file grows by at most 1 % + 64 KB."""
    original = PATTERNS[pattern]()
    converted, _ = onnxfcn.convert(original, self_check=False)
    assert _dead(converted) == ([], [])
    assert converted.ByteSize() <= 1.01 * original.ByteSize() + 64 * 1024


def test_matmul_head_does_not_double_the_file() -> None:
    """A MatMul weight is stored transposed for the Conv: the original copy must go (it doubled files)."""
    b = Builder(13)
    y = b.node("MatMul", [b.node("Flatten", [trunk(b)], axis=1), b.weight("w", (D, 512))])
    original = b.model(image_shape(), [y])
    converted, _ = onnxfcn.convert(original)
    assert converted.ByteSize() <= 1.01 * original.ByteSize() + 64 * 1024
    assert _dead(converted) == ([], [])
