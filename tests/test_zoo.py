"""The model-zoo graphs that ship inside the onnx wheel (onnx/backend/test/data/light).

Their weights are ConstantOfShape nodes filled with 0.02, which makes every class score equal.
For a real numerical check the tests replace the smaller weights with seeded random values
(the 100M-element first dense layer of VGG19/AlexNet/ZFNet stays computed, as shipped).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import LIGHT, assert_close, rand, run
from onnx import numpy_helper

import onnxfcn

CONVERTIBLE = ["bvlc_alexnet", "densenet121", "inception_v1", "resnet50", "shufflenet", "squeezenet", "vgg19",
               "zfnet512"]


def randomized(name: str, max_elements: int = 20_000_000, seed: int = 0) -> onnx.ModelProto:
    model = onnx.load(LIGHT / f"light_{name}.onnx")
    rng = np.random.default_rng(seed)
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in init:
            shape = [int(v) for v in init[node.input[0]]]
            n = int(np.prod(shape))
            if n <= max_elements:
                fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                value = (rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32)
                if len(shape) == 1:  # biases, BN parameters: keep variances positive
                    value = np.abs(value) * 0.5 + 0.5
                model.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                for vi in model.graph.input:
                    if vi.name == node.output[0]:
                        break
                else:
                    model.graph.input.append(onnx.helper.make_tensor_value_info(node.output[0], 1, shape))
                continue
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


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


@pytest.mark.parametrize("name", ["resnet50", "squeezenet", "inception_v1", "shufflenet", "bvlc_alexnet"])
def test_light_zoo_random_weights_verify(name: str) -> None:
    original = randomized(name)
    converted, report = onnxfcn.convert(original)
    x = rand([1, 3, 224, 224])
    assert_close(run(converted, x)[0].reshape(1, -1), run(original, x)[0].reshape(1, -1))
    result = onnxfcn.verify(original, converted, batch=1, positions=4)
    assert result, result.reason
    feature = next(c for c in result.checks if c.name == "feature")
    assert feature.exact and feature.passed


def test_inception_v2_is_refused_with_the_merging_node() -> None:
    """Its branches disagree in size at most inputs: convert says which node and why."""
    with pytest.raises(onnxfcn.UnsupportedModelError, match="n161.*sizes differ"):
        onnxfcn.convert(LIGHT / "light_inception_v2.onnx")
