"""timm models (random weights, realistic scale, legacy exporter): DLA34, whose merged branches
agree in size only on a lattice, and HRNet-W18-small, whose trunk upsamples its low-resolution
branches (Resize, nearest, by 2, 4 and 8) into the high ones, convert with their lattices stated,
run exactly there, and pass verify; trunks with global context (split attention, GroupNorm,
response normalization, global-context blocks, SAME padding computed from the size) convert with
the reason and pass verify."""

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


# Trunk constructs found by converting timm's zoo with random weights (2026-12-06): each was refused
# or crashed before, and each converts now with the reason its cells see the whole image.
GLOBAL_CONTEXT = [
    ("resnest14d", "global pooling inside the trunk"),  # split attention: 5-D radix split, batch-1 views
    ("resnetv2_50x1_bit", "statistics over the map's positions"),  # BiT: GroupNorm
    ("poolformer_s12", "statistics over the map's positions"),  # GroupNorm with one group
    ("convnextv2_atto", "global pooling inside the trunk (/stages/stages.0/blocks/blocks.0/mlp/grn/ReduceL2)"),
    ("gcresnext26ts", "global pooling inside the trunk (/stages/stages.0/stages.0.0/attn/Softmax)"),  # GCNet
    ("tf_efficientnet_b0", "global pooling inside the trunk"),  # SAME padding computed from the map's size
]


@pytest.mark.parametrize("name, reason", GLOBAL_CONTEXT, ids=[n for n, _ in GLOBAL_CONTEXT])
def test_global_context_trunks_convert_and_verify(exports: Exports, name: str, reason: str) -> None:
    path = exports.timm(name)
    converted, report = onnxfcn.convert(path)
    assert report.geometry.global_context and any(r.startswith(reason) for r in report.geometry.reasons), \
        report.geometry.reasons
    assert report.self_check[0]["outputs"][0]["ratio"] <= 1
    if name.startswith("tf_"):
        assert any("the reference size's amounts" in c.after for c in report.changes)
    result = onnxfcn.verify(path, converted, sizes=[(256, 288)], positions="all")
    assert result, result.reason
    y = run(converted, rand([2, 3, 257, 291]))[0]  # a batch of 2 at a size off the stride grid
    assert y.shape[:2] == (2, 100) and np.isfinite(y).all()
