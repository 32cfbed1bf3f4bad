"""timm models (random weights, realistic scale, legacy exporter): DLA34, whose merged branches
agree in size only on a lattice, converts with the lattice stated and runs exactly there;
HRNet-W18-small, whose trunk upsamples, is refused by name (Resize trunks are not supported)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import rand, run

import onnxfcn
from onnxfcn.geometry import on_lattice

pytestmark = pytest.mark.torchvision


def export_timm(name: str, folder: Path) -> Path:
    timm = pytest.importorskip("timm")
    import torch
    from tv_export import realistic_scale

    path = folder / f"timm_{name}.onnx"
    if path.exists():
        return path
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=100).eval()
    realistic_scale(model, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    return path


def test_dla34_converts_on_its_lattice_and_verifies(export_dir: Path) -> None:
    path = export_timm("dla34", export_dir)
    converted, report = onnxfcn.convert(path)
    lat = report.geometry.lattice
    assert lat[0] == lat[1] == (32, (0, 31))
    out = report.self_check[0]["outputs"][0]
    assert out["ratio"] <= 1
    for n in range(222, 258):  # the converted model runs exactly at the stated heights
        try:
            run(converted, rand([1, 3, n, 224]))
            ran = True
        except Exception:  # onnxruntime's error types vary
            ran = False
        assert ran == on_lattice(n, lat[0]), n
    result = onnxfcn.verify(path, converted, sizes=[(287, 320)], positions="all")
    assert result, result.reason
    feature = next(c for c in result.checks if c.name == "feature")
    assert feature.passed and max(o.ratio or 0.0 for o in feature.outputs) <= 1
    logits = run(onnxfcn.convert(path, self_check=False)[0], rand([2, 3, 224, 224]))[0]
    assert float(np.std(logits)) >= 2


def test_hrnet_upsampling_trunk_is_refused_by_name(export_dir: Path) -> None:
    path = export_timm("hrnet_w18_small", export_dir)
    with pytest.raises(onnxfcn.UnsupportedModelError, match="Resize.*spatial axes"):
        onnxfcn.convert(path)
