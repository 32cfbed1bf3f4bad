"""Exporter spellings of standard ops, written as the ops before the analysis.

PyTorch has no space-to-depth op: TResNet's stem writes one as Reshape to (N, C, H/b, b, W/b, b),
Transpose (0, 3, 5, 1, 2, 4) and Reshape to (N, C*b*b, H/b, W/b), which is ONNX's SpaceToDepth
by its definition. Written as that op (the last Reshape's output name kept), its geometry is one
the walk knows (a b x b kernel of stride b); spelled out, the Reshapes split the map's axes.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import onnx
from onnx import helper

from .graph import GraphIndex, attr, node_label

log = logging.getLogger(__name__)

Spelling = tuple[str, str, str]  # (node, before, after), as the report lists changes
_S2D_PERM = [0, 3, 5, 1, 2, 4]


def write_space_to_depth(model: onnx.ModelProto, index: GraphIndex) -> list[Spelling]:
    """Replace each Reshape-Transpose-Reshape space-to-depth (static shapes at the reference size,
    intermediate tensors used once and not graph outputs) by SpaceToDepth; return what changed."""
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for i in node.input:
            users[i].append(node)
    outputs = {o.name for o in model.graph.output}
    found: list[tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto, int]] = []
    for node in model.graph.node:
        match = _match(index, users, outputs, node) if node.op_type == "Reshape" else None
        if match is not None:
            found.append((node, *match))
    if not found:
        return []
    drop = {id(n) for first, t, last, _ in found for n in (t, last)}
    replacement = {id(first): helper.make_node("SpaceToDepth", [first.input[0]], [last.output[0]],
                                               name=last.name or first.name, blocksize=b)
                   for first, _, last, b in found}
    nodes = [replacement.get(id(n), n) for n in model.graph.node if id(n) not in drop]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    log.info("%d space-to-depth spellings written as SpaceToDepth", len(found))
    return [(node_label(last), "Reshape, Transpose, Reshape (space to depth)", f"SpaceToDepth(blocksize={b})")
            for _, _, last, b in found]


def _match(index: GraphIndex, users: dict[str, list[onnx.NodeProto]], outputs: set[str],
           node: onnx.NodeProto) -> tuple[onnx.NodeProto, onnx.NodeProto, int] | None:
    src, split = index.static_shape(node.input[0]), index.static_shape(node.output[0])
    if src is None or split is None or len(src) != 4 or len(split) != 6:
        return None
    n, c, h, w = src
    b = split[3]
    if b < 2 or h % b or w % b or tuple(split) != (n, c, h // b, b, w // b, b):
        return None
    after = users[node.output[0]]
    if len(after) != 1 or after[0].op_type != "Transpose" or list(attr(after[0], "perm", [])) != _S2D_PERM:
        return None
    t = after[0]
    after = users[t.output[0]]
    if len(after) != 1 or after[0].op_type != "Reshape" or {node.output[0], t.output[0]} & outputs:
        return None
    last = after[0]
    if index.static_shape(last.output[0]) != (n, c * b * b, h // b, w // b):
        return None
    return t, last, b
