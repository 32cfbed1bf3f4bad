"""The model-zoo graphs that ship inside the onnx wheel (onnx/backend/test/data/light).

As shipped their weights are ConstantOfShape nodes filled with 0.02, which makes every class score
equal: they prove structure only. The realistic tier gives them seeded random weights at the scale
of trained networks (``zoo_models``), wide first dense layers included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers import LIGHT, heights_that_run, rand, run
from zoo_models import realistic

import onnxfcn

pytestmark = pytest.mark.zoo

CONVERTIBLE = ["bvlc_alexnet", "densenet121", "inception_v1", "resnet50", "shufflenet", "squeezenet", "vgg19",
               "zfnet512"]


@pytest.mark.parametrize("name", CONVERTIBLE)
def test_light_zoo_converts_as_shipped(name: str) -> None:
    """As shipped (ConstantOfShape weights): converts, stays small, passes the checker."""
    path = LIGHT / f"light_{name}.onnx"
    converted, report = onnxfcn.convert(path)
    onnx.checker.check_model(converted, full_check=True)
    assert converted.ir_version == 3
    assert converted.ByteSize() < 1.25 * path.stat().st_size + 8192  # no bloat: weights stay computed
    assert report.geometry.stride in ((32, 32), (16, 16))
    assert not report.geometry.exact  # all of these pad inside the trunk


@pytest.mark.parametrize("name", CONVERTIBLE)
def test_light_zoo_realistic_weights_convert_and_verify(name: str, tier_table: list[dict[str, Any]],
                                                        tmp_path: Path) -> None:
    """No false refusal at realistic scale: convert's self-check passes with the default rounding
    bound, and verify's reference and feature checks pass. The models are run and verified from
    their files, the protos let go first (VGG19's weights are 548 MB a copy)."""
    original = realistic(name)
    converted, report = onnxfcn.convert(original)
    ref = report.self_check[0]
    assert ref["comparison"] == "rounding bound"
    out = ref["outputs"][0]
    assert out["ratio"] <= 1 and out["original_ratio"] <= 1, out
    paths = tmp_path / "original.onnx", tmp_path / "converted.onnx"
    onnx.save(original, paths[0])
    onnx.save(converted, paths[1])
    del original, converted
    x = rand([1, 3, 224, 224])
    np.testing.assert_array_equal(np.argmax(run(paths[1], x)[0].reshape(1, -1), 1),
                                  np.argmax(run(paths[0], x)[0].reshape(1, -1), 1))
    result = onnxfcn.verify(paths[0], paths[1], batch=1, positions=4)
    assert result, result.reason
    feature = next(c for c in result.checks if c.name == "feature")
    assert feature.exact and feature.passed
    tier_table.append({"model": f"zoo {name}", "self_check_error": out["error"], "self_check_bound": out["bound"],
                       "self_check_ratio": out["ratio"], "self_check_original_ratio": out["original_ratio"],
                       "verify_feature_ratio": max(o.ratio or 0.0 for o in feature.outputs)})


def test_inception_v2_runs_exactly_at_its_lattice() -> None:
    """Its branches agree in size only at H, W = 32k + {31, 0..6}: the converted model runs at
    every such size and fails (an onnxruntime error at a merge) at every other, as stated."""
    from onnxfcn.geometry import on_lattice

    converted, report = onnxfcn.convert(LIGHT / "light_inception_v2.onnx")
    lat = report.geometry.lattice
    assert lat[0] == lat[1] == (32, (0, 1, 2, 3, 4, 5, 6, 31))
    heights = range(223, 290)
    assert heights_that_run(converted, heights, 224) == [n for n in heights if on_lattice(n, lat[0])]


def test_inception_v2_realistic_verifies_on_its_lattice() -> None:
    original = realistic("inception_v2")
    converted, report = onnxfcn.convert(original)
    assert report.self_check[0]["outputs"][0]["ratio"] <= 1
    assert all(report.geometry.on_lattice(*r["size"]) for r in report.self_check)
    result = onnxfcn.verify(original, converted, batch=1, positions=4, sizes=[(287, 256), (320, 262)])
    assert result, result.reason
    with pytest.raises(onnxfcn.OnnxFcnError, match="not a size the model runs at"):
        onnxfcn.verify(original, converted, sizes=[(300, 256)])
