"""The Keras tier: real tf.keras models exported by tf2onnx (tests/make_keras_models.py, committed
with their large weights zeroed), filled here with seeded weights at a realistic scale, then
converted and proven: exact cells for the padding-free one, verify's three checks for all."""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import pytest
from helpers import ROOT, assert_close, cells_vs_crops, fill_zeroed_weights, run
from onnx import numpy_helper

import onnxfcn
from onnxfcn.errors import OnnxFcnError

pytestmark = pytest.mark.keras

KERAS = ROOT / "tests" / "data" / "keras"
NAMES = ["sequential_valid", "vgg_flatten", "mobilenetv2_035", "efficientnetb0", "vgg_flatten_dynamic"]
SIZES = {"sequential_valid": 24, "vgg_flatten": 32, "mobilenetv2_035": 96, "efficientnetb0": 64,
         "vgg_flatten_dynamic": 32}


def logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The last dense layer's output (before any Softmax), one image at a time."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    last = [n for n in probe.graph.node if n.op_type == "MatMul"][-1]
    add = next((n for n in probe.graph.node if n.op_type == "Add" and last.output[0] in n.input), None)
    del probe.graph.output[:]
    probe.graph.output.append(onnx.helper.make_tensor_value_info((add or last).output[0], onnx.TensorProto.FLOAT, None))
    return np.concatenate([run(probe, x[k:k + 1])[0] for k in range(len(x))])


def realistic(name: str) -> onnx.ModelProto:
    """The committed export with its zeroed weights filled (He scale, seeded), the last dense layer
    scaled so that logits on random images have std 4."""
    model = onnx.load(KERAS / f"{name}.onnx")
    fill_zeroed_weights(model, zlib.crc32(name.encode()))
    last = [n for n in model.graph.node if n.op_type == "MatMul"][-1]
    size = SIZES[name]
    x = np.random.default_rng(1).uniform(0, 1, (8, size, size, 3)).astype(np.float32)
    if name == "efficientnetb0":
        x *= 255  # its Rescaling layer expects pixels
    k = np.float32(4.0 / float(logits(model, x).std()))
    inits = {t.name: t for t in model.graph.initializer}
    # (Keras initialises biases to zero, and tf2onnx drops an Add of zeros: there may be none.)
    bias_add = next((n for n in model.graph.node if n.op_type == "Add" and last.output[0] in n.input), None)
    for name_ in (last.input[1], *[i for i in (bias_add.input if bias_add else []) if i in inits]):
        inits[name_].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[name_]) * k, name_))
    return model


def test_committed_files_have_their_script() -> None:
    assert (ROOT / "tests" / "make_keras_models.py").exists()
    for name in NAMES:
        assert "tf2onnx" in onnx.load(KERAS / f"{name}.onnx", load_external_data=False).producer_name


@pytest.mark.parametrize("name", NAMES)
def test_keras_model_converts_and_verifies(name: str) -> None:
    model = realistic(name)
    size = SIZES[name]
    dynamic = name.endswith("dynamic")
    conv, report = onnxfcn.convert(model, size=(size, size) if dynamic else None)
    assert report.image.layout == "NHWC" and (report.image.height, report.image.width) == (size, size)
    result = onnxfcn.verify(model, conv, sizes=[(size + 2 * 32 + 5, size + 32 + 3)], positions="all")
    assert result, result.reason
    x = np.random.default_rng(2).uniform(0, 1, (4, size, size, 3)).astype(np.float32)
    assert float(logits(model, x * (255 if name == "efficientnetb0" else 1)).std()) >= 2  # realistic magnitudes


def test_efficientnet_layout_comes_from_the_data() -> None:
    """Its NHWC image goes through Keras's Rescaling and Normalization (Mul/Add/Sub/Div) before
    the Transpose: the layout and the reference size must come from where H and W go."""
    model = realistic("efficientnetb0")
    ops = [n.op_type for n in model.graph.node]
    assert ops.index("Transpose") > 0 and ops[0] == "Mul"
    plan = onnxfcn.inspect(model)
    assert bool(plan)
    conv, report = onnxfcn.convert(model)
    assert (report.image.layout, report.image.height, report.image.width) == ("NHWC", 64, 64)


def test_padding_free_sequential_cells_equal_crops() -> None:
    model = realistic("sequential_valid")
    conv, report = onnxfcn.convert(model)
    assert report.geometry.exact and report.geometry.stride == (2, 2)
    x = np.random.default_rng(3).uniform(0, 1, (2, 31, 34, 3)).astype(np.float32)
    cells, crops = cells_vs_crops(model, conv, x, 24, 2, layout="NHWC")
    assert cells.shape[0] == 4 * 6
    assert_close(cells, crops, rel=1e-5)


def test_dynamic_export_needs_a_size_and_keeps_same_upper() -> None:
    model = realistic("vgg_flatten_dynamic")
    autos = {onnx.helper.get_attribute_value(a) for n in model.graph.node if n.op_type == "Conv"
             for a in n.attribute if a.name == "auto_pad"}
    assert autos == {b"SAME_UPPER"}
    with pytest.raises(OnnxFcnError, match="--size"):
        onnxfcn.convert(model)
    conv, _ = onnxfcn.convert(model, size=(32, 32))
    # Odd sizes: SAME_UPPER pads depend on the size; verify checks cells there too.
    assert onnxfcn.verify(model, conv, sizes=[(45, 51), (64, 41)], positions="all")
