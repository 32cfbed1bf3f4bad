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
    assert not converted.graph.value_info  # stale reference-size shapes are gone
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
