"""The converted model's interface: names kept, named dynamic dims, clean value_info, metadata."""

from __future__ import annotations

import onnx
from builders import flatten_gemm
from patterns import two_heads

import onnxfcn


def _dims(vi: onnx.ValueInfoProto) -> list[object]:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_names_dims_and_value_info() -> None:
    original = flatten_gemm()
    original.doc_string = "my classifier"
    original.graph.doc_string = "graph doc"
    original.metadata_props.add(key="author", value="someone")
    original.graph.value_info.extend(onnx.shape_inference.infer_shapes(original).graph.value_info)
    assert original.graph.value_info
    converted, _ = onnxfcn.convert(original)
    assert [i.name for i in converted.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in converted.graph.output] == [o.name for o in original.graph.output]
    assert _dims(converted.graph.input[0]) == ["batch", 3, "height", "width"]
    assert _dims(converted.graph.output[0]) == ["batch", 5, "out_height", "out_width"]
    # Stale reference-size shapes are gone (what is written is an expression of height and width,
    # and only for the operands of elementwise merges, which this model has none of).
    assert not converted.graph.value_info
    assert converted.doc_string == "my classifier" and converted.graph.doc_string == "graph doc"
    assert converted.ir_version == original.ir_version
    assert list(converted.opset_import) == list(original.opset_import)
    meta = {p.key: p.value for p in converted.metadata_props}
    assert meta["author"] == "someone"
    assert meta["onnxfcn.window"] == "18,18" and meta["onnxfcn.stride"] == "2,2"
    assert meta["onnxfcn.offset"] == "0,0" and meta["onnxfcn.receptive_field"] == "18,18"
    assert meta["onnxfcn.mode"] == "window" and meta["onnxfcn.exact"] == "true"
    onnx.checker.check_model(converted, full_check=True)


def test_shape_inference_follows_symbolic_outputs() -> None:
    converted, _ = onnxfcn.convert(two_heads())
    inferred = onnx.shape_inference.infer_shapes(converted, strict_mode=True)
    outs = {o.name: _dims(o) for o in inferred.graph.output}
    assert outs["scores"] == ["batch", 5, "out_height", "out_width"]
    assert outs["boxes"] == ["batch", 4, "out_height", "out_width"]


def test_symbolic_shapes_let_onnxruntime_fuse_residual_adds(tmp_path) -> None:
    """With H and W dynamic, onnxruntime fuses a residual Add into the convolution before it only
    when it can tell both inputs have the same shape: the converted model's symbolic intermediate
    shapes let it, as the static conversion's fixed ones do."""
    import onnxruntime as ort
    from builders import Builder, gemm, image_shape

    b = Builder(13)
    x = b.node("Relu", [b.node("Conv", ["image", b.weight("w0", (16, 3, 3, 3)), b.weight("b0", (16,), 0.1)],
                                kernel_shape=[3, 3], strides=[2, 2])])
    y = b.node("Conv", [x, b.weight("w1", (16, 16, 3, 3)), b.weight("b1", (16,), 0.1)], kernel_shape=[3, 3],
               pads=[1, 1, 1, 1])
    se = b.node("Conv", [b.node("GlobalAveragePool", [y]), b.weight("se", (16, 16, 1, 1))], kernel_shape=[1, 1])
    y = b.node("Mul", [y, b.node("Sigmoid", [se])])  # squeeze-excitation, as in MobileNetV3's blocks
    y = b.node("Conv", [y, b.weight("w2", (16, 16, 1, 1)), b.weight("b2", (16,), 0.1)], kernel_shape=[1, 1])
    y = b.node("Relu", [b.node("Add", [y, x])])
    y = gemm(b, b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1), 16, 7)
    original = b.model(image_shape(), [y])

    def unfused(model: onnx.ModelProto, name: str) -> int:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(tmp_path / f"{name}.opt.onnx")
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return sum(n.op_type == "Add" for n in onnx.load(opts.optimized_model_filepath).graph.node)

    dynamic, _ = onnxfcn.convert(original)
    static, _ = onnxfcn.convert(original, static=(18, 18))
    assert not static.graph.value_info
    shapes = {vi.name: _dims(vi) for vi in dynamic.graph.value_info}
    add = next(n for n in dynamic.graph.node if n.op_type == "Add")
    assert set(add.input) <= set(shapes)  # the residual Add's operands, as expressions of height, width
    assert shapes[add.input[0]] == shapes[add.input[1]] and "height" in str(shapes[add.input[0]][2])
    bare = onnx.ModelProto()
    bare.CopyFrom(dynamic)
    del bare.graph.value_info[:]
    assert unfused(dynamic, "dynamic") == unfused(static, "static")
    if unfused(static, "static") == 0:  # this CPU's NCHWc layout fuses it (AVX2 and up): the control
        assert unfused(bare, "bare") == 1  # without the shapes, the dynamic model keeps it apart


def test_open_symbolic_shapes_leave_none_and_write_no_file(tmp_path, monkeypatch) -> None:
    """A QOperator global pool (com.microsoft QLinearAveragePool) is a graph onnxruntime's symbolic
    inference cannot finish: the converted model keeps no intermediate shapes, and nothing is
    written to the working directory (its own entry point saves the model there)."""
    from patterns import pooled
    from quantize import quantize_qdq

    original = quantize_qdq(pooled("GlobalAveragePool")(), "NCHW", True, "QOperator")
    monkeypatch.chdir(tmp_path)
    converted, _ = onnxfcn.convert(original)
    assert not converted.graph.value_info
    assert list(tmp_path.iterdir()) == []


def test_symbolic_shapes_do_not_import_pytorch() -> None:
    """onnxruntime.tools' __init__ imports PyTorch where it is installed (as in the test extra);
    convert loads the symbolic inference from its file and never does."""
    import subprocess
    import sys

    from helpers import ROOT

    code = ("import sys, onnxfcn; m, _ = onnxfcn.convert(sys.argv[1], size=(64, 64)); "
            "print(len(m.graph.value_info) > 0, 'torch' in sys.modules)")
    model = ROOT / "tests" / "data" / "exporters" / "optimum_resnet.onnx"  # residual Adds: shapes are written
    out = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout.split()
    assert out == ["True", "False"]


def test_without_sympy_convert_works_and_writes_no_shapes(monkeypatch) -> None:
    """sympy is a dependency, but an environment may lack it (a plain `pip install .` once did, and
    convert crashed): then the shapes are left out and nothing else changes."""
    import sys

    from builders import Builder, gemm, image_shape

    monkeypatch.setitem(sys.modules, "sympy", None)  # import sympy raises ImportError
    monkeypatch.delitem(sys.modules, "onnxfcn._ort_symbolic_shape_infer", raising=False)
    b = Builder(13)
    x = b.node("Relu", [b.node("Conv", ["image", b.weight("w0", (8, 3, 3, 3))], kernel_shape=[3, 3])])
    y = b.node("Add", [b.node("Conv", [x, b.weight("w1", (8, 8, 3, 3))], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), x])
    y = gemm(b, b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1), 8, 5)
    converted, report = onnxfcn.convert(b.model(image_shape(), [y]))
    assert not converted.graph.value_info and report.self_check
