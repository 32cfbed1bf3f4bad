"""timm models (random weights, realistic scale, legacy exporter): DLA34, whose merged branches
agree in size only on a lattice, and HRNet-W18-small, whose trunk upsamples its low-resolution
branches (Resize, nearest, by 2, 4 and 8) into the high ones, convert with their lattices stated,
run exactly there, and pass verify."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import heights_that_run, rand, run
from tv_export import Exports

import onnxfcn
from onnxfcn.geometry import on_lattice

pytestmark = pytest.mark.timm


def test_dla34_verifies_on_its_lattice(exports: Exports) -> None:
    path = exports.timm("dla34")
    converted, report = onnxfcn.convert(path)
    assert report.geometry.lattice[0] == (32, (0, 31))
    result = onnxfcn.verify(path, converted, sizes=[(287, 320)], positions="all")
    assert result, result.reason
    feature = next(c for c in result.checks if c.name == "feature")
    assert feature.passed and max(o.ratio or 0.0 for o in feature.outputs) <= 1
    logits = run(onnxfcn.convert(path, self_check=False)[0], rand([2, 3, 224, 224]))[0]
    assert float(np.std(logits)) >= 2


@pytest.mark.parametrize("name, lattice", [("dla34", (32, (0, 31))), ("hrnet_w18_small", (32, (0, 29, 30, 31)))])
def test_lattice_models_run_exactly_at_their_sizes(exports: Exports, name: str, lattice: tuple[int, tuple[int, ...]]
                                                   ) -> None:
    path = exports.timm(name)
    converted, report = onnxfcn.convert(path)
    assert report.geometry.lattice == (lattice, lattice)
    assert report.self_check[0]["outputs"][0]["ratio"] <= 1
    heights = range(220, 258)  # the converted model runs exactly at the stated sizes
    assert heights_that_run(converted, heights, 224) == [n for n in heights if on_lattice(n, lattice)]
    if name == "hrnet_w18_small":
        result = onnxfcn.verify(path, converted, sizes=[(286, 320)], positions="all")
        assert result, result.reason
        assert not any("upsampling" in r for r in report.geometry.reasons)  # its head reads the stride-32 map
