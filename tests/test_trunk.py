"""Trunk generalization: shapes baked at the reference size are rebuilt from Shape."""

from __future__ import annotations

import pytest
from builders import C_FEAT, REF, Builder, gemm, image_shape
from helpers import LIGHT, assert_close, cells_vs_crops, rand, run
from trunks import full_slice_model, shuffle_model

import onnxfcn


def test_channel_shuffle_runs_at_any_size_and_batch() -> None:
    original = shuffle_model()
    converted, report = onnxfcn.convert(original)
    changed = {c.node for c in report.changes}
    assert {"shuffle_in", "shuffle_out"} <= changed
    assert len(report.self_check) == 3 and report.self_check[1]["batch"] == 2
    x = rand([3, 3, REF + 6, REF + 4])
    cells, crops = cells_vs_crops(original, converted, x, REF, 2)
    assert_close(cells, crops)


def test_light_shufflenet_generalized() -> None:
    converted, report = onnxfcn.convert(LIGHT / "light_shufflenet.onnx")
    assert sum("from Shape" in c.after for c in report.changes) == 32
    y = run(converted, rand([2, 3, 288, 320]))[0]
    assert y.shape == (2, 1000, 3, 4)


def test_reshape_moving_spatial_axes_is_refused() -> None:
    b = Builder(13)
    y = b.node("Conv", ["image", b.weight("w", (C_FEAT, 3, 3, 3))], kernel_shape=[3, 3])
    y = b.node("Reshape", [y, b.ints("s", [1, C_FEAT, (REF - 2) * (REF - 2) // 2, 2])], name="scramble")
    y = gemm(b, b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1), C_FEAT, 5)
    with pytest.raises(onnxfcn.UnsupportedModelError, match="scramble"):
        onnxfcn.convert(b.model(image_shape(), [y]))




@pytest.mark.parametrize("opset", [9, 13])
def test_full_extent_slice_is_generalized(opset: int) -> None:
    converted, report = onnxfcn.convert(full_slice_model(opset))
    assert any(c.node == "keep_all" for c in report.changes)
    assert run(converted, rand([1, 3, REF + 10, REF + 10]))[0].shape == (1, 5, 11, 11)


def test_cropping_slice_is_refused() -> None:
    b = Builder(13)
    y = b.node("Conv", ["image", b.weight("w", (C_FEAT, 3, 3, 3))], kernel_shape=[3, 3])
    y = b.node("Slice", [y, b.ints("st", [1]), b.ints("en", [REF - 3]), b.ints("ax", [2])], name="crop")
    y = gemm(b, b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1), C_FEAT, 5)
    with pytest.raises(onnxfcn.UnsupportedModelError, match="crop"):
        onnxfcn.convert(b.model(image_shape(), [y]))


def test_baked_expand_is_refused() -> None:
    b = Builder(13)
    y = b.node("Conv", ["image", b.weight("w", (C_FEAT, 3, 3, 3))], kernel_shape=[3, 3])
    bias = b.node("Expand", [b.weight("bias", (1, C_FEAT, 1, 1)), b.ints("shape", [1, C_FEAT, REF - 2, REF - 2])],
                  name="baked_bias")
    y = b.node("Add", [y, bias], name="add_bias")
    y = gemm(b, b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1), C_FEAT, 5)
    model = b.model(image_shape(), [y])
    # The Expand is constant: the Add that broadcasts it against the trunk is the node refused.
    with pytest.raises(onnxfcn.UnsupportedModelError, match="add_bias.*reference size 16x16"):
        onnxfcn.convert(model)
