"""Real torchvision architectures at realistic scale (random weights), through both PyTorch exporters.

Each export is made once, in a child process, and cached on disk across runs (``tv_export``: calibrated
BatchNorm, He-initialised dense layers, logits with standard deviation 3). Every model must
convert with the default rounding bound (no false refusals), run at two larger sizes and batch 2
(convert's self-check), and pass verify's reference and feature-window checks. Sliding windows
are reported: all of these networks pad, so cells match crops only approximately.
"""

from __future__ import annotations

from typing import Any

import pytest
from tv_export import Exports

import onnxfcn

pytestmark = pytest.mark.torchvision

ISSUE2 = ["vgg16", "alexnet", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "densenet121", "googlenet",
          "convnext_tiny"]
ISSUE4 = ["shufflenet_v2_x1_0", "mnasnet1_0", "regnet_y_400mf", "resnext50_32x4d", "inception_v3", "squeezenet1_1"]
EXPORTS = [("legacy", 11), ("legacy", 13), ("legacy", 17), ("dynamo", 18)]
CASES = [(a, e, o) for a in ISSUE2 + ISSUE4 for e, o in EXPORTS]


def ratio(check: Any) -> float:
    return max(o.ratio for o in check.outputs)


@pytest.mark.parametrize(("arch", "exporter", "opset"), CASES, ids=[f"{a}-{e}{o}" for a, e, o in CASES])
def test_torchvision_converts_and_verifies(arch: str, exporter: str, opset: int, exports: Exports,
                                           tier_table: list[dict[str, Any]]) -> None:
    path = exports.torchvision(arch, exporter, opset)
    plan = onnxfcn.inspect(path)
    assert plan, plan.blockers
    converted, report = onnxfcn.convert(path)
    ref = report.self_check[0]
    assert ref["comparison"] == "rounding bound"
    assert all(o["ratio"] <= 1 and o["original_ratio"] <= 1 for o in ref["outputs"])
    assert [c["size"] for c in report.self_check][1:] and all(c["batch"] == 2 for c in report.self_check)
    result = onnxfcn.verify(path, converted, positions=4, batch=2)
    by_name = {c.name: c for c in result.checks}
    assert by_name["reference"].passed, result.reason
    assert by_name["feature"].passed and by_name["feature"].exact, result.reason
    assert result, result.reason
    out = ref["outputs"][0]
    tier_table.append({
        "arch": arch, "exporter": exporter, "opset": opset, "exact": report.geometry.exact,
        "logit_max": by_name["reference"].outputs[0].ref_max,
        "self_check_error": out["error"], "self_check_bound": out["bound"], "self_check_ratio": out["ratio"],
        "self_check_original_ratio": out["original_ratio"], "reference_rel": out["max_rel_error"],
        "verify_reference_ratio": ratio(by_name["reference"]), "verify_feature_ratio": ratio(by_name["feature"]),
        "sliding_rel": max(o.needed_rtol for o in by_name["sliding"].outputs),
        "sliding_top1": by_name["sliding"].outputs[0].top1,
    })


SIMPLIFIED = [("resnet50", "dynamo", 18), ("mobilenet_v3_large", "legacy", 11)]


@pytest.mark.parametrize("simplifier", ["onnxslim", "onnxsim"])
@pytest.mark.parametrize(("arch", "exporter", "opset"), SIMPLIFIED, ids=[f"{a}-{e}{o}" for a, e, o in SIMPLIFIED])
def test_simplified_export_converts_and_verifies(arch: str, exporter: str, opset: int, simplifier: str,
                                                 exports: Exports) -> None:
    """Users often run onnxslim or onnxsim before converting: the simplified graph (shapes folded,
    ops fused) converts to the same geometry and passes verify."""
    import onnx

    path = exports.torchvision(arch, exporter, opset)
    model = onnx.load(path)
    if simplifier == "onnxslim":
        simplified = pytest.importorskip("onnxslim").slim(model)
    else:
        simplified, ok = pytest.importorskip("onnxsim").simplify(model)
        assert ok
    _, plain = onnxfcn.convert(model, self_check=False)
    converted, report = onnxfcn.convert(simplified)
    assert (report.geometry.window, report.geometry.stride, report.geometry.exact) == (
        plain.geometry.window, plain.geometry.stride, plain.geometry.exact)
    assert all(o["ratio"] <= 1 for o in report.self_check[0]["outputs"])
    result = onnxfcn.verify(simplified, converted, positions=4, batch=2)
    assert result, result.reason


STRIDED = [(a, s) for a in ISSUE2 + ISSUE4 for s in (16, 8)]


@pytest.mark.parametrize(("arch", "stride"), STRIDED, ids=[f"{a}-os{s}" for a, s in STRIDED])
def test_output_stride_verifies(arch: str, stride: int, exports: Exports) -> None:
    """Every architecture at output strides 16 and 8 (legacy exporter, opset 17): the self-check
    holds at the reference size within the rounding bound (squeeze-excitation pools read the
    original's cells; Inception's and DenseNet's AveragePools, with no dilations before opset 19,
    become depthwise Convs; GoogLeNet's ceil_mode pools keep their last window), and verify's
    feature check proves the dilated head on the denser map."""
    path = exports.torchvision(arch)
    converted, report = onnxfcn.convert(path, output_stride=stride)
    assert report.geometry.stride == (stride, stride)
    assert all(o["ratio"] <= 1 for o in report.self_check[0]["outputs"])
    result = onnxfcn.verify(path, converted, positions=4)
    by_name = {c.name: c for c in result.checks}
    assert by_name["reference"].passed and by_name["feature"].passed and by_name["feature"].exact, result.reason
    assert result, result.reason
