"""inspect: a dry run that changes nothing and predicts what convert does."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from builders import Builder, flatten_gemm, image_shape, trunk
from helpers import ROOT
from patterns import AGREE
from typer.testing import CliRunner

import onnxfcn
from onnxfcn.cli import app

runner = CliRunner()


def test_inspect_matches_convert() -> None:
    model = flatten_gemm(padded=True)
    snapshot = model.SerializeToString()
    plan = onnxfcn.inspect(model, at=(30, 26))
    assert plan and plan.convertible
    assert model.SerializeToString() == snapshot
    _, report = onnxfcn.convert(model)
    assert [c["node"] for c in plan.changes] == [c.node for c in report.changes]
    assert plan.geometry is not None
    assert plan.geometry["stride"] == list(report.geometry.stride)
    assert plan.geometry["exact"] is False and plan.geometry["reasons"]
    assert plan.geometry["grid_at"]["cells"] == list(report.geometry.grid(30, 26))


def test_inspect_reports_blockers_with_node() -> None:
    b = Builder(13)
    y = b.node("Flatten", [trunk(b)], axis=2, name="odd_flatten")
    model = b.model(image_shape(), [b.node("MatMul", [y, b.weight("w", (36, 4))])])
    plan = onnxfcn.inspect(model)
    assert not plan
    assert plan.blockers[0]["node"] == "odd_flatten" and "axis=2" in str(plan.blockers[0]["reason"])


def test_inspect_cli_json_and_exit_codes(tmp_path: Path) -> None:
    res = runner.invoke(app, ["inspect", str(ROOT / "models" / "digits_cnn.onnx"), "--json", "--at", "16x24"])
    assert res.exit_code == 0
    data = json.loads(res.output)
    assert data["convertible"] is True and data["geometry"]["grid_at"]["cells"] == [5, 9]
    b = Builder(13)
    onnx.save(b.model(image_shape(), [trunk(b)]), tmp_path / "fcn.onnx")
    assert runner.invoke(app, ["inspect", str(tmp_path / "fcn.onnx")]).exit_code == 3




@pytest.mark.parametrize("mode", ["window", "dense"])
@pytest.mark.parametrize("pattern", sorted(AGREE))
def test_inspect_and_convert_agree(pattern: str, mode: str) -> None:
    """inspect is the pipeline stopped after planning: same mode, geometry, exactness, changes."""
    model = AGREE[pattern]()
    plan = onnxfcn.inspect(model, mode=mode)
    _, report = onnxfcn.convert(model, mode=mode, self_check=False)
    assert plan.mode == report.mode
    geo = report.geometry.summary()
    assert plan.geometry is not None
    for key in ("window", "stride", "offset", "receptive_field", "feature_window", "mode", "exact", "reasons",
                "grid_formula", "min_size"):
        assert plan.geometry[key] == geo[key], key
    assert plan.changes == [c.__dict__ for c in report.changes]
