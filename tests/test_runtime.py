"""Sessions and batched runs: models that bake batch 1 still run sample by sample."""

from __future__ import annotations

import numpy as np
import pytest
from builders import Builder, image_shape, trunk
from conftest import rand

from onnxfcn.errors import OnnxFcnError
from onnxfcn.runtime import cuda_available, make_session, resolve_providers, run_batched


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


@pytest.mark.skipif(cuda_available(), reason="CUDA is present")
def test_cuda_session_that_falls_back_to_cpu_is_refused() -> None:
    """Without a working CUDA provider onnxruntime quietly builds a CPU session; a "cuda" check on
    it would compare the CPU with itself."""
    b = Builder(13)
    model = b.model(["N", 3, 18, 18], [trunk(b)])
    with pytest.raises(OnnxFcnError, match="could not start it"):
        make_session(model, "cuda")


def _overcommit_always() -> bool:
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


@pytest.mark.skipif(_overcommit_always(), reason="vm.overcommit_memory=1: a 16 TiB allocation succeeds and then "
                    "fills memory instead of failing (seen on the GPU machine, where this test ran until killed)")
def test_onnxruntime_allocation_failure_is_a_resource_error() -> None:
    """A real onnxruntime allocation failure (a 64 TiB ConstantOfShape): out of memory, never a mismatch."""
    import onnx
    from onnx import helper

    from onnxfcn.errors import ResourceError
    from onnxfcn.runtime import is_out_of_memory, make_session
    from onnxfcn.verify import _run

    graph = helper.make_graph([helper.make_node("ConstantOfShape", ["s"], ["y"])], "g",
                              [helper.make_tensor_value_info("s", onnx.TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    sess = make_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                          ir_version=8))
    feeds = {"s": np.array([1 << 42], np.int64)}
    with pytest.raises(Exception) as raw:
        sess.run(None, feeds)
    assert is_out_of_memory(raw.value)
    with pytest.raises(ResourceError, match="out of memory at 9x9"):
        _run(sess, feeds, "9x9")
