"""``bench`` and the multiply-accumulate counts it reports."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from builders import Builder, gemm
from helpers import ROOT
from trunks import DEEP_REF, deep
from typer.testing import CliRunner

import onnxfcn
from onnxfcn.bench import bench
from onnxfcn.cli import app
from onnxfcn.macs import count_macs

runner = CliRunner()


def test_macs_by_hand() -> None:
    """Conv 3->8 3x3 on 18x18 (16x16 out), grouped Conv 8->8 3x3 group 4 (14x14 out), Gemm
    1568->5: each counted as output elements x multiplies per output."""
    b = Builder(13)
    x = b.node("Conv", ["image", b.weight("w", (8, 3, 3, 3))], kernel_shape=[3, 3])
    x = b.node("Conv", [x, b.weight("g", (8, 2, 3, 3))], kernel_shape=[3, 3], group=4)
    y = gemm(b, b.node("Flatten", [b.node("Relu", [x])], axis=1), 8 * 14 * 14, 5)
    model = b.model([2, 3, 18, 18], [y])
    want = 2 * (8 * 16 * 16 * 3 * 9 + 8 * 14 * 14 * 2 * 9 + 8 * 14 * 14 * 5)
    assert count_macs(model, "image", [2, 3, 18, 18]) == want
    converted, _ = onnxfcn.convert(model, self_check=False)
    # the converted model at the reference size does the same arithmetic
    assert count_macs(converted, "image", [2, 3, 18, 18]) == want
    # one more row of windows: the trunk grows, the head's Conv runs twice
    assert count_macs(converted, "image", [1, 3, 19, 18]) == (8 * 17 * 16 * 3 * 9 + 8 * 15 * 14 * 2 * 9
                                                              + 2 * 8 * 14 * 14 * 5)


@pytest.mark.parametrize("stride", [32, 16])
def test_bench_report(stride: int, tmp_path: Path) -> None:
    original = deep("gap")
    converted, report = onnxfcn.convert(original, output_stride=stride)
    size = (DEEP_REF + 2 * 32, DEEP_REF + 32)
    r = bench(original, converted, size=size, repeats=2, batch=4)
    assert r.grid == report.geometry.grid(*size) and r.windows == r.grid[0] * r.grid[1]
    # at least the repeats asked for; a run of a few ms is repeated for about half a second
    assert len(r.original_windows.seconds) >= 2 and 2 < len(r.converted.seconds) <= 200
    assert r.original_macs == count_macs(original, "image", [1, 3, DEEP_REF, DEEP_REF])
    assert r.mac_ratio == pytest.approx(r.original_macs * r.windows / r.converted_macs)
    assert r.efficiency == pytest.approx(r.speedup / r.mac_ratio)
    assert r.mac_ratio > 1 and r.speedup > 0 and r.reference_latency_ratio > 0
    for t in (r.converted, r.original_windows):  # Linux: the phase's peak is at least where it began
        assert t.peak_rss is None or (t.start_rss is not None and t.peak_rss >= t.start_rss > 0)
    d = r.to_dict()
    for key in ("speedup", "mac_ratio", "efficiency", "reference_latency_ratio"):
        assert isinstance(d[key], float)


def test_bench_cli(tmp_path: Path) -> None:
    src, fcn, js = tmp_path / "m.onnx", tmp_path / "m.fcn.onnx", tmp_path / "b.json"
    onnx.save(deep("flatten"), src)
    assert runner.invoke(app, ["convert", str(src), "-o", str(fcn), "-q", "--output-stride", "16"]).exit_code == 0
    res = runner.invoke(app, ["bench", str(src), str(fcn), "--size", "254x222", "--repeats", "2", "--json", str(js)])
    assert res.exit_code == 0, res.output
    assert "speedup" in res.output and "efficiency" in res.output
    data = json.loads(js.read_text())
    assert data["grid"] == [5, 3] and data["windows"] == 15 and data["stride"] == [16, 16]
    for key in ("speedup", "mac_ratio", "efficiency", "reference_latency_ratio"):
        assert data[key] > 0
    # errors: the second model is not a conversion; a size no window fits
    res = runner.invoke(app, ["bench", str(src), str(src)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    res = runner.invoke(app, ["bench", str(src), str(fcn), "--size", "100x100"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output


def test_tiny_models_say_why_efficiency_exceeds_one() -> None:
    """The digits model's windows are 0.02 M MACs: per-run overhead dominates the original's time,
    and the report says so rather than let an efficiency of 50 pass for arithmetic."""
    digits = ROOT / "models" / "digits_cnn.onnx"
    converted, _ = onnxfcn.convert(digits)
    r = bench(digits, converted, size=(64, 64), repeats=2, batch=16)
    assert r.efficiency > 1.5
    assert any(n.startswith(f"efficiency {r.efficiency:.2f} is above 1") for n in r.notes), r.notes
