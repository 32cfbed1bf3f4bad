"""Head matching: the image input, tensor states, heads and fan-out."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from builders import Builder, flatten_gemm, gemm, image_shape, trunk

from onnxfcn.errors import AlreadyConvolutionalError, UnsupportedModelError
from onnxfcn.head import TensorState, analyze, find_image_input


def test_image_input_nchw_and_size() -> None:
    img = find_image_input(flatten_gemm())
    assert (img.layout, img.height, img.width, img.channels) == ("NCHW", 18, 18, 3)


def test_image_input_nhwc_detected_from_transpose() -> None:
    b = Builder(13)
    x = b.node("Transpose", ["image"], perm=[0, 3, 1, 2])
    y = gemm(b, b.node("Flatten", [trunk(b, x)], axis=1), 288, 4)
    img = find_image_input(b.model(image_shape("NHWC"), [y]))
    assert img.layout == "NHWC" and (img.height, img.width, img.channels) == (18, 18, 3)


def test_layout_found_through_preprocessing_not_the_first_consumer() -> None:
    """Keras's Rescaling/Normalization (Mul, Add, Div on the NHWC image) come before the Transpose:
    the layout is read where the data first meets a layout, not off the first consumer."""
    from patterns import nhwc_rescaling

    img = find_image_input(nhwc_rescaling())
    assert (img.layout, img.height, img.width, img.channels) == ("NHWC", 18, 18, 3)


def test_elementwise_with_another_input_is_not_looked_through() -> None:
    """An Add of a second graph input is not preprocessing: the walk stops there (NCHW default)."""
    b = Builder(13)
    x = b.node("Add", ["image", "bias_map"])
    y = gemm(b, b.node("Flatten", [trunk(b, b.node("Transpose", [x], perm=[0, 3, 1, 2]))], axis=1), 288, 4)
    graph = onnx.helper.make_graph(
        b.nodes, "g", [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, image_shape("NHWC")),
                       onnx.helper.make_tensor_value_info("bias_map", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, None)], b.inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
    assert find_image_input(model, "image").layout == "NCHW"


def test_dynamic_spatial_input_needs_size() -> None:
    b = Builder(13)
    y = b.node("GlobalAveragePool", [trunk(b)])
    model = b.model(["N", 3, "H", "W"], [gemm(b, b.node("Flatten", [y], axis=1), 8, 4)])
    with pytest.raises(UnsupportedModelError, match="--size"):
        find_image_input(model)
    img = find_image_input(model, size=(18, 18))
    assert (img.height, img.width) == (18, 18)


def test_states_and_head_nodes() -> None:
    model = flatten_gemm()
    a = analyze(model, find_image_input(model))
    assert len(a.heads) == 1
    head = a.heads[0]
    assert [n.op_type for n in head.nodes] == ["Flatten", "Gemm", "Relu", "Gemm", "Identity"]
    assert a.info[head.features[0]].state is TensorState.SPATIAL
    assert a.info[head.outputs[0]].state is TensorState.FLAT


def test_two_outputs_sharing_a_flatten_are_one_head() -> None:
    b = Builder(13)
    flat = b.node("Flatten", [trunk(b)], axis=1)
    model = b.model(image_shape(), [gemm(b, flat, 288, 4), gemm(b, flat, 288, 2)])
    a = analyze(model, find_image_input(model))
    assert len(a.heads) == 1 and len(a.heads[0].outputs) == 2


def test_already_fully_convolutional() -> None:
    b = Builder(13)
    model = b.model(image_shape(), [trunk(b)])
    with pytest.raises(AlreadyConvolutionalError):
        analyze(model, find_image_input(model))


def test_no_image_input() -> None:
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", 1, [2, 5])],
                                   [onnx.helper.make_tensor_value_info("y", 1, [2, 5])])
    with pytest.raises(UnsupportedModelError, match="no image input"):
        find_image_input(onnx.helper.make_model(graph))


def test_unknown_collapsing_op_is_refused_not_called_convolutional(tmp_path: Path) -> None:
    """A global pool from a domain the tool does not know: refused (exit 2) naming the node, never
    'already fully convolutional' (exit 3), because the output is N x K, not a map."""
    from typer.testing import CliRunner

    from onnxfcn.cli import app

    b = Builder(13)
    y = b.node("GlobalAveragePool", [trunk(b)], name="vendor_pool")
    y = gemm(b, b.node("Flatten", [y], axis=1), 8, 5)
    model = b.model(image_shape(), [y], out_names=["logits"])
    pool = next(n for n in model.graph.node if n.name == "vendor_pool")
    pool.domain, pool.op_type = "vendor.ops", "FancyPool"
    model.opset_import.append(onnx.helper.make_opsetid("vendor.ops", 1))
    src = tmp_path / "f.onnx"
    onnx.save(model, src)
    res = CliRunner().invoke(app, ["convert", str(src), "-o", str(tmp_path / "fcn.onnx")])
    assert res.exit_code == 2, res.output
    assert "vendor_pool" in res.output and "FancyPool (vendor.ops)" in res.output and "already" not in res.output
    assert not (tmp_path / "fcn.onnx").exists()


def _symbolic_channels(model: onnx.ModelProto, axis: int) -> onnx.ModelProto:
    dim = model.graph.input[0].type.tensor_type.shape.dim[axis]
    dim.Clear()
    dim.dim_param = "num_channels"
    return model


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_symbolic_channel_count_comes_from_the_first_convolution(layout: str) -> None:
    """optimum leaves the channel dim symbolic: the first Conv's weight (C/group) fixes it, looking
    through the layout Transpose (Keras) or a Pad (Hugging Face's EfficientNet)."""
    b = Builder(13)
    if layout == "NHWC":
        x = b.node("Transpose", ["image"], perm=[0, 3, 1, 2])
    else:
        x = b.node("Pad", ["image", b.ints("pads", [0, 0, 0, 0, 0, 0, 0, 0])])
    y = gemm(b, b.node("Flatten", [trunk(b, x)], axis=1), 288, 4)
    model = _symbolic_channels(b.model(image_shape(layout), [y]), 1 if layout == "NCHW" else 3)
    img = find_image_input(model)
    assert (img.layout, img.channels, img.height, img.width) == (layout, 3, 18, 18)


def test_symbolic_channel_count_without_a_convolution_is_refused() -> None:
    b = Builder(13)
    y = gemm(b, b.node("Flatten", [b.node("GlobalAveragePool", ["image"])], axis=1), 3, 4)
    model = _symbolic_channels(b.model(image_shape(), [y]), 1)
    with pytest.raises(UnsupportedModelError, match="no fixed channel count, and no convolution reading it fixes one"):
        find_image_input(model)
