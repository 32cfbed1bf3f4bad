"""Geometry: stride, offset, receptive field, output grid formula and exactness."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from builders import C_FEAT, REF, Builder, flatten_gemm, gemm, image_shape, trunk
from helpers import LIGHT, assert_close, cells_vs_crops, heights_that_run, rand, run
from trunks import _floor_ceil_merge

import onnxfcn


def test_valid_trunk_geometry_is_exact() -> None:
    _, report = onnxfcn.convert(flatten_gemm())
    g = report.geometry
    assert g.window == (REF, REF)
    assert g.stride == (2, 2)
    assert g.offset == (0, 0)
    # conv3 (rf 3) -> pool2 (rf 4, jump 2) -> conv3 (rf 8) -> 6x6 window: 8 + 5*2 = 18
    assert g.receptive_field == (18, 18)
    assert g.exact and not g.reasons
    assert g.formula(0) == f"floor((H - {REF}) / 2) + 1"
    assert g.grid(REF + 4, REF + 7) == (3, 4)
    assert g.min_size() == (REF, REF)


def test_padded_trunk_is_not_exact_and_says_why() -> None:
    _, report = onnxfcn.convert(flatten_gemm(padded=True))
    g = report.geometry
    assert not g.exact
    assert any("zero padding" in r and "Conv pads 1,1" in r for r in g.reasons)
    assert g.receptive_field[0] > REF  # sees beyond the window


@pytest.mark.parametrize("size", [(REF + 4, REF + 6), (REF + 7, REF + 3), (40, 33)])
def test_padding_free_cells_equal_crops_exactly(size: tuple[int, int]) -> None:
    """Sizes larger than the reference, stride-aligned or not: every cell equals its crop."""
    original = flatten_gemm()
    converted, report = onnxfcn.convert(original)
    x = rand([2, 3, *size], seed=7)
    cells, crops = cells_vs_crops(original, converted, x, REF, 2)
    gh, gw = report.geometry.grid(*size)
    assert cells.shape[0] == gh * gw
    assert_close(cells, crops)


def test_padded_cells_differ_from_crops() -> None:
    """With zero padding cells match crops only approximately: the difference is real."""
    original = flatten_gemm(padded=True)
    converted, _ = onnxfcn.convert(original)
    cells, crops = cells_vs_crops(original, converted, rand([1, 3, REF + 8, REF + 8], seed=3), REF, 2)
    rel = np.abs(cells - crops).max() / np.abs(crops).max()
    assert rel > 1e-3


def test_light_resnet50_grid_formula_and_min_size() -> None:
    _, report = onnxfcn.convert(LIGHT / "light_resnet50.onnx", self_check=False)
    g = report.geometry
    assert g.stride == (32, 32)
    assert g.formula(0) == "floor((H - 193) / 32) + 1"  # same-padded convs: ceil(H/32) - 6
    assert g.grid(384, 384) == (6, 6)
    assert g.min_size() == (193, 193)


def test_squeeze_excitation_pool_makes_it_inexact() -> None:
    b = Builder(13)
    f = trunk(b)
    se = b.node("GlobalAveragePool", [f], name="se_pool")
    se = b.node("Sigmoid", [se])
    f = b.node("Mul", [f, se])
    y = gemm(b, b.node("Flatten", [b.node("GlobalAveragePool", [f])], axis=1), 8, 5)
    original = b.model(image_shape(), [y])
    converted, report = onnxfcn.convert(original)
    assert not report.geometry.exact
    assert any("se_pool" in r for r in report.geometry.reasons)
    x = rand([1, 3, REF, REF])
    assert_close(run(converted, x)[0].reshape(1, -1), run(original, x)[0])


def test_below_reference_size_fails_with_clear_message() -> None:
    original = flatten_gemm()
    converted, _ = onnxfcn.convert(original)
    with pytest.raises(onnxfcn.OnnxFcnError, match="smaller than the reference window"):
        onnxfcn.verify(original, converted, sizes=[(REF - 2, REF)])


@pytest.mark.parametrize("opset", [9, 13, 18])
def test_explicit_pad_in_the_trunk(opset: int) -> None:
    """tf2onnx writes SAME padding as a Pad before a VALID conv: geometry follows it, not exact."""
    b = Builder(opset)
    pads = [0, 0, 1, 2, 0, 0, 1, 2]  # H: 1 before, 1 after; W: 2 before, 2 after
    if opset >= 11:
        x = b.node("Pad", ["image", b.ints("pads", pads)], name="pad_in")
    else:
        x = b.node("Pad", ["image"], pads=pads, name="pad_in")
    y = gemm(b, b.node("Flatten", [trunk(b, x)], axis=1), C_FEAT * 7 * 8, 5)
    original = b.model(image_shape(), [y])
    converted, report = onnxfcn.convert(original)
    g = report.geometry
    assert not g.exact and any("pad_in" in r for r in g.reasons)
    assert g.offset == (0, 0) and g.grid(REF, REF) == (1, 1)
    result = onnxfcn.verify(original, converted)
    assert result, result.reason


def test_auto_pad_same_conv() -> None:
    """auto_pad=SAME_UPPER (string attribute): padded, and the grid formula matches onnxruntime."""
    b = Builder(13)
    y = b.node("Conv", ["image", b.weight("w", (C_FEAT, 3, 3, 3))], kernel_shape=[3, 3], strides=[2, 2],
               auto_pad="SAME_UPPER", name="same_conv")
    y = gemm(b, b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1), C_FEAT, 5)
    original = b.model(image_shape(), [y])
    converted, report = onnxfcn.convert(original)
    g = report.geometry
    assert not g.exact and any("same_conv" in r for r in g.reasons)
    for size in [(REF + 3, REF + 8), (31, 40)]:
        out = run(converted, rand([1, 3, *size]))[0]
        assert out.shape[2:] == g.grid(*size)


@pytest.mark.parametrize("padded", [False, True])
def test_quantized_trunk_convolutions_enter_the_geometry(padded: bool, tmp_path: Path) -> None:
    """A QOperator trunk (onnxruntime's quantizer on the Conv nodes only) in front of a float
    head: each QLinearConv is a kernel with its stride and padding. (It was once taken for a
    pointwise op: the padded model was called exact, with a receptive field of one window.)"""
    quantization = pytest.importorskip("onnxruntime.quantization")
    from quantize import Reader

    float_model = flatten_gemm(padded=padded)
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(float_model, src)
    quantization.quantize_static(str(src), str(dst), Reader("NCHW"), quant_format=quantization.QuantFormat.QOperator,
                                 op_types_to_quantize=["Conv"], reduce_range=True)
    with_q = onnx.load(dst)
    assert sum(n.op_type == "QLinearConv" for n in with_q.graph.node) == 2
    converted, report = onnxfcn.convert(with_q)
    _, float_report = onnxfcn.convert(float_model)
    g = report.geometry
    assert (g.stride, g.receptive_field, g.exact) == (float_report.geometry.stride,
                                                      float_report.geometry.receptive_field, not padded)
    if padded:
        assert any("QLinearConv pads 1,1" in r for r in g.reasons)
    else:  # integer trunk, float head: every cell equals its crop up to the head's rounding
        cells, crops = cells_vs_crops(with_q, converted, rand([1, 3, REF + 4, REF + 6], 3), REF, 2)
        assert_close(cells, crops)


def test_unknown_spatial_kernel_is_refused() -> None:
    """An op with a kernel_shape that the size model does not know is refused, not taken as pointwise."""
    b = Builder(13)
    y = b.node("LpPool", [trunk(b)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="lp")  # known: fine
    y = gemm(b, b.node("Flatten", [y], axis=1), C_FEAT * 6 * 6, 5)
    assert onnxfcn.inspect(b.model(image_shape(), [y]))
    model = b.model(image_shape(), [y])
    lp = next(n for n in model.graph.node if n.name == "lp")
    lp.domain, lp.op_type = "custom.pools", "SmoothPool"
    model.opset_import.append(onnx.helper.make_opsetid("custom.pools", 1))
    plan = onnxfcn.inspect(model)
    assert not plan and plan.blockers[0]["node"] == "lp" and "SmoothPool" in str(plan.blockers[0]["reason"])



# --------------------------------------------------------------------------------------------
# Size lattices: merged branches whose sizes agree only at some input sizes




def test_lattice_helpers() -> None:
    from onnxfcn.geometry.lattice import lattice_text, meet, next_on_lattice, on_lattice, parse_lattice

    for lat in [(1, (0,)), (32, (7,)), (32, (0, 1, 31))]:
        assert parse_lattice(lattice_text(lat)) == lat
    assert lattice_text((32, (0, 1, 31))) == "32k+{0,1,31}" and lattice_text((1, (0,))) == "any"
    assert meet((2, (0,)), (3, (1,))) == (6, (4,))
    assert next_on_lattice(250, (32, (0, 31))) == 255 and on_lattice(256, (32, (0, 31)))
    for bad in ("32k+40", "k+1", "32k+", "0k+0"):
        with pytest.raises(onnxfcn.OnnxFcnError):
            parse_lattice(bad)


def test_branches_agreeing_at_even_sizes_give_a_lattice() -> None:
    model = _floor_ceil_merge()
    converted, report = onnxfcn.convert(model)
    geo = report.geometry
    assert geo.lattice == ((2, (0,)), (2, (0,)))
    assert {p.key: p.value for p in converted.metadata_props}["onnxfcn.sizes"] == "2k+0"
    assert all(n % 2 == 0 for r in report.self_check for n in r["size"])
    assert heights_that_run(converted, range(20, 31), 22) == list(range(20, 31, 2))  # exactly the stated sizes
    assert onnxfcn.verify(model, converted, positions="all")
    with pytest.raises(onnxfcn.OnnxFcnError, match="next size that is: 24x26"):
        onnxfcn.verify(model, converted, sizes=[(23, 26)])
    summary = onnxfcn.inspect(model, at=(24, 30)).geometry
    assert summary is not None and summary["grid_at"]["cells"] == list(geo.grid(24, 30))


# --------------------------------------------------------------------------------------------
# Upsampling trunks (HRNet): Resize by a constant whole scale


def _upsampling_model(mode: str = "nearest", coord: str = "asymmetric", scales: Any = (1, 1, 2, 2),
                      sizes: bool = False, padded: bool = False) -> onnx.ModelProto:
    """A high-resolution branch (stride 2) plus a low one (stride 4) upsampled back and added, as
    HRNet fuses its branches; padding-free unless ``padded``."""
    b = Builder(13, seed=41)
    pads = [1, 1, 1, 1] if padded else [0, 0, 0, 0]
    x = b.node("Conv", ["image", b.weight("w1", (8, 3, 3, 3)), b.weight("b1", (8,), 0.1)], kernel_shape=[3, 3], pads=pads)
    high = b.node("MaxPool", [b.node("Relu", [x])], kernel_shape=[2, 2], strides=[2, 2])
    low = b.node("Conv", [b.node("MaxPool", [high], kernel_shape=[2, 2], strides=[2, 2]), b.weight("w2", (8, 8, 1, 1)),
                          b.weight("b2", (8,), 0.1)], kernel_shape=[1, 1])
    attrs: dict[str, Any] = {"mode": mode, "coordinate_transformation_mode": coord}
    if mode == "nearest":
        attrs["nearest_mode"] = "floor"
    if sizes:
        up = b.node("Resize", [low, "", "", b.ints("sizes", [1, 8, 10, 10])], **attrs)
    else:
        up = b.node("Resize", [low, "", b.const("scales", np.asarray(scales, np.float32))], **attrs)
    y = b.node("Relu", [b.node("Add", [high, up])])
    y = b.node("Conv", [y, b.weight("w3", (8, 8, 3, 3)), b.weight("b3", (8,), 0.1)], kernel_shape=[3, 3], pads=pads)
    hw = 10 if padded else 8
    y = gemm(b, b.node("Flatten", [b.node("Relu", [y])], axis=1), 8 * hw * hw, 16)
    y = gemm(b, b.node("Relu", [y]), 16, 6)
    return b.model([1, 3, 22 if not padded else 20, 22 if not padded else 20], [y], out_names=["scores"])


def test_nearest_upsampling_trunk_on_its_lattice() -> None:
    """Padding-free: cells on the coarse branch's grid (every 4 px) equal their crops exactly; the
    cells between see the low branch in another phase than their crops, and the report says so."""
    from onnxfcn.geometry import on_lattice

    model = _upsampling_model()
    converted, report = onnxfcn.convert(model)
    geo = report.geometry
    assert geo.stride == (2, 2) and not geo.exact
    assert any("draws on a stride-4 one" in r for r in geo.reasons)
    assert geo.lattice[0] == geo.lattice[1] == (4, (2, 3))
    heights = range(22, 35)  # the converted model runs exactly at the stated sizes
    assert heights_that_run(converted, heights, 22) == [n for n in heights if on_lattice(n, geo.lattice[0])]
    x = rand([2, 3, 34, 30], seed=5)
    y = run(converted, x)[0]
    off_grid = 0.0
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            crop = np.ascontiguousarray(x[:, :, 2 * i:2 * i + 22, 2 * j:2 * j + 22])
            if crop.shape[2:] != (22, 22):
                continue
            want = np.concatenate([run(model, crop[k:k + 1])[0] for k in range(2)])
            if i % 2 == 0 and j % 2 == 0:
                assert_close(y[:, :, i, j], want, rel=1e-5)
            else:
                off_grid = max(off_grid, float(np.abs(y[:, :, i, j] - want).max() / np.abs(want).max()))
    assert off_grid > 1e-3  # the reason is real: cells between the coarse grid differ from their crops
    assert onnxfcn.verify(model, converted, positions="all")


def test_upsampled_fields_hold_what_a_cell_reads() -> None:
    """The field the geometry gives an upsampled cell is large enough: tiles that overlap by it
    stitch to one pass (they would not if it missed a pixel a cell depends on)."""
    from onnxfcn import scan

    for mode, coord in (("nearest", "asymmetric"), ("linear", "half_pixel"), ("nearest", "half_pixel")):
        model = _upsampling_model(mode, coord, padded=True)
        converted, report = onnxfcn.convert(model)
        assert (mode == "linear") == any("linear Resize" in r for r in report.geometry.reasons)
        assert onnxfcn.verify(model, converted, positions="all"), (mode, coord)
        with tempfile.TemporaryDirectory() as tmp:
            onnx.save(converted, Path(tmp) / "m.onnx")
            h = report.geometry.next_size(64, 60)
            x = rand([h[0], h[1], 3], seed=6)
            one = scan(Path(tmp) / "m.onnx", x, top=None)
            tiled = scan(Path(tmp) / "m.onnx", x, top=None, tile=report.geometry.receptive_field[0] + 4)
            assert tiled.tiles > 2
            np.testing.assert_allclose(tiled.scores, one.scores, rtol=0, atol=1e-5 * float(np.abs(one.scores).max()))


@pytest.mark.parametrize("kind, message", [
    ("sizes", "constant sizes"),
    ("align_corners", "depends on the input size"),
    ("fractional", "not whole numbers"),
    ("cubic", "cubic interpolation is not modelled"),
])
def test_resize_that_has_no_sliding_geometry_is_refused_by_name(kind: str, message: str) -> None:
    model = {"sizes": lambda: _upsampling_model(sizes=True),
             "align_corners": lambda: _upsampling_model("linear", "align_corners"),
             "fractional": lambda: _upsampling_model(scales=(1, 1, 2.1, 2.1)),
             "cubic": lambda: _upsampling_model("cubic", "half_pixel")}[kind]()
    with pytest.raises(onnxfcn.UnsupportedModelError, match=message) as err:
        onnxfcn.convert(model)
    assert "Resize" in str(err.value)
