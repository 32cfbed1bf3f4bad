"""Loading and saving: clear errors for bad files, atomic writes, external data, no input changes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import flatten_gemm
from conftest import ROOT, assert_close, rand, run

import onnxfcn
from onnxfcn.io import load_model, save_model


def test_not_onnx(tmp_path: Path) -> None:
    p = tmp_path / "x.onnx"
    p.write_text("hello, this is not a protobuf\n")
    with pytest.raises(onnxfcn.ModelLoadError, match="x.onnx"):
        load_model(p)


def test_truncated(tmp_path: Path) -> None:
    data = (ROOT / "models" / "digits_cnn.onnx").read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(onnxfcn.ModelLoadError, match="cut.onnx"):
        load_model(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(onnxfcn.ModelLoadError, match="no such file"):
        load_model(tmp_path / "nope.onnx")


def test_save_is_atomic_and_leaves_nothing_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = flatten_gemm()
    target = tmp_path / "out.onnx"
    save_model(model, target)
    before = target.read_bytes()

    def boom(*_: object, **__: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save_model", boom)
    with pytest.raises(OSError):
        save_model(flatten_gemm(seed=1), target)
    assert target.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]  # no temporary left


def test_external_data_round_trip(tmp_path: Path) -> None:
    """A model stored with external data converts; the data is written next to the output."""
    src = tmp_path / "src"
    src.mkdir()
    model = flatten_gemm()
    to_save = onnx.ModelProto()
    to_save.CopyFrom(model)  # onnx.save_model moves the weights out of the object it saves
    onnx.save_model(to_save, src / "m.onnx", save_as_external_data=True, location="m.weights", size_threshold=0)
    digest = hashlib.sha256((src / "m.onnx").read_bytes() + (src / "m.weights").read_bytes()).hexdigest()
    converted, report = onnxfcn.convert(src / "m.onnx")
    assert report.external_data
    out = tmp_path / "out"
    out.mkdir()
    written = save_model(converted, out / "fcn.onnx", external_data=True)
    assert {p.name for p in written} == {"fcn.onnx", "fcn.onnx.data"}
    reloaded = onnx.load(out / "fcn.onnx")
    x = rand([1, 3, 18, 18])
    assert_close(run(reloaded, x)[0].reshape(1, -1), run(model, x)[0])
    # The input files are untouched.
    assert hashlib.sha256((src / "m.onnx").read_bytes() + (src / "m.weights").read_bytes()).hexdigest() == digest


def test_save_keeps_caller_model_in_memory(tmp_path: Path) -> None:
    model = flatten_gemm()
    snapshot = model.SerializeToString()
    save_model(model, tmp_path / "a.onnx", external_data=True)
    assert model.SerializeToString() == snapshot


def test_over_2gb_model_uses_external_data(tmp_path: Path) -> None:
    """Two VGG-like dense heads of 1.2 GB each (one tensor cannot pass 2 GB): converted, saved
    with external data next to the output, and the result runs."""
    from onnx import TensorProto, helper, numpy_helper

    k, c, h, w = 12000, 512, 7, 7
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((k, c * h * w), dtype=np.float32), name)
             for name in ("w1", "w2")]
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "w1"], ["scores"], transB=1),
         helper.make_node("Gemm", ["flat", "w2"], ["boxes"], transB=1)],
        "big", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, c, h, w])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, k]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, k])],
        inits,
    )
    del inits
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    src = tmp_path / "big.onnx"
    onnx.save_model(model, src, save_as_external_data=True, location="big.data")
    del model, graph
    converted, report = onnxfcn.convert(src, self_check=False)
    assert report.external_data and report.geometry.window == (h, w)
    written = save_model(converted, tmp_path / "big_fcn.onnx")
    del converted
    assert {p.name for p in written} == {"big_fcn.onnx", "big_fcn.onnx.data"}
    assert (tmp_path / "big_fcn.onnx").stat().st_size < 1_000_000
    assert (tmp_path / "big_fcn.onnx.data").stat().st_size > 2**31
    from onnxfcn.runtime import make_session

    x = np.ones((1, c, h + 2, w), dtype=np.float32)
    scores, boxes = make_session(str(tmp_path / "big_fcn.onnx")).run(None, {"image": x})
    assert scores.shape == (1, k, 3, 1) and boxes.shape == (1, k, 3, 1)
