"""The graph index: constants, shapes computed from Shape, and deep graphs."""

from __future__ import annotations

import numpy as np
from builders import Builder, image_shape

from onnxfcn.graph import GraphIndex


def test_constants_and_shape_values_in_a_deep_graph() -> None:
    """A trunk 1200 nodes deep: asking about it must not recurse as deep as the graph."""
    b = Builder(13)
    y = b.node("Conv", ["image", b.weight("w", (8, 3, 3, 3))], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    for _ in range(1200):
        y = b.node("Relu", [y])
    shape = b.node("Shape", [y])
    w = b.node("Identity", [b.node("Transpose", [b.weight("wt", (4, 8))], perm=[1, 0])])
    model = b.model(image_shape(), [y, shape, w])
    index = GraphIndex(model, {"image": [1, 3, 18, 18]})
    assert not index.is_const(y) and not index.is_const(shape)
    assert index.is_const(w)
    value = index.const_value(w)
    assert value is not None and value.shape == (8, 4)
    np.testing.assert_array_equal(index.shape_value(shape), [1, 8, 18, 18])
