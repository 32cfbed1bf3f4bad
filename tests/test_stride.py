"""Output stride (``--output-stride``): strides taken out of the last strided layers, every later
kernel dilated. On padding-free networks every cell must equal the original classifier on the
crop at (i, j) * S, checked here crop by crop with onnxruntime, apart from verify."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from builders import Builder, flatten_gemm, gemm
from helpers import assert_close, cells_vs_crops, rand, run
from patterns import AGREE
from trunks import DEEP_REF, deep
from typer.testing import CliRunner

import onnxfcn
from onnxfcn.cli import app
from onnxfcn.errors import InvalidConversionError, OnnxFcnError, UnsupportedModelError
from onnxfcn.metadata import read_props, write_props
from onnxfcn.runtime import cuda_available

runner = CliRunner()




def test_deep_model_has_realistic_logits() -> None:
    for head in ("flatten", "gap"):
        y = run(deep(head), rand([4, 3, DEEP_REF, DEEP_REF]))[0]
        assert y.shape == (4, 40) and y.std() >= 2.0, (head, y.std())


@pytest.mark.parametrize("down", ["maxpool", "conv"])
@pytest.mark.parametrize("mode", ["window", "dense"])
@pytest.mark.parametrize("head", ["flatten", "gap"])
@pytest.mark.parametrize("stride", [16, 8])
def test_padding_free_cells_equal_crops(stride: int, head: str, mode: str, down: str) -> None:
    original = deep(head, down)
    converted, report = onnxfcn.convert(original, mode=mode, output_stride=stride)
    geo = report.geometry
    assert geo.stride == (stride, stride) and geo.feature_dilation == (32 // stride,) * 2
    assert read_props(converted)["stride"] == f"{stride},{stride}"
    onnx.checker.check_model(converted, full_check=True)
    x = rand([2, 3, DEEP_REF + 2 * stride + 5, DEEP_REF + 3 * stride + 2], seed=5)
    (y,) = run(converted, x)
    assert [y.shape[2], y.shape[3]] == list(geo.grid(x.shape[2], x.shape[3]))
    if mode == "window" or head == "flatten":  # a cell is the classifier on one window: exact
        assert geo.exact and geo.offset == (0, 0)
        cells, crops = cells_vs_crops(original, converted, x, DEEP_REF, stride)
        assert cells.shape[0] == y.shape[2] * y.shape[3] >= 9
        assert_close(cells, crops)
    else:  # dense GAP: one feature cell per output cell, checked by verify's feature check
        assert not geo.exact
    result = onnxfcn.verify(original, converted, positions="all", sizes=[(x.shape[2], x.shape[3])])
    assert result, result.reason
    feature = next(c for c in result.checks if c.name == "feature")
    assert feature.passed and feature.exact and not feature.skipped


@pytest.mark.parametrize("stride", [4, 2, 1])
def test_finer_strides_down_to_one(stride: int) -> None:
    original = deep("flatten")
    converted, report = onnxfcn.convert(original, output_stride=stride)
    x = rand([1, 3, DEEP_REF + 3 * stride, DEEP_REF + 2 * stride], seed=7)
    cells, crops = cells_vs_crops(original, converted, x, DEEP_REF, stride)
    assert cells.shape[0] == 4 * 3
    assert_close(cells, crops)


def test_shortcut_branches_are_dilated_alike() -> None:
    original = deep("gap", shortcut=True)
    for stride in (16, 8, 4):  # the cut before, at and after the two-branch stage
        converted, report = onnxfcn.convert(original, output_stride=stride)
        x = rand([1, 3, DEEP_REF + 2 * stride, DEEP_REF + stride], seed=2)
        cells, crops = cells_vs_crops(original, converted, x, DEEP_REF, stride)
        assert_close(cells, crops)


def test_per_axis_output_stride() -> None:
    original = deep("flatten")
    converted, report = onnxfcn.convert(original, output_stride=(16, 32))
    assert report.geometry.stride == (16, 32) and report.geometry.feature_dilation == (2, 1)
    x = rand([1, 3, DEEP_REF + 32, DEEP_REF + 64], seed=4)
    (y,) = run(converted, x)
    assert y.shape[2:] == (3, 3)
    cells = y[0, :, :, :].transpose(1, 2, 0)
    for i in range(3):
        for j in range(3):
            crop = x[:, :, 16 * i:16 * i + DEEP_REF, 32 * j:32 * j + DEEP_REF]
            assert_close(cells[i, j], run(original, crop)[0][0])


def test_own_stride_changes_nothing() -> None:
    original = deep("gap")
    a, _ = onnxfcn.convert(original, self_check=False)
    b, report = onnxfcn.convert(original, output_stride=32, self_check=False)
    assert a.graph.SerializeToString() == b.graph.SerializeToString()
    assert not any("output stride" in c.before or "dilations" in c.after for c in report.changes)


@pytest.mark.parametrize("stride", [12, 64, (32, 12)])
def test_output_stride_that_does_not_divide_is_refused(stride: int | tuple[int, int]) -> None:
    with pytest.raises(OnnxFcnError, match="must divide"):
        onnxfcn.convert(deep("flatten"), output_stride=stride)


def test_stride_inside_a_layer_is_refused() -> None:
    """A stride-4 layer (patchify stem) at output stride 2: no layer boundary falls there... unless
    the stride is split; 2 divides 4, so it is split, and 3 does not divide the layer's 4."""
    b = Builder(13)
    x = b.node("Conv", ["image", b.weight("w", (8, 3, 4, 4))], kernel_shape=[4, 4], strides=[4, 4])
    x = b.node("Conv", [b.node("Relu", [x]), b.weight("w2", (8, 8, 3, 3))], kernel_shape=[3, 3], strides=[3, 3])
    y = gemm(b, b.node("Flatten", [x], axis=1), 8 * 4 * 4, 10)
    model = b.model([1, 3, 48, 48], [y])
    converted, report = onnxfcn.convert(model, output_stride=2)  # the stem's 4 split into 2 x (dilation 2 after)
    xx = rand([1, 3, 48 + 6, 48 + 4])
    cells, crops = cells_vs_crops(model, converted, xx, 48, 2)
    assert_close(cells, crops)
    with pytest.raises(UnsupportedModelError, match="falls inside this stride-3 layer") as info:
        onnxfcn.convert(model, output_stride=6)
    assert info.value.node


@pytest.mark.parametrize(("pool", "opset"), [("MaxPool", 13), ("AveragePool", 13), ("AveragePool", 19)])
def test_pools_after_the_cut(pool: str, opset: int) -> None:
    """MaxPool takes dilations from opset 10 and AveragePool from 19; before 19 an AveragePool
    becomes the depthwise Conv that computes the same mean."""
    original = deep("flatten", pool=pool, opset=opset)
    converted, _ = onnxfcn.convert(original, output_stride=16)
    ops = [n.op_type for n in converted.graph.node]
    assert (pool in ops) == (pool == "MaxPool" or opset >= 19)
    x = rand([1, 3, DEEP_REF + 32, DEEP_REF + 16], seed=9)
    cells, crops = cells_vs_crops(original, converted, x, DEEP_REF, 16)
    assert_close(cells, crops)


def test_pools_that_cannot_be_dilated_are_named() -> None:
    with pytest.raises(UnsupportedModelError, match="MaxPool has dilations only from opset 10") as info:
        onnxfcn.convert(deep("flatten", pool="MaxPool", opset=9), output_stride=16)
    assert info.value.node and "maxpool" in info.value.node.lower()
    with pytest.raises(UnsupportedModelError, match="left out of the mean") as info:
        onnxfcn.convert(deep("flatten", pool="AveragePool", pool_pads=True), output_stride=16)
    assert info.value.node and "averagepool" in info.value.node.lower()
    converted, _ = onnxfcn.convert(deep("flatten", pool="AveragePool", pool_pads=True, opset=19), output_stride=16)
    result = onnxfcn.verify(deep("flatten", pool="AveragePool", pool_pads=True, opset=19), converted)
    assert result, result.reason


def test_squeeze_excitation_reads_the_original_cells() -> None:
    """A global pool inside the trunk (squeeze-excitation) over the denser map would average cells
    the original never computed: it reads every d-th cell, so at the reference size the model is
    the original's (the self-check's bound); without that the self-check refuses."""
    original = deep("gap", se=True)
    converted, report = onnxfcn.convert(original, output_stride=8)
    assert all(o["ratio"] <= 1 for o in report.self_check[0]["outputs"])
    picks = [n for n in converted.graph.node if n.name.endswith("__os_subsample")]
    assert len(picks) == 1 and list(picks[0].attribute[-1].ints) == [2, 2]  # stage 4 is at stride 16
    result = onnxfcn.verify(original, converted, positions="all")
    assert result, result.reason
    # control: the pool reading the whole denser map
    broken = onnx.ModelProto()
    broken.CopyFrom(converted)
    pick = next(n for n in broken.graph.node if n.name.endswith("__os_subsample"))
    for n in broken.graph.node:
        n.input[:] = [pick.input[0] if i == pick.output[0] else i for i in n.input]
    broken.graph.node.remove(next(n for n in broken.graph.node if n.name.endswith("__os_subsample")))
    assert not onnxfcn.verify(original, broken)


def test_ceil_mode_pools_keep_their_last_window() -> None:
    """GoogLeNet's ceil_mode pools: without its stride a pool would lose the partial last window;
    end padding keeps it, so the reference size still gives one cell."""
    original = deep("flatten", down="ceil")
    for stride in (16, 8):
        converted, report = onnxfcn.convert(original, output_stride=stride)
        assert any("ceil_mode" in r for r in report.geometry.reasons)
        result = onnxfcn.verify(original, converted, positions="all")
        assert result, result.reason


def test_window_maxpool_head_before_opset_10_is_refused() -> None:
    """A global max pool head slides as a MaxPool window; before opset 10 it has no dilations."""
    with pytest.raises(UnsupportedModelError, match="MaxPool has dilations only from opset 10"):
        onnxfcn.convert(deep("gmp", opset=9), output_stride=16)
    converted, _ = onnxfcn.convert(deep("gmp", opset=10), output_stride=16)
    x = rand([1, 3, DEEP_REF + 32, DEEP_REF + 16], seed=9)
    cells, crops = cells_vs_crops(deep("gmp", opset=10), converted, x, DEEP_REF, 16)
    assert_close(cells, crops)


def test_pad_nodes_are_scaled() -> None:
    """tf2onnx writes SAME padding as Pad nodes: their pads grow with the dilation. Padded, so the
    feature check judges it; a reflect Pad after the cut has no dilated equivalent."""
    original = deep("flatten", pad_node="constant")
    converted, report = onnxfcn.convert(original, output_stride=8)
    assert any("pads scaled by 2x2" in c.after for c in report.changes)
    result = onnxfcn.verify(original, converted, positions="all")
    assert result, result.reason
    with pytest.raises(UnsupportedModelError, match="reflect Pad"):
        onnxfcn.convert(deep("flatten", pad_node="reflect"), output_stride=8)


def test_same_auto_pad_becomes_explicit() -> None:
    """auto_pad=SAME_UPPER (tf2onnx with dynamic H and W) on a strided layer: the pads it has at
    the reference size, scaled; verify's feature check proves the head on the denser map."""
    b = Builder(13)
    x = "image"
    for c_in, c in ((3, 8), (8, 8), (8, 16)):
        x = b.node("Relu", [b.node("Conv", [x, b.weight("w", (c, c_in, 3, 3))], kernel_shape=[3, 3],
                                   strides=[2, 2], auto_pad="SAME_UPPER")])
    x = b.node("Conv", [x, b.weight("w", (16, 16, 3, 3))], kernel_shape=[3, 3], auto_pad="SAME_UPPER")
    y = gemm(b, b.node("Flatten", [x], axis=1), 16 * 4 * 4, 12)
    model = b.model([1, 3, 32, 32], [y])
    converted, report = onnxfcn.convert(model, output_stride=2)
    assert not any(a.name == "auto_pad" for n in converted.graph.node[1:] for a in n.attribute
                   if n.op_type == "Conv" and any(d.name == "dilations" for d in n.attribute))
    result = onnxfcn.verify(model, converted, positions="all", sizes=[(48, 40)])
    assert result, result.reason


def test_quantized_heads() -> None:
    """onnxruntime's QLinearAveragePool has no dilations: a QOperator global-pool head in window
    mode cannot read a dilated window, and is refused by name (dense mode has no window). The QDQ
    form keeps float pooling and converts; verify proves it."""
    from patterns import pooled
    from quantize import quantize_qdq

    qop = quantize_qdq(pooled("GlobalAveragePool")(), "NCHW", False, "QOperator")
    with pytest.raises(UnsupportedModelError, match="QLinearAveragePool has no dilations"):
        onnxfcn.convert(qop, output_stride=1)
    converted, _ = onnxfcn.convert(qop, output_stride=1, mode="dense")
    assert read_props(converted)["stride"] == "1,1"
    qdq = quantize_qdq(flatten_gemm(), "NCHW", True, "QDQ")
    converted, _ = onnxfcn.convert(qdq, output_stride=1)
    result = onnxfcn.verify(qdq, converted, positions="all", sizes=[(22, 21)])
    assert result, result.reason


@pytest.mark.parametrize("pattern", sorted(AGREE))
def test_every_head_pattern_at_output_stride_1(pattern: str) -> None:
    """The head patterns' trunk has stride 2: at output stride 1 every cell is the classifier on
    the crop at (i, j), in window mode, and inspect plans exactly what convert does."""
    original = AGREE[pattern]()
    plan = onnxfcn.inspect(original, output_stride=1)
    converted, report = onnxfcn.convert(original, output_stride=1)
    assert plan.changes == [c.__dict__ for c in report.changes]
    assert plan.geometry is not None and plan.geometry["stride"] == [1, 1] == list(report.geometry.stride)
    result = onnxfcn.verify(original, converted, positions="all", sizes=[(23, 21)])
    assert result, result.reason
    if report.geometry.exact:
        sliding = next(c for c in result.checks if c.name == "sliding")
        assert sliding.exact and sliding.passed and sliding.details["grid"] == [6, 4]


def test_verify_catches_a_stride_the_graph_does_not_give(tmp_path: Path) -> None:
    original = deep("flatten")
    converted, _ = onnxfcn.convert(original, output_stride=8, self_check=False)
    tampered = onnx.ModelProto()
    tampered.CopyFrom(converted)
    write_props(tampered, {"onnxfcn.stride": "16,16"})
    with pytest.raises(InvalidConversionError, match="feature_dilation is 4,4 but the original's graph gives 2,2"):
        onnxfcn.verify(original, tampered)
    write_props(tampered, {"onnxfcn.stride": "12,12"})
    with pytest.raises(InvalidConversionError, match="stride is 12,12: output stride"):
        onnxfcn.verify(original, tampered)


def test_verify_detects_a_missing_dilation() -> None:
    """A converted model whose head kernel lost its dilation computes other windows: verify fails."""
    original = deep("gap")
    converted, _ = onnxfcn.convert(original, output_stride=8)
    node = next(n for n in converted.graph.node if n.op_type == "Conv" and n.name.startswith("window_mean"))
    for a in node.attribute:
        if a.name == "dilations":
            a.ints[:] = [1, 1]
    result = onnxfcn.verify(original, converted, positions="all")
    assert not result


def test_cli_output_stride(tmp_path: Path) -> None:
    src = tmp_path / "deep.onnx"
    onnx.save(deep("gap"), src)
    before = src.read_bytes()
    out, js = tmp_path / "fcn.onnx", tmp_path / "r.json"
    res = runner.invoke(app, ["convert", str(src), "-o", str(out), "--output-stride", "8", "--json", str(js)])
    assert res.exit_code == 0, res.output
    assert src.read_bytes() == before
    data: dict[str, Any] = json.loads(js.read_text())
    assert data["geometry"]["stride"] == [8, 8] and data["geometry"]["feature_dilation"] == [4, 4]
    assert runner.invoke(app, ["verify", str(src), str(out)]).exit_code == 0
    res = runner.invoke(app, ["inspect", str(src), "--output-stride", "16x8", "--at", "254x254"])
    assert res.exit_code == 0 and "dilations" in res.output, res.output
    for bad, words in (("12", "must divide"), ("x", "expected HxW"), ("0", "two positive values"),
                       ("8x8x8", "two positive values")):
        res = runner.invoke(app, ["convert", str(src), "-o", str(tmp_path / "bad.onnx"), "--output-stride", bad])
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
        assert words in res.output and not (tmp_path / "bad.onnx").exists()


def test_crop_loop_control() -> None:
    """The crop loop can fail: the natural conversion (stride 2) read as if its stride were 1."""
    original = flatten_gemm()
    natural, _ = onnxfcn.convert(original)
    x = rand([1, 3, 24, 24], seed=3)
    cells, crops = cells_vs_crops(original, natural, x, 18, 1)
    with pytest.raises(AssertionError):
        assert_close(cells, crops)


@pytest.mark.skipif(not cuda_available(), reason="needs onnxruntime-gpu and a GPU")
@pytest.mark.parametrize("stride", [16, 8])
def test_output_stride_on_cuda(stride: int) -> None:
    """Dilated convolutions and pools on the CUDA provider: every cell against its crop (exact
    model), and CUDA against the CPU."""
    original = deep("gap", se=True, down="ceil", pool="AveragePool")
    converted, _ = onnxfcn.convert(original, output_stride=stride)
    result = onnxfcn.verify(original, converted, provider="auto", positions="all")
    assert result, result.reason
    assert result.providers == ["cpu", "cuda"]
    exact = onnxfcn.verify(deep("flatten"), onnxfcn.convert(deep("flatten"), output_stride=stride)[0],
                           provider="cuda", positions="all")
    assert exact, exact.reason
    sliding = next(c for c in exact.checks if c.name.startswith("sliding"))
    assert sliding.exact and sliding.passed


def test_changes_name_only_the_original_nodes() -> None:
    """The report's rows are the original's nodes: an output stride's edit of a node the rewrite
    built goes into the row of the node it replaces."""
    original = deep("gap")
    _, report = onnxfcn.convert(original, output_stride=4, self_check=False)
    names = {n.name for n in original.graph.node}
    assert report.changes and all(c.node in names for c in report.changes), [c.node for c in report.changes]
    assert any("(output stride)" in c.after for c in report.changes)
