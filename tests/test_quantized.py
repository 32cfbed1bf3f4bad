"""onnxruntime's quantizer (QDQ and QOperator formats, reduce_range) on a Flatten head, a
global-pool head and a MatMul head, per channel and per tensor: each converts, keeps its int8
weights (reordered, never re-quantized), equals the original at the reference size and every
crop at a larger size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import C_FEAT, REF, Builder, flatten_gemm, gemm, image_shape, trunk
from helpers import run
from onnx import numpy_helper
from patterns import nhwc_keras, pooled
from quantize import quantize_qdq, shape
from typer.testing import CliRunner

import onnxfcn
from onnxfcn.cli import app

quantization = pytest.importorskip("onnxruntime.quantization")


def residual_gap() -> onnx.ModelProto:
    """A trunk that ends in a residual Add, then a global pool (ResNet's end). Quantized, the Add
    becomes com.microsoft QLinearAdd, whose output ONNX inference cannot type: the feature map's
    type comes from onnxruntime (this once made verify build an invalid head model)."""
    b = Builder(13)
    f = trunk(b)
    g = b.node("Conv", [f, b.weight("rw", (C_FEAT, C_FEAT, 1, 1)), b.weight("rb", (C_FEAT,), 0.1)], kernel_shape=[1, 1])
    y = b.node("GlobalAveragePool", [b.node("Relu", [b.node("Add", [f, g])])])
    return b.model(image_shape(), [gemm(b, b.node("Flatten", [y], axis=1), C_FEAT, 5)], out_names=["scores"])


MODELS = {"flatten_gemm": (flatten_gemm, "NCHW"), "gap_gemm": (pooled("GlobalAveragePool"), "NCHW"),
          "nhwc_matmul_softmax": (nhwc_keras, "NHWC"), "residual_gap": (residual_gap, "NCHW")}
FORMATS = ("QDQ", "QOperator")
CASES = [(m, pc, f) for f in FORMATS for m in MODELS for pc in (True, False)]
# onnxruntime runs this one's Softmax as QLinearSoftmax (a lookup table) on N x K in the original
# and on the map in the converted model; the two can round one output step apart (README).
ONE_STEP = {("nhwc_matmul_softmax", False, "QDQ")}








@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool, str], Path]:
    folder = tmp_path_factory.mktemp("quantized")
    out = {}
    for name, per_channel, fmt in CASES:
        build, layout = MODELS[name]
        dst = folder / f"{name}_{'channel' if per_channel else 'tensor'}_{fmt}.onnx"
        onnx.save(quantize_qdq(build(), layout, per_channel, fmt), dst)
        out[(name, per_channel, fmt)] = dst
    return out


def output_step(model: onnx.ModelProto) -> float:
    """The scale of the DequantizeLinear that produces the output (one quantization step)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer[model.graph.output[0].name]
    while node.op_type == "Identity":
        node = producer[node.input[0]]
    assert node.op_type == "DequantizeLinear"
    scale = next(t for t in model.graph.initializer if t.name == node.input[1])
    return float(numpy_helper.to_array(scale))


@pytest.mark.parametrize(("name", "per_channel", "fmt"), CASES,
                         ids=[f"{f}-{m}-{'channel' if c else 'tensor'}" for m, c, f in CASES])
def test_quantized_head_converts_and_matches(name: str, per_channel: bool, fmt: str,
                                             quantized: dict[tuple[str, bool, str], Path], tmp_path: Path) -> None:
    path = quantized[(name, per_channel, fmt)]
    original = onnx.load(path)
    layout = MODELS[name][1]
    converted, report = onnxfcn.convert(path)
    if fmt == "QDQ":  # QOperator's integer ops have no rounding model: compared by tolerance (exact here)
        assert report.self_check[0]["comparison"] == "rounding bound"
    allowed = output_step(original) * 1.0001 if (name, per_channel, fmt) in ONE_STEP else 0.0
    # The weights stay int8: every dense weight is a DequantizeLinear of an integer initializer
    # holding the original's values in another order.
    inits = {t.name: numpy_helper.to_array(t) for t in converted.graph.initializer}
    before = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    producer = {o: n for n in converted.graph.node for o in n.output}
    dense = [n for n in converted.graph.node if n.op_type in ("Conv", "QLinearConv") and "conv__fcn" in n.name]
    assert len(dense) == {"flatten_gemm": 2, "gap_gemm": 1, "nhwc_matmul_softmax": 2, "residual_gap": 1}[name]
    for conv in dense:
        if fmt == "QDQ":
            dq = producer[conv.input[1]]
            assert dq.op_type == "DequantizeLinear", conv.name
            q = inits[dq.input[0]]
        else:
            assert conv.op_type == "QLinearConv"
            q = inits[conv.input[3]]
        assert q.dtype == np.int8
        assert any(np.array_equal(np.sort(q, axis=None), np.sort(v, axis=None)) for v in before.values()
                   if v.dtype == np.int8 and v.size == q.size)
    # Reference size, batch 2: the original's outputs.
    x = np.random.default_rng(7).standard_normal(shape(layout, 2)).astype(np.float32)
    want = np.concatenate([run(original, x[n:n + 1])[0] for n in range(2)])
    got = run(converted, x)[0].reshape(want.shape)
    assert np.abs(got - want).max() <= allowed
    # A larger size: every cell equals the original on its crop (the trunk is padding-free).
    big = np.random.default_rng(8).standard_normal(shape(layout, 1, (5, 7))).astype(np.float32)
    y = run(converted, big)[0]
    assert y.shape[2:] == (3, 4)
    for i in range(3):
        for j in range(4):
            crop = (big[:, :, 2 * i:2 * i + REF, 2 * j:2 * j + REF] if layout == "NCHW"
                    else big[:, 2 * i:2 * i + REF, 2 * j:2 * j + REF, :])
            assert np.abs(run(original, crop)[0].reshape(-1) - y[0, :, i, j]).max() <= allowed, (i, j)
    # verify agrees (exit 0), on its own inputs.
    out = tmp_path / "fcn.onnx"
    onnx.save(converted, out)
    res = CliRunner().invoke(app, ["verify", str(path), str(out), "--size", "23x25"])
    assert res.exit_code == 0, res.output


def test_one_step_bound_still_catches_a_wrong_weight(quantized: dict[tuple[str, bool, str], Path]) -> None:
    """Control: with the int8 weight of the first dense layer reversed, verify fails although a
    quantization step of slack is allowed."""
    path = quantized[("flatten_gemm", True, "QDQ")]
    converted, _ = onnxfcn.convert(path)
    producer = {o: n for n in converted.graph.node for o in n.output}
    conv = next(n for n in converted.graph.node if n.op_type == "Conv" and "conv__fcn" in n.name)
    q = next(t for t in converted.graph.initializer if t.name == producer[conv.input[1]].input[0])
    q.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(q)[:, ::-1].copy(), q.name))
    assert not onnxfcn.verify(path, converted)
