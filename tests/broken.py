"""Deliberately broken conversions: each a valid model that computes the wrong thing, which
verify must catch (test_verify, test_cli)."""

from __future__ import annotations

import numpy as np
import onnx
from builders import flatten_gemm, gap_softmax
from helpers import initializer_named, nth_node, set_attribute, set_initializer
from onnx import numpy_helper

import onnxfcn


# ---- deliberately broken conversions ------------------------------------------------------------
def broken_hw_order() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The first dense weight reshaped in the wrong order: (K, W, H, C) read as (K, C, H, W)."""
    original = flatten_gemm()
    conv, _ = onnxfcn.convert(original)
    wname = nth_node(conv, "Conv", 2).input[1]  # trunk has two Convs; the third is the first dense
    w = numpy_helper.to_array(initializer_named(conv, wname))
    k, c, h, wd = w.shape
    wrong = w.reshape(k, -1).reshape(k, wd, h, c).transpose(0, 3, 2, 1)  # h,w,c order, mis-read
    set_initializer(conv, wname, np.ascontiguousarray(wrong))
    return original, conv


def broken_bias_dropped() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    original = flatten_gemm()
    conv, _ = onnxfcn.convert(original)
    node = nth_node(conv, "Conv", 3)
    del node.input[2:]
    return original, conv


def broken_softmax_axis() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    original = gap_softmax()
    conv, _ = onnxfcn.convert(original)
    set_attribute(nth_node(conv, "Softmax"), "axis", 2)  # over out_height instead of classes
    return original, conv


def _window_mean(model: onnx.ModelProto) -> onnx.NodeProto:
    """The depthwise Conv that averages each feature window (the head's former global pool)."""
    return next(n for n in model.graph.node if n.op_type == "Conv" and n.name.startswith("window_mean"))


def broken_pool_off_by_one() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """A 5x5 window mean where the map is 6x6: a consistent, loadable mistake (kernel, weight
    shape and divisor all agree with each other, not with the map)."""
    original = gap_softmax()
    conv, _ = onnxfcn.convert(original)
    mean = _window_mean(conv)
    set_attribute(mean, "kernel_shape", [5, 5])
    fill = next(n for n in conv.graph.node if n.output[0] == mean.input[1])
    shape = initializer_named(conv, fill.input[0])
    c = int(numpy_helper.to_array(shape)[0])
    set_initializer(conv, fill.input[0], np.asarray([c, 1, 5, 5], np.int64))
    set_attribute(fill, "value", numpy_helper.from_array(np.asarray([1 / 25], np.float32), "value"))
    return original, conv


def broken_only_at_reference() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Right at the reference size, wrong elsewhere: the global pool left global."""
    original = gap_softmax()
    conv, _ = onnxfcn.convert(original)
    mean = _window_mean(conv)
    mean.op_type = "GlobalAveragePool"
    del mean.input[1:]
    del mean.attribute[:]
    return original, conv


BROKEN = {
    "wrong_hwc_order": broken_hw_order,
    "bias_dropped": broken_bias_dropped,
    "softmax_wrong_axis": broken_softmax_axis,
    "window_pool_off_by_one": broken_pool_off_by_one,
    "right_only_at_reference": broken_only_at_reference,
}
