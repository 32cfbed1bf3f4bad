"""Trunk generalization: shapes baked at the reference size are rebuilt from Shape."""

from __future__ import annotations

import numpy as np
import pytest
from builders import C_FEAT, REF, Builder, gemm, image_shape, realistic
from helpers import LIGHT, assert_close, cells_vs_crops, rand, run
from trunks import (
    computed_pad_model,
    full_slice_model,
    grn_model,
    group_norm_model,
    map_statistic_model,
    radix_split_model,
    resize_to_map_model,
    se_linear_model,
    shuffle_model,
    space_to_depth_model,
)

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


@pytest.mark.parametrize("batch_in_shape", [True, False])
def test_squeeze_excitation_through_linear_layers(batch_in_shape: bool) -> None:
    """The pooled vectors flattened for a Linear carry the pool: no padding anywhere, yet the cells
    see the whole image (the report once called this model exact). The batch of 1 the export wrote
    into the views becomes the input's."""
    original = realistic(se_linear_model(batch_in_shape))
    converted, report = onnxfcn.convert(original)
    assert not report.geometry.exact
    assert any("global pooling inside the trunk (se_pool)" in r for r in report.geometry.reasons), report.geometry.reasons
    assert {c.node for c in report.changes} >= ({"se_view", "se_unview"} if batch_in_shape else set())
    x = rand([3, 3, REF, REF])
    want = [run(original, x[i:i + 1])[0][0] for i in range(3)]
    assert_close(run(converted, x)[0][:, :, 0, 0], want)  # batch 3 at the reference size
    assert run(converted, rand([3, 3, REF + 6, REF + 4]))[0].shape == (3, 5, 4, 3)


def test_radix_split_attention() -> None:
    """ResNeSt's split attention: the radix axis summed away (the map's axes follow the lost axis)
    and the gate's batch-1 views generalized."""
    original = realistic(radix_split_model())
    converted, report = onnxfcn.convert(original)
    assert any("radix_pool" in r for r in report.geometry.reasons)
    assert {"radix_split", "rsoftmax_view", "rsoftmax_flat", "gate_view"} <= {c.node for c in report.changes}
    x = rand([3, 3, REF, REF])
    want = [run(original, x[i:i + 1])[0][0] for i in range(3)]
    assert_close(run(converted, x)[0][:, :, 0, 0], want)
    assert run(converted, rand([2, 3, REF + 4, REF + 8]))[0].shape == (2, 5, 3, 5)


def test_unsqueeze_and_squeeze_of_the_map_follow_its_axes() -> None:
    """A map given a leading axis and squeezed back (exporters' keepdims dance) keeps H and W."""
    b = Builder(13)
    y = b.node("Conv", ["image", b.weight("w", (C_FEAT, 3, 3, 3))], kernel_shape=[3, 3])
    y = b.node("Unsqueeze", [y, b.ints("a", [1])], name="lift")
    y = b.node("Squeeze", [b.node("Relu", [y]), b.ints("a2", [1])], name="drop")
    y = gemm(b, b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1), C_FEAT, 5)
    original = realistic(b.model(image_shape(), [y]))
    converted, _ = onnxfcn.convert(original)
    x = rand([1, 3, REF, REF])
    assert_close(run(converted, x)[0][:, :, 0, 0], run(original, x)[0])
    assert run(converted, rand([2, 3, REF + 5, REF]))[0].shape == (2, 5, 6, 1)


def test_reduction_over_a_spatial_axis_and_a_channel_is_refused_in_one_line() -> None:
    b = Builder(13)
    y = b.node("Conv", ["image", b.weight("w", (C_FEAT, 3, 3, 3))], kernel_shape=[3, 3])
    y = b.node("Unsqueeze", [y, b.ints("a", [1])])
    y = b.node("ReduceSum", [y, b.ints("ax", [1, 3])], keepdims=0, name="odd_sum")
    y = gemm(b, b.node("Flatten", [b.node("ReduceMean", [y], axes=[1, 2], keepdims=1)], axis=1), 1, 5)
    with pytest.raises(onnxfcn.UnsupportedModelError, match="odd_sum"):
        onnxfcn.convert(b.model(image_shape(), [y]))


def test_global_response_normalization_is_global_context() -> None:
    """A ReduceL2 over H and W inside the trunk is a global statistic, as a squeeze-excitation's
    pool: converted, with the reason; at the reference size equal to the original."""
    original = realistic(grn_model())
    converted, report = onnxfcn.convert(original)
    assert any("global pooling inside the trunk (grn_norm)" in r for r in report.geometry.reasons)
    x = rand([1, 3, REF, REF])
    assert_close(run(converted, x)[0][:, :, 0, 0], run(original, x)[0])
    assert run(converted, rand([2, 3, REF + 3, REF]))[0].shape == (2, 5, 4, 1)


def test_head_pool_without_a_window_form_is_refused() -> None:
    with pytest.raises(onnxfcn.UnsupportedModelError, match="ReduceL2 over H and W has no window form"):
        onnxfcn.convert(grn_model("ReduceL2"))


@pytest.mark.parametrize("batch_in_shape", [False, True])
def test_group_norm_is_global_context(batch_in_shape: bool) -> None:
    """GroupNorm's statistics cover the whole map (BiT's ResNetV2, PoolFormer): converted, with the
    reason; equal to the original at the reference size, any batch and size beyond it."""
    original = realistic(group_norm_model(batch_in_shape=batch_in_shape))
    converted, report = onnxfcn.convert(original)
    assert any(r.startswith("statistics over the map's positions (gn_norm)") for r in report.geometry.reasons), \
        report.geometry.reasons
    x = rand([3, 3, REF, REF])
    want = [run(original, x[i:i + 1])[0][0] for i in range(3)]
    assert_close(run(converted, x)[0][:, :, 0, 0], want)
    assert run(converted, rand([3, 3, REF + 4, REF + 6]))[0].shape == (3, 5, 3, 4)
    with pytest.raises(onnxfcn.UnsupportedModelError, match="statistics over the map's positions"):
        onnxfcn.convert(original, output_stride=(1, 1))


def test_same_padding_computed_from_the_size_is_fixed_at_the_reference_size() -> None:
    """Pad amounts computed from the map's size (timm's SAME padding) take their reference-size
    values: the geometry is composed with them, and computed on they would change with the map's
    parity (0 instead of 1 at odd sizes here) and shift the cells."""
    original = realistic(computed_pad_model())
    converted, report = onnxfcn.convert(original)
    change = next(c for c in report.changes if c.node == "same_pad")
    assert "[0, 0, 0, 0, 0, 0, 1, 1]" in change.after
    assert not any(n.op_type == "Shape" for n in converted.graph.node)
    x = rand([1, 3, REF, REF])
    assert_close(run(converted, x)[0][:, :, 0, 0], run(original, x)[0])
    assert run(converted, rand([1, 3, REF + 3, REF + 5], seed=3))[0].shape == (1, 5, 2, 3)  # odd maps run


@pytest.mark.parametrize("spelled", [True, False])
def test_space_to_depth_is_a_block_kernel(spelled: bool) -> None:
    """Space-to-depth (TResNet's stem, spelled Reshape-Transpose-Reshape by PyTorch's exporter) is a
    2x2 kernel of stride 2: the model runs where the blocks divide the map, and with no padding
    anywhere its cells equal the crops."""
    original = realistic(space_to_depth_model(spelled))
    before = original.SerializeToString()
    converted, report = onnxfcn.convert(original)
    assert original.SerializeToString() == before  # the spelling is rewritten in convert's copy only
    assert onnxfcn.verify(original, converted)
    geo = report.geometry
    assert geo.exact and geo.stride == (4, 4) and geo.lattice == ((2, (0,)), (2, (0,)))
    assert [n.op_type for n in converted.graph.node].count("SpaceToDepth") == 1
    if spelled:
        assert any(c.node == "s2d" and c.after == "SpaceToDepth(blocksize=2)" for c in report.changes)
    x = rand([2, 3, REF + 8, REF + 4])
    cells, crops = cells_vs_crops(original, converted, x, REF, 4)
    assert cells.shape[:2] == (6, 2)  # 3 x 2 cells, batch 2
    assert_close(cells, crops)
    with pytest.raises(onnxfcn.OnnxFcnError, match="the next size that is: 20x22"):
        onnxfcn.convert(original, static=(19, 21))


@pytest.mark.parametrize(("op", "opset", "attrs", "global_"), [
    ("InstanceNormalization", 13, {}, True),
    ("LpNormalization", 13, {"axis": 2}, True),
    ("Softmax", 13, {"axis": 3}, True),
    ("Hardmax", 13, {"axis": 2}, True),
    ("Softmax", 11, {"axis": 1}, True),  # before opset 13: over C, H and W together
    ("GroupNormalization", 21, {"num_groups": 2}, True),
    ("CumSum", 13, {}, True),
    ("LpNormalization", 13, {"axis": 1}, False),
    ("Softmax", 13, {"axis": 1}, False),
    ("LRN", 13, {"size": 3}, False),
])
def test_statistics_over_the_maps_positions_are_global_context(op: str, opset: int, attrs: dict[str, int],
                                                               global_: bool) -> None:
    """Over H or W a normalization or softmax depends on the whole map: the report once called
    such models exact. Over the channels the cells still equal their crops."""
    original = realistic(map_statistic_model(op, opset, **attrs))
    converted, report = onnxfcn.convert(original)
    geo = report.geometry
    assert geo.exact is not global_ and geo.global_context is global_
    assert global_ == ("statistics over the map's positions (stat) sees the whole image" in geo.reasons)
    cells, crops = cells_vs_crops(original, converted, rand([1, 3, REF + 6, REF + 4], seed=5), REF, 2)
    if global_:
        assert float(np.abs(cells - crops).max()) > 1e-3 * float(np.abs(crops).max())  # the claim is needed
    else:
        assert_close(cells, crops)


@pytest.mark.parametrize(("op", "axis"), [("Trilu", None), ("Gather", 3), ("Gather", 1)])
def test_ops_at_fixed_positions_are_refused(op: str, axis: int | None) -> None:
    """A triangle mask or a Gather along W (a flip) reads the map at positions fixed in the graph:
    refused, where a pointwise reading would have called the model exact; a Gather along the
    channels (a channel permutation) converts, exact."""
    b = Builder(14, seed=3)
    x = b.node("Conv", ["image", b.weight("w", (C_FEAT, 3, 3, 3))], kernel_shape=[3, 3])
    if op == "Trilu":
        x = b.node("Trilu", [x], name="fixed")
    else:
        n = REF - 2 if axis == 3 else C_FEAT
        x = b.node("Gather", [x, b.ints("idx", list(range(n - 1, -1, -1)))], axis=axis, name="fixed")
    y = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    model = b.model(image_shape(), [gemm(b, b.node("Flatten", [y], axis=1), C_FEAT * 8 * 8, 5)])
    if axis == 1:
        assert onnxfcn.convert(model)[1].geometry.exact
    else:
        with pytest.raises(onnxfcn.UnsupportedModelError, match="node 'fixed': .* positions fixed in the graph"):
            onnxfcn.convert(model)


def test_resize_to_another_maps_size() -> None:
    """Sizes computed from the Shape of the map the gate multiplies: a scale of 2 where that map is
    twice the pooled one (even maps: even inputs here), so the model runs at those sizes, and
    there its cells equal the crops (nothing pads). Constant sizes stay refused."""
    original = realistic(resize_to_map_model())
    converted, report = onnxfcn.convert(original)
    geo = report.geometry
    assert geo.lattice == ((2, (0,)), (2, (0,))) and geo.exact
    x = rand([2, 3, REF + 6, REF + 4])
    cells, crops = cells_vs_crops(original, converted, x, REF, 2)
    assert_close(cells, crops)
    with pytest.raises(onnxfcn.OnnxFcnError, match="next size that is: 20x20"):
        onnxfcn.convert(original, static=(19, 20))
    with pytest.raises(onnxfcn.UnsupportedModelError, match="node 'gate_up': Resize resizes to constant H and W"):
        onnxfcn.convert(resize_to_map_model(constant_hw=True))


def test_squeezing_the_channel_axis_away_is_refused_in_one_line() -> None:
    b = Builder(13)
    y = b.node("Conv", ["image", b.weight("w", (1, 3, 3, 3))], kernel_shape=[3, 3])
    y = b.node("Unsqueeze", [b.node("Squeeze", [y, b.ints("a", [1])], name="drop_c"), b.ints("a2", [1])])
    y = gemm(b, b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1), 1, 5)
    with pytest.raises(onnxfcn.UnsupportedModelError, match="node 'drop_c': Squeeze leaves the map without a channel"):
        onnxfcn.convert(b.model(image_shape(), [y]))
