"""Attention inside the trunk (issue #23): a map reshaped to H*W tokens, attended over, reshaped
back. Such a model converts, with every cell seeing the whole image (global context, approximate);
a transformer whose token count is fixed is refused with the reason and the node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from attention_models import SIZE
from helpers import assert_close, rand, run

import onnxfcn
from onnxfcn.errors import UnsupportedModelError

pytestmark = pytest.mark.attention

CASES = [(name, exporter, dynamic) for name in ("nonlocal", "mobilevit") for exporter in ("legacy", "dynamo")
         for dynamic in (False, True)]


@pytest.mark.parametrize(("name", "exporter", "dynamic"), CASES)
def test_attention_trunk_converts_as_global_context(attention_export, name: str, exporter: str,
                                                    dynamic: bool) -> None:
    path = attention_export(name, exporter, dynamic)
    original = onnx.load(path)
    conv, report = onnxfcn.convert(original, size=(SIZE, SIZE) if dynamic else None)
    geo = report.geometry
    assert geo.global_context and not geo.exact
    assert any("attention over the map's positions" in r and "sees the whole image" in r for r in geo.reasons)
    # At the reference size the converted model is the classifier (one cell), within rounding.
    x = rand([2, 3, SIZE, SIZE], seed=5)
    want = np.concatenate([run(original, x[k:k + 1])[0] for k in range(len(x))])  # exported at batch 1
    got = run(conv, x)[0]
    assert got.shape == (2, 100, 1, 1)
    assert float(want.std()) >= 2  # realistic logits
    assert_close(got[:, :, 0, 0], want, rel=1e-4)
    # Larger inputs: the attention runs over every position of the larger map.
    y = run(conv, rand([1, 3, SIZE + 3 * 32, SIZE + 32], seed=6))[0]
    assert geo.stride == (8, 8)
    assert y.shape == (1, 100, 3 * 4 + 1, 4 + 1) and np.isfinite(y).all()
    result = onnxfcn.verify(original, conv, sizes=[(SIZE + 64, SIZE + 32)])
    assert result, result.reason


def test_static_token_reshapes_are_rewritten_to_follow_the_map(attention_export) -> None:
    original = onnx.load(attention_export("nonlocal", "legacy", False))
    conv, report = onnxfcn.convert(original)
    rows = [c for c in report.changes if "tokens follow the map's size" in c.after]
    assert rows, report.changes
    assert any("tokens" in r.after for r in rows) and any("H, W" in r.after for r in rows)


def test_output_stride_refuses_attention(attention_export) -> None:
    original = onnx.load(attention_export("nonlocal", "legacy", False))
    with pytest.raises(UnsupportedModelError, match="attention over the map.s positions .* would cover the denser map.s extra cells"):
        onnxfcn.convert(original, output_stride=(4, 4))


@pytest.mark.parametrize(("name", "reason"), [
    ("vit_pos", r"position embedding of 16 tokens .*no fully convolutional form .*run it on crops"),
    ("mixer", r"MatMul multiplies the 16 tokens by fixed weights"),
])
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_fixed_token_counts_are_refused_with_the_reason(attention_export, name: str, reason: str,
                                                        exporter: str) -> None:
    original = onnx.load(attention_export(name, exporter, False))
    with pytest.raises(UnsupportedModelError, match=reason) as info:
        onnxfcn.convert(original)
    assert info.value.node  # names the node
    plan = onnxfcn.inspect(original)
    assert not plan and any(b["node"] == info.value.node for b in plan.blockers)
