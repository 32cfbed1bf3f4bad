"""Sessions and batched runs: models that bake batch 1 still run sample by sample."""

from __future__ import annotations

import numpy as np
import pytest
from builders import Builder, image_shape, trunk
from conftest import rand

from onnxfcn.errors import OnnxFcnError
from onnxfcn.runtime import make_session, resolve_providers, run_batched


def test_baked_batch_falls_back_to_one_sample_at_a_time() -> None:
    b = Builder(13)
    y = b.node("Reshape", [trunk(b), b.ints("shape", [1, -1])])  # dynamo-style: batch 1 baked
    model = b.model(["N", 3, 18, 18], [y])
    sess = make_session(model)
    x = rand(image_shape(batch=5))
    (out,) = run_batched(sess, "image", x, chunk=4)
    assert out.shape == (5, 288)
    for n in range(5):
        np.testing.assert_array_equal(out[n:n + 1], sess.run(None, {"image": x[n:n + 1]})[0])


def test_provider_names() -> None:
    assert resolve_providers("cpu") == ["cpu"]
    assert resolve_providers("auto")[0] == "cpu"
    with pytest.raises(OnnxFcnError, match="cpu, cuda or auto"):
        resolve_providers("tpu")
