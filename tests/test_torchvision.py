"""Real torchvision architectures (random weights), through both PyTorch exporters.

Each export is made once per test run and cached in a session folder. Every model must convert,
run at two larger sizes and batch 2 (convert's self-check), equal the original at the reference
size, and pass verify's reference and feature-window checks. Sliding windows are reported: all of
these networks pad, so cells match crops only approximately.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("onnxscript")

from tv_export import export

import onnxfcn

pytestmark = pytest.mark.torchvision

ISSUE2 = ["vgg16", "alexnet", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "densenet121", "googlenet",
          "convnext_tiny"]
ISSUE4 = ["shufflenet_v2_x1_0", "mnasnet1_0", "regnet_y_400mf", "resnext50_32x4d", "inception_v3", "squeezenet1_1"]
EXPORTS = [("legacy", 11), ("legacy", 13), ("legacy", 17), ("dynamo", 18)]
CASES = [(a, e, o) for a in ISSUE2 + ISSUE4 for e, o in EXPORTS]

RESULTS: list[dict[str, Any]] = []


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("torchvision_exports")


@pytest.mark.parametrize(("arch", "exporter", "opset"), CASES, ids=[f"{a}-{e}{o}" for a, e, o in CASES])
def test_torchvision_converts_and_verifies(arch: str, exporter: str, opset: int, export_dir: Path) -> None:
    path = export(arch, exporter, opset, export_dir)
    plan = onnxfcn.inspect(path)
    assert plan, plan.blockers
    converted, report = onnxfcn.convert(path)
    assert [c["size"] for c in report.self_check][1:] and all(c["batch"] == 2 for c in report.self_check)
    result = onnxfcn.verify(path, converted, positions=4, batch=2)
    by_name = {c.name: c for c in result.checks}
    assert by_name["reference"].passed, result.reason
    assert by_name["feature"].passed and by_name["feature"].exact, result.reason
    assert result, result.reason
    RESULTS.append({
        "arch": arch, "exporter": exporter, "opset": opset, "exact": report.geometry.exact,
        "stride": list(report.geometry.stride),
        "reference_rel": max(o.needed_rtol for o in by_name["reference"].outputs),
        "feature_rel": max(o.needed_rtol for o in by_name["feature"].outputs),
        "sliding_rel": max(o.needed_rtol for o in by_name["sliding"].outputs),
        "sliding_top1": by_name["sliding"].outputs[0].top1,
        "self_check_sizes": [c["size"] for c in report.self_check],
    })


def test_zz_write_tier_table() -> None:
    """Keep the tier's numbers (ONNXFCN_TIER_JSON names the file) for the closing note."""
    target = os.environ.get("ONNXFCN_TIER_JSON")
    if not RESULTS:
        pytest.skip("no tier results in this run")
    assert all(r["reference_rel"] <= 1e-5 for r in RESULTS)
    if target:
        Path(target).write_text(json.dumps(RESULTS, indent=1))
