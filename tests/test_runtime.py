"""Sessions and batched runs: models that bake batch 1 still run sample by sample; sessions that
share the weights in memory or map them from the file compute what the whole model does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import Builder, flatten_gemm, image_shape, trunk, wide
from helpers import assert_close, rand
from onnx import numpy_helper

from onnxfcn.errors import OnnxFcnError
from onnxfcn.graph import tensor_nbytes
from onnxfcn.io import save_model
from onnxfcn.runtime import (
    SHARED_MIN_BYTES,
    cuda_available,
    file_session,
    light_session,
    make_session,
    resolve_providers,
    run_batched,
    session_weights,
)
from onnxfcn.wire import initializer_data


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
    from onnxfcn.verify.sessions import run

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
        run(sess, feeds, "9x9")


# ---- sessions that do not copy the weights ---------------------------------------------------
def test_light_session_computes_what_the_whole_model_does() -> None:
    model = wide()
    x = rand(image_shape(batch=3))
    want = make_session(model).run(None, {"image": x})[0]
    assert want.std() > 2  # realistic logits
    feature = model.graph.node[-4].output[0]  # a hidden tensor, as an extra output
    sess = light_session(model, outputs={feature: onnx.TensorProto.FLOAT})
    weights = session_weights(sess)
    assert {t.name for t in model.graph.initializer if tensor_nbytes(t) >= SHARED_MIN_BYTES} == set(weights)
    assert len(weights) >= 2
    del model  # the arrays are the session's own
    got, hidden = sess.run(None, {"image": x})
    assert_close(got, want, 1e-5)
    assert hidden.ndim == 2


def test_light_session_falls_back_to_the_whole_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should onnxruntime refuse the light model (an optimizer reading a stub), the session is
    built from the whole model instead, and computes the same."""
    import onnxfcn.runtime as rt

    model = wide()
    real = rt._start

    def refuse_light(m: object, opts: object, provider: str) -> object:
        if isinstance(m, str):  # the light model is started from its temporary file
            raise RuntimeError("External initializer: offset 0 out of bounds")
        return real(m, opts, provider)  # type: ignore[arg-type]

    monkeypatch.setattr(rt, "_start", refuse_light)
    x = rand(image_shape(batch=2))
    sess = light_session(model)
    assert session_weights(sess) == {}
    assert_close(sess.run(None, {"image": x})[0], make_session(model).run(None, {"image": x})[0], 1e-5)


def test_file_session_reads_the_weights_from_the_file(tmp_path: Path) -> None:
    model = wide()
    path = tmp_path / "m.onnx"
    save_model(model, path)
    x = rand(image_shape(batch=2))
    want = make_session(model).run(None, {"image": x})[0]
    feature = model.graph.node[-4].output[0]
    got, hidden = file_session(path, outputs={feature: onnx.TensorProto.FLOAT}).run(None, {"image": x})
    assert_close(got, want, 1e-5)
    assert hidden.shape == (2, 1024)
    # The bytes in the file are what runs: change them, and the session sees the change.
    data = bytearray(path.read_bytes())
    (name, offset, length), = [d for d in initializer_data(bytes(data)) if d and d[2] >= SHARED_MIN_BYTES][-1:]
    data[offset:offset + length] = bytes(length)  # the last dense weight, zeroed in the file only
    path.write_bytes(bytes(data))
    got = file_session(path).run(None, {"image": x})[0]
    bias = next(t for t in model.graph.initializer if t.name == model.graph.node[-2].input[2])
    np.testing.assert_array_equal(got, np.broadcast_to(numpy_helper.to_array(bias), got.shape))


def test_file_session_keeps_external_data_where_it_is(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A model saved with external data: its references stay as they are (onnxruntime finds the
    data file in the model's folder), the ordinary way is not needed."""
    model = wide()
    path = tmp_path / "ext.onnx"
    save_model(model, path, external_data=True)
    x = rand(image_shape(batch=2))
    with caplog.at_level("DEBUG", logger="onnxfcn.runtime"):
        got = file_session(path).run(None, {"image": x})[0]
    assert not [r for r in caplog.records if "the ordinary way" in r.getMessage()]
    assert_close(got, make_session(model).run(None, {"image": x})[0], 1e-5)


def test_file_session_the_ordinary_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """Should onnxruntime refuse the light model (no option to locate the file), the session is
    built from the whole file, extra outputs and all."""
    import onnxfcn.runtime as rt

    model = wide()
    path = tmp_path / "m.onnx"
    save_model(model, path)
    real = rt._start

    def refuse_light(m: object, opts: object, provider: str) -> object:
        if isinstance(m, bytes) and len(m) < 100_000:  # the light model, not the whole one
            raise RuntimeError("unknown session option")
        return real(m, opts, provider)  # type: ignore[arg-type]

    monkeypatch.setattr(rt, "_start", refuse_light)
    x = rand(image_shape(batch=2))
    want = make_session(model).run(None, {"image": x})[0]
    feature = model.graph.node[-4].output[0]
    with caplog.at_level("DEBUG", logger="onnxfcn.runtime"):
        got, hidden = file_session(path, outputs={feature: onnx.TensorProto.FLOAT}).run(None, {"image": x})
        plain = file_session(path).run(None, {"image": x})[0]
    assert len([r for r in caplog.records if "the ordinary way" in r.getMessage()]) == 2
    assert_close(got, want, 1e-5)
    assert_close(plain, want, 1e-5)
    assert hidden.shape == (2, 1024)


def test_a_huge_declared_input_allocates_nothing_and_fails_cleanly() -> None:
    """Fuzzing found an input declared 2147483647 x 2147483647: its size overflowed int64, passed
    the probe's limit and numpy refused the allocation ("array is too big"). Sizes are Python
    integers now; inspect and convert end in an OnnxFcnError."""
    import onnxfcn
    from onnxfcn.runtime import probe_shapes

    model = flatten_gemm()
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_value = 2**31 - 1
    assert probe_shapes(model, {"image": [1, 3, 2**31 - 1, 2**31 - 1]}, {"x": 0}) == {}
    assert probe_shapes(model, {"image": [1, 3, -1, 5]}, {"x": 0}) == {}
    assert not onnxfcn.inspect(model)
    with pytest.raises(onnxfcn.OnnxFcnError):
        onnxfcn.convert(model)


def test_a_converted_input_of_unknown_type_is_a_clear_error(tmp_path: Path) -> None:
    """Fuzzing found a converted model whose input element type is 99 (KeyError in verify)."""
    import onnxfcn

    original = flatten_gemm()
    converted, _ = onnxfcn.convert(original)
    converted.graph.input[0].type.tensor_type.elem_type = 99
    with pytest.raises(onnxfcn.InvalidConversionError, match="element type 99"):
        onnxfcn.verify(original, converted)
