"""Head matching: find the image input, the trunk's feature maps and the dense head after them.

Every tensor gets a *state* by forward propagation from the image input (``states.py``):
CONST, SHAPE, SPATIAL, POOLED or FLAT (``TensorState``). The head is every node whose output is
POOLED or FLAT and reaches a graph output through POOLED/FLAT tensors only (``groups.py``).
POOLED tensors that flow back into the trunk (squeeze-excitation blocks) are not head: they are
global-context ops inside the trunk, recorded for geometry. TOKENS (a map's positions on one axis,
attention inside the trunk) return to a map or block the conversion (``tokens.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from ..errors import UnsupportedModelError
from ..graph import GraphIndex, ShapeProbe
from ..spellings import write_space_to_depth
from .groups import group_heads, refuse_headless
from .image import find_image_input
from .states import collapse_of, propagate
from .tokens import refuse_fixed_tokens
from .types import NCHW_AXES, NHWC_AXES, Analysis, Head, ImageInput, Layout, TensorInfo, TensorState, Tokens, perm_to

__all__ = ["NCHW_AXES", "NHWC_AXES", "Analysis", "Head", "ImageInput", "Layout", "TensorInfo", "TensorState", "Tokens",
           "analyze", "collapse_kind", "find_image_input", "flatten_order", "perm_to"]


def analyze(model: onnx.ModelProto, image: ImageInput, probe: ShapeProbe | None = None) -> Analysis:
    """Propagate tensor states, then collect the head nodes behind each dense output. ``probe``
    reads the shapes ONNX inference leaves open (``runtime.probe_shapes``)."""
    batch = image.batch if isinstance(image.batch, int) else 1
    shapes: dict[str, Sequence[int]] = {image.name: image.shape_at(batch, image.height, image.width)}
    index = GraphIndex(model, shapes, probe)
    spellings = write_space_to_depth(model, index)
    if spellings:
        index = GraphIndex(model, shapes, probe)
    info = propagate(model, index, image)
    refuse_fixed_tokens(index, info)
    heads = group_heads(model, index, info)
    if not heads:
        refuse_headless(model, index, info)
    return Analysis(index, image, info, heads, spellings)


def collapse_kind(a: Analysis, node: onnx.NodeProto) -> str | None:
    """How a node on a SPATIAL tensor removes the spatial axes: 'pool', 'pool+flatten', 'flatten'."""
    return collapse_of(a.index, node, a.info[node.input[0]])


def flatten_order(a: Analysis, feature: str) -> tuple[str, tuple[int, int, int]]:
    """Order in which a Flatten of ``feature`` lays out (C, H, W), and their sizes at reference."""
    lay = a.layout(feature)
    shape = a.index.static_shape(feature)
    if shape is None:
        raise UnsupportedModelError("feature map has no static shape at the reference size", feature)
    if max(lay) >= len(shape):
        raise UnsupportedModelError(f"feature map of shape {list(shape)} does not have the N, C, H, W axes its "
                                    f"layout {list(lay)} says", feature)
    c, h, w = shape[lay[1]], shape[lay[2]], shape[lay[3]]
    order = "".join("CHW"[[lay[1], lay[2], lay[3]].index(p)] for p in (1, 2, 3))
    return order, (int(c), int(h), int(w))
