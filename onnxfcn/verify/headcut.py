"""The original's head alone, cut out at its feature map with onnx-graphsurgeon, for the feature
check (the original head run by onnxruntime on the converted trunk's feature windows)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..graph import skeleton
from ..head import Analysis


def head_model(orig: onnx.ModelProto, feature: str, analysis: Analysis) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The original's head alone, cut out at ``feature``.

    The surgery runs on the weightless skeleton, where large weights are typed graph inputs; they
    stay inputs, fed as arrays, so a 500 MB head is neither copied into a new proto nor serialized.
    Returns the model and those weight feeds. A head that reads the image input too (tf2onnx's
    Reshape takes the batch size from ``Shape(image)``) keeps it as a second input: the feature
    check feeds it a zero image of the reference size, batch by batch.
    """
    import onnx_graphsurgeon as gs
    from onnx import numpy_helper

    graph = gs.import_onnx(skeleton(orig, {}))
    tensors = graph.tensors()
    fmap = tensors[feature]
    fmap.inputs.clear()  # detach the trunk: cleanup() then drops it
    dims: list[Any] = list(analysis.index.shape(feature) or [])
    if dims:
        dims[0] = "batch"
    elem = analysis.index.dtypes.get(feature) or onnx.TensorProto.FLOAT
    fmap.to_variable(dtype=onnx.helper.tensor_dtype_to_np_dtype(elem), shape=dims or None)
    weights = analysis.index.initializers
    image = analysis.image.name
    graph.inputs = [fmap, tensors[image]] if image in tensors else [fmap]
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    used = [t.name for n in graph.nodes for t in n.inputs if t.name in weights and not isinstance(t, gs.Constant)]
    reads_image = any(t.name == image for n in graph.nodes for t in n.inputs)
    graph.inputs = [fmap, *([tensors[image]] if reads_image else []), *(tensors[name] for name in dict.fromkeys(used))]
    model = gs.export_onnx(graph, do_type_check=False)
    del model.graph.value_info[:]
    model.ir_version = max(orig.ir_version, 4)
    del model.opset_import[:]
    model.opset_import.extend(orig.opset_import)
    return model, {name: numpy_helper.to_array(weights[name]) for name in dict.fromkeys(used)}
