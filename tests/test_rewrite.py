"""Every head pattern converts, and is proven numerically on onnxruntime.

For each pattern: the converted model equals the original at the reference size (max abs error
<= 1e-5 * max|y|), and, since the trunk here is padding-free, every cell of a larger image equals
the original classifier on its crop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
from builders import C_FEAT, REF, Builder, flatten_gemm, gemm, image_shape, trunk
from conftest import assert_close, cells_vs_crops, rand, run

import onnxfcn

D = C_FEAT * 6 * 6  # flattened features of the valid trunk
K = 5


def _finish(b: Builder, y: str, layout: str = "NCHW") -> onnx.ModelProto:
    return b.model(image_shape(layout), [y], out_names=["scores"])


def _flat(b: Builder, how: str) -> str:
    f = trunk(b)
    if how == "flatten":
        return b.node("Flatten", [f], axis=1)
    if how.startswith("reshape"):
        dims = {"reshape_1_-1": [1, -1], "reshape_-1_D": [-1, D], "reshape_0_-1": [0, -1], "reshape_1_D": [1, D]}[how]
        return b.node("Reshape", [f, b.ints("shape", dims)])
    if how == "view":  # x.view(x.size(0), -1) from the legacy PyTorch exporter
        s = b.node("Shape", [f])
        n = b.node("Gather", [s, b.const("zero", np.asarray(0, dtype=np.int64))], axis=0)
        n = b.node("Unsqueeze", [n, b.ints("axes", [0])]) if b.opset >= 13 else b.node("Unsqueeze", [n], axes=[0])
        shape = b.node("Concat", [n, b.ints("minus1", [-1])], axis=0)
        return b.node("Reshape", [f, shape])
    raise ValueError(how)


def flat_point(how: str, opset: int = 13) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        b = Builder(opset)
        y = gemm(b, _flat(b, how), D, K)
        return _finish(b, y)
    return build


def nhwc_keras() -> onnx.ModelProto:
    """tf2onnx style: NHWC input, Transpose in, Transpose to NHWC before the flatten, MatMul+Add."""
    b = Builder(13)
    x = b.node("Transpose", ["image"], perm=[0, 3, 1, 2])
    f = trunk(b, x)
    t = b.node("Transpose", [f], perm=[0, 2, 3, 1])
    y = b.node("Reshape", [t, b.ints("shape", [-1, D])])
    y = b.node("MatMul", [y, b.weight("w", (D, 16))])
    y = b.node("Add", [y, b.weight("b", (16,), 0.5)])
    y = b.node("Relu", [y])
    y = b.node("MatMul", [y, b.weight("w2", (16, K))])
    y = b.node("Add", [y, b.weight("b2", (K,), 0.5)])
    y = b.node("Softmax", [y], axis=-1)
    return _finish(b, y, "NHWC")


def nhwc_rescaling() -> onnx.ModelProto:
    """Keras's Rescaling and Normalization layers through tf2onnx (EfficientNet): Mul, Add and Div
    on the NHWC image (one constant a Constant node) before the Transpose to NCHW."""
    b = Builder(13)
    x = b.node("Mul", ["image", b.const("scale", np.full((1, 1, 1, 3), 1 / 255, np.float32))])
    x = b.node("Add", [x, b.const("offset", np.asarray([[[[0.1, -0.2, 0.3]]]], np.float32))])
    std = b.node("Constant", [], value=onnx.numpy_helper.from_array(np.asarray([0.2, 0.25, 0.3], np.float32), "std"))
    x = b.node("Div", [x, std])
    f = trunk(b, b.node("Transpose", [x], perm=[0, 3, 1, 2]))
    y = b.node("Reshape", [b.node("Transpose", [f], perm=[0, 2, 3, 1]), b.ints("shape", [-1, D])])
    return _finish(b, gemm(b, y, D, K), "NHWC")


def nhwc_keras_gap() -> onnx.ModelProto:
    """tf2onnx's GlobalAveragePooling2D: ReduceMean over axes 1, 2 of the NHWC map, keepdims=0."""
    b = Builder(13)
    x = b.node("Transpose", ["image"], perm=[0, 3, 1, 2])
    t = b.node("Transpose", [trunk(b, x)], perm=[0, 2, 3, 1])
    y = b.node("ReduceMean", [t], axes=[1, 2], keepdims=0)
    y = b.node("Add", [b.node("MatMul", [y, b.weight("w", (C_FEAT, K))]), b.weight("b", (K,), 0.5)])
    return _finish(b, b.node("Softmax", [y], axis=-1), "NHWC")


def reduce_flat(op: str = "ReduceMean", opset: int = 13, keepdims: int = 0) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        b = Builder(opset)
        f = trunk(b)
        axes_as_input = (op == "ReduceMean" and opset >= 18) or (op == "ReduceMax" and opset >= 18)
        if axes_as_input:
            y = b.node(op, [f, b.ints("axes", [2, 3])], keepdims=keepdims)
        else:
            y = b.node(op, [f], axes=[2, 3], keepdims=keepdims)
        if keepdims:
            y = b.node("Flatten", [y], axis=1)
        return _finish(b, gemm(b, y, C_FEAT, K))
    return build


def pooled(pool: str, flatten: str = "flatten", opset: int = 13) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        b = Builder(opset)
        f = trunk(b)
        if pool in ("GlobalAveragePool", "GlobalMaxPool"):
            y = b.node(pool, [f])
        elif pool == "AveragePool7":  # the model zoo's ResNet: a pool whose kernel covers the map
            y = b.node("AveragePool", [f], kernel_shape=[6, 6], strides=[1, 1])
        elif pool == "MaxPoolFull":
            y = b.node("MaxPool", [f], kernel_shape=[6, 6], strides=[6, 6])
        elif pool == "AdaptiveIdentity":  # torchvision AdaptiveAvgPool2d on a same-size map: kernel 1
            y = b.node("AveragePool", [f], kernel_shape=[1, 1], strides=[1, 1])
            y = b.node("Flatten", [y], axis=1)
            return _finish(b, gemm(b, y, D, K))
        else:
            raise ValueError(pool)
        if flatten == "flatten":
            y = b.node("Flatten", [y], axis=1)
        elif flatten == "reshape":
            y = b.node("Reshape", [y, b.ints("shape", [1, C_FEAT])])
        elif flatten == "squeeze":
            y = b.node("Squeeze", [y, b.ints("axes", [2, 3])])
        return _finish(b, gemm(b, y, C_FEAT, K))
    return build


def dense(trans_b: int = 1, bias: str = "k", alpha: float = 1.0, beta: float = 1.0) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        b = Builder(13)
        y = b.node("Flatten", [trunk(b)], axis=1)
        return _finish(b, gemm(b, y, D, K, trans_b=trans_b, bias=bias, alpha=alpha, beta=beta))
    return build


def weight_source(kind: str) -> Callable[[], onnx.ModelProto]:
    """Weights reached through Constant, Identity, Transpose, Cast or ConstantOfShape."""
    def build() -> onnx.ModelProto:
        b = Builder(13)
        y = b.node("Flatten", [trunk(b)], axis=1)
        w_val = (b.rng.standard_normal((K, D)) / np.sqrt(D)).astype(np.float32)
        bias = b.weight("bias", (K,), 0.5)
        if kind == "constant":
            w = b.node("Constant", [], value=onnx.numpy_helper.from_array(w_val, "w"))
        elif kind == "identity":
            w = b.node("Identity", [b.const("w", w_val)])
            bias = b.node("Identity", [bias])  # the PyTorch exporter's deduplicated bias
        elif kind == "transpose":
            w = b.node("Transpose", [b.const("wt", w_val.T.copy())], perm=[1, 0])
        elif kind == "cast":
            w = b.node("Cast", [b.const("w16", w_val.astype(np.float16))], to=onnx.TensorProto.FLOAT)
        elif kind == "constantofshape":  # as in the light zoo graphs: a tiny input, a big weight
            w = b.node("ConstantOfShape", [b.ints("wshape", [K, D])],
                       value=onnx.helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.01]))
        else:
            raise ValueError(kind)
        return _finish(b, b.node("Gemm", [y, w, bias], transB=1))
    return build


def between(op: str, opset: int = 13) -> Callable[[], onnx.ModelProto]:
    """Flatten -> Gemm(16) -> OP -> Gemm(K)."""
    def build() -> onnx.ModelProto:
        b = Builder(opset)
        y = b.node("Flatten", [trunk(b)], axis=1)
        y = gemm(b, y, D, 16)
        per_feature = b.rng.uniform(0.5, 1.5, (16,)).astype(np.float32)
        if op == "PRelu":
            y = b.node("PRelu", [y, b.const("slope", per_feature * 0.1)])
        elif op == "Clip":
            if opset >= 11:
                y = b.node("Clip", [y, b.const("lo", np.asarray(-0.5, np.float32)), b.const("hi", np.asarray(0.8, np.float32))])
            else:
                y = b.node("Clip", [y], min=-0.5, max=0.8)
        elif op in ("Mul", "Add", "Sub", "Div"):
            y = b.node(op, [y, b.const("c", per_feature)])
        elif op == "Sub_const_first":
            y = b.node("Sub", [b.const("c", per_feature.reshape(1, 16)), y])
        elif op == "BatchNormalization":
            y = b.node("BatchNormalization", [y, b.const("s", per_feature), b.const("bb", per_feature - 1),
                                              b.const("m", per_feature * 0.1), b.const("v", per_feature)])
        elif op == "LayerNormalization":
            y = b.node("LayerNormalization", [y, b.const("s", per_feature), b.const("bb", per_feature - 1)], axis=-1)
        elif op == "Dropout":
            y = b.node("Dropout", [y]) if opset >= 12 else b.node("Dropout", [y], ratio=0.3)
        elif op == "LeakyRelu":
            y = b.node(op, [y], alpha=0.2)
        elif op == "Gelu":
            y = b.node(op, [y], approximate="tanh")
        else:
            y = b.node(op, [y])
        return _finish(b, gemm(b, y, 16, K))
    return build


def final(op: str, opset: int = 13, **attrs: Any) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        b = Builder(opset)
        y = gemm(b, b.node("Flatten", [trunk(b)], axis=1), D, K)
        if op == "TopK":
            k = b.ints("k", [3])
            values = b.node("TopK", [y, k], n_out=2, axis=-1)
            return _finish(b, values)
        y = b.node(op, [y], **attrs)
        return _finish(b, y)
    return build


def vgg_chain() -> onnx.ModelProto:
    b = Builder(13)
    y = b.node("Flatten", [trunk(b)], axis=1)
    for d_in, d_out in ((D, 32), (32, 32)):
        y = b.node("Dropout", [b.node("Relu", [gemm(b, y, d_in, d_out)])])
    return _finish(b, b.node("Softmax", [gemm(b, y, 32, K)], axis=1))


def two_heads() -> onnx.ModelProto:
    """Scores and boxes sharing one trunk."""
    b = Builder(13)
    flat = b.node("Flatten", [trunk(b)], axis=1)
    scores = b.node("Softmax", [gemm(b, flat, D, K)], axis=1)
    boxes = b.node("Sigmoid", [gemm(b, b.node("Relu", [gemm(b, flat, D, 16)]), 16, 4)])
    return b.model(image_shape(), [scores, boxes], out_names=["scores", "boxes"])


def einsum(equation: str, bias: bool = True) -> Callable[[], onnx.ModelProto]:
    """A dense layer written as Einsum (weight K x D or D x K), then an optional Add."""
    def build() -> onnx.ModelProto:
        b = Builder(13)
        y = b.node("Flatten", [trunk(b)], axis=1)
        wkd = equation.split(",")[1].split("-")[0] in ("kc", "ji")
        y = b.node("Einsum", [y, b.weight("w", (K, D) if wkd else (D, K))], equation=equation)
        if bias:
            y = b.node("Add", [y, b.weight("bias", (K,), 0.5)])
        return _finish(b, y)
    return build


PATTERNS: dict[str, Callable[[], onnx.ModelProto]] = {
    "flatten": flat_point("flatten"),
    "reshape_1_-1": flat_point("reshape_1_-1"),
    "reshape_-1_D": flat_point("reshape_-1_D"),
    "reshape_0_-1": flat_point("reshape_0_-1"),
    "reshape_1_D": flat_point("reshape_1_D"),
    "view_subgraph": flat_point("view"),
    "view_subgraph_opset11": flat_point("view", 11),
    "nhwc_keras": nhwc_keras,
    "nhwc_keras_gap": nhwc_keras_gap,
    "nhwc_rescaling": nhwc_rescaling,
    "reducemean_keepdims0": reduce_flat("ReduceMean", 13, 0),
    "reducemean_keepdims0_opset18": reduce_flat("ReduceMean", 18, 0),
    "reducemean_attr": reduce_flat("ReduceMean", 13, 1),
    "reducemean_input": reduce_flat("ReduceMean", 18, 1),
    "reducemax_attr": reduce_flat("ReduceMax", 13, 1),
    "reducemax_input": reduce_flat("ReduceMax", 18, 1),
    "gap_flatten": pooled("GlobalAveragePool"),
    "gmp_flatten": pooled("GlobalMaxPool"),
    "gap_reshape": pooled("GlobalAveragePool", "reshape"),
    "gap_squeeze": pooled("GlobalAveragePool", "squeeze"),
    "avgpool_full_map": pooled("AveragePool7", "reshape"),
    "maxpool_full_map": pooled("MaxPoolFull"),
    "adaptive_kernel1": pooled("AdaptiveIdentity"),
    "gemm_transB0": dense(trans_b=0),
    "gemm_alpha_beta": dense(alpha=0.5, beta=2.0),
    "gemm_alpha_transB0": dense(trans_b=0, alpha=1.5, beta=0.25),
    "gemm_bias_1k": dense(bias="1k"),
    "gemm_bias_scalar": dense(bias="scalar", beta=3.0),
    "gemm_no_bias": dense(bias="none"),
    "weight_constant": weight_source("constant"),
    "weight_identity": weight_source("identity"),
    "weight_transpose": weight_source("transpose"),
    "weight_cast": weight_source("cast"),
    "weight_constantofshape": weight_source("constantofshape"),
    **{f"between_{op}": between(op) for op in (
        "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "Tanh", "HardSigmoid", "Clip",
        "Mul", "Add", "Sub", "Div", "Sub_const_first", "BatchNormalization", "Dropout", "Identity")},
    "between_HardSwish_opset14": between("HardSwish", 14),
    "between_Gelu_opset20": between("Gelu", 20),
    "between_LayerNormalization": between("LayerNormalization", 17),
    "between_Clip_opset9": between("Clip", 9),
    "between_Dropout_opset7": between("Dropout", 7),
    "between_Dropout_opset10": between("Dropout", 10),
    "softmax_opset13": final("Softmax", 13, axis=1),
    "softmax_opset11": final("Softmax", 11, axis=1),
    "softmax_opset9_default_axis": final("Softmax", 9),
    "logsoftmax_opset11": final("LogSoftmax", 11, axis=-1),
    "logsoftmax_opset13": final("LogSoftmax", 13, axis=-1),
    "hardmax_opset11": final("Hardmax", 11, axis=1),
    "hardmax_opset13": final("Hardmax", 13, axis=-1),
    "argmax_keepdims": final("ArgMax", 13, axis=1, keepdims=1),
    "argmax_no_keepdims": final("ArgMax", 13, axis=-1, keepdims=0),
    "topk": final("TopK", 13),
    "vgg_chain": vgg_chain,
    "einsum_nc_kc": einsum("nc,kc->nk"),
    "einsum_nc_ck_no_bias": einsum("nc,ck->nk", bias=False),
    "einsum_ellipsis": einsum("...i,ji->...j"),
}


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
