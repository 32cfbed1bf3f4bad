"""Small classifiers built node by node, one per head pattern, with seeded random weights.

Trunk: 3x18x18 image -> Conv 3x3 -> Relu -> MaxPool 2 -> Conv 3x3 -> 8x6x6 feature map, total
stride 2. ``padded=True`` gives the convolutions zero padding (8x9x9 map) so crops are inexact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from helpers import run
from onnx import helper, numpy_helper

REF = 18
C_FEAT = 8


class Builder:
    def __init__(self, opset: int = 13, seed: int = 0, dtype: Any = np.float32) -> None:
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def weight(self, hint: str, shape: tuple[int, ...], scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        s = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
        return self.const(hint, (self.rng.standard_normal(shape) * s).astype(self.dtype))

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(self, hint: str, values: list[int]) -> str:
        return self.const(hint, np.asarray(values, dtype=np.int64))

    def node(self, op: str, inputs: list[str], n_out: int = 1, name: str | None = None, **attrs: Any) -> str:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name or self.name(op), **attrs))
        return outs[0]

    def model(self, x_shape: list[Any], outputs: list[str], x_name: str = "image",
              ir_version: int | None = None, out_names: list[str] | None = None) -> onnx.ModelProto:
        elem = helper.np_dtype_to_tensor_dtype(self.dtype)
        outs = []
        for k, o in enumerate(outputs):
            final = (out_names or [])[k] if out_names else None
            if final:
                self.nodes.append(helper.make_node("Identity", [o], [final], name=self.name("out")))
                o = final
            outs.append(helper.make_tensor_value_info(o, 0, None))
        graph = helper.make_graph(self.nodes, "classifier", [helper.make_tensor_value_info(x_name, elem, x_shape)],
                                  outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = ir_version or min(helper.find_min_ir_version_for([helper.make_opsetid("", self.opset)]) + 1, 10)
        inferred = onnx.shape_inference.infer_shapes(model)
        # Give the outputs their inferred types, as exporters do.
        by_name = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for o in model.graph.output:
            if o.name in by_name and by_name[o.name].type.tensor_type.HasField("shape"):
                o.CopyFrom(by_name[o.name])
            else:  # inference could not follow (opset-11 view subgraph): N x K, as exporters write it
                o.CopyFrom(helper.make_tensor_value_info(o.name, elem, [None, None]))
        onnx.checker.check_model(model, full_check=True)
        return model


def trunk(b: Builder, x: str = "image", padded: bool = False) -> str:
    """3x18x18 -> 8x6x6 (valid) or 8x9x9 (padded); stride 2."""
    pads = [1, 1, 1, 1] if padded else [0, 0, 0, 0]
    y = b.node("Conv", [x, b.weight("c1w", (6, 3, 3, 3)), b.weight("c1b", (6,), 0.1)], kernel_shape=[3, 3], pads=pads)
    y = b.node("Relu", [y])
    y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.node("Conv", [y, b.weight("c2w", (C_FEAT, 6, 3, 3)), b.weight("c2b", (C_FEAT,), 0.1)], kernel_shape=[3, 3],
               pads=pads)
    return b.node("Relu", [y])


def feature_hw(padded: bool) -> int:
    return 9 if padded else 6


def gemm(b: Builder, x: str, d: int, k: int, trans_b: int = 1, bias: str = "k", alpha: float = 1.0,
         beta: float = 1.0) -> str:
    w = b.weight("fcw", (k, d) if trans_b else (d, k))
    inputs = [x, w]
    if bias == "k":
        inputs.append(b.weight("fcb", (k,), 0.5))
    elif bias == "1k":
        inputs.append(b.weight("fcb", (1, k), 0.5))
    elif bias == "scalar":
        inputs.append(b.const("fcb", np.asarray(0.7, dtype=b.dtype)))
    attrs: dict[str, Any] = {"transB": trans_b}
    if alpha != 1.0:
        attrs["alpha"] = alpha
    if beta != 1.0:
        attrs["beta"] = beta
    return b.node("Gemm", inputs, **attrs)


def flatten_gemm(opset: int = 13, padded: bool = False, k: int = 5, dtype: Any = np.float32,
                 seed: int = 0) -> onnx.ModelProto:
    """The basic pattern: trunk -> Flatten -> Gemm -> Relu -> Gemm."""
    b = Builder(opset, seed, dtype)
    f = trunk(b, padded=padded)
    hw = feature_hw(padded)
    y = b.node("Flatten", [f], axis=1)
    y = gemm(b, y, C_FEAT * hw * hw, 16)
    y = b.node("Relu", [y])
    y = gemm(b, y, 16, k)
    return b.model([1, 3, REF, REF], [y], out_names=["scores"])


def image_shape(layout: str = "NCHW", batch: Any = 1) -> list[Any]:
    return [batch, 3, REF, REF] if layout == "NCHW" else [batch, REF, REF, 3]


def wide(dtype: Any = np.float32, seed: int = 0) -> onnx.ModelProto:
    """Trunk -> Flatten -> 288x1024 -> Relu -> 1024x300: two weights over 1 MB, logits of std ~3."""
    b = Builder(13, seed, dtype)
    y = b.node("Flatten", [trunk(b)], axis=1)
    y = b.node("Relu", [gemm(b, y, 288, 1024)])
    b.inits[-2].doc_string = "a field after raw_data"  # the weight: doc_string (12) follows raw_data (9)
    return b.model(["N", 3, 18, 18], [gemm(b, y, 1024, 300, alpha=4.0)], out_names=["logits"])


def gap_softmax(padded: bool = False, opset: int = 13) -> onnx.ModelProto:
    b = Builder(opset)
    y = b.node("GlobalAveragePool", [trunk(b, padded=padded)])
    y = gemm(b, b.node("Flatten", [y], axis=1), 8, 5)
    return b.model(image_shape(), [b.node("Softmax", [y], axis=1)], out_names=["probs"])


def realistic(model: onnx.ModelProto, std: float = 4.0) -> onnx.ModelProto:
    """Scale the last Gemm so the logits on standard-normal images have this std (>= 2, as real ones)."""
    rng = np.random.default_rng(5)
    logits = np.concatenate([run(model, rng.standard_normal((1, 3, REF, REF)).astype(np.float32))[0] for _ in range(16)])
    k = std / float(logits.std())
    last = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    inits = {t.name: t for t in model.graph.initializer}
    for name in last.input[1:]:
        t = inits[name]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(k), name))
    return model


def channel_means(window: int = 32, stride: int = 4, weights: tuple[float, ...] = (10.0, 20.0, 30.0)) -> onnx.ModelProto:
    """A patch classifier whose scores are known in closed form: class c is ``weights[c]`` times the
    mean of channel c over the window (an average pool of stride ``stride``, then a global pool)."""
    b = Builder(13)
    y = b.node("AveragePool", ["image"], kernel_shape=[stride, stride], strides=[stride, stride])
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)
    w = b.const("means_w", np.diag(np.asarray(weights, np.float32)))
    return b.model([1, 3, window, window], [b.node("Gemm", [y, w], transB=1)], out_names=["scores"])


def tissue(height: int, width: int, seed: int = 0, background: float = 2 / 3) -> np.ndarray:
    """An RGB slide: coloured, textured tissue in blobs over white glass (about ``background`` of
    the area), as uint8 H x W x 3."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    field = np.zeros((height, width), np.float32)
    for _ in range(6):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.1, 0.3) * min(height, width)
        field = np.maximum(field, 1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)
    cut = np.quantile(field, background)
    inside = field > cut
    texture = 0.5 + 0.5 * np.sin(yy / 3.1 + rng.uniform(0, 6)) * np.cos(xx / 4.7)
    rgb = np.stack([150 + 80 * texture, 60 + 90 * (1 - texture), 140 + 60 * texture], axis=2)
    noise = rng.integers(0, 12, (height, width, 3))
    glass = 242 + rng.integers(0, 10, (height, width, 1))
    return np.where(inside[..., None], rgb + noise, glass).clip(0, 255).astype(np.uint8)
