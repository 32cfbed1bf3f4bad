"""The head patterns: one small classifier per construct a dense head is made of, on the
padding-free trunk of ``builders.py`` (test_rewrite, test_inspect, test_bounds, the interop tier)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from builders import C_FEAT, Builder, flatten_gemm, gap_softmax, gemm, image_shape, trunk

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


def reduce_sum_mean(opset: int = 13) -> Callable[[], onnx.ModelProto]:
    """jax2onnx's mean over H and W: ReduceSum (keepdims=0; axes an input from opset 13), then Div
    by the cell count."""
    def build() -> onnx.ModelProto:
        b = Builder(opset)
        f = trunk(b)
        if opset >= 13:
            y = b.node("ReduceSum", [f, b.ints("axes", [2, 3])], keepdims=0)
        else:
            y = b.node("ReduceSum", [f], axes=[2, 3], keepdims=0)
        y = b.node("Div", [y, b.const("cells", np.asarray(36.0, np.float32))])
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
    "reducesum_div": reduce_sum_mean(13),
    "reducesum_div_opset11": reduce_sum_mean(11),
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


AGREE = {**PATTERNS, "flatten_padded": lambda: flatten_gemm(padded=True),
         "gap_softmax_padded": lambda: gap_softmax(padded=True)}
