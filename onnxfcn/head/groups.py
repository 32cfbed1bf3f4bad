"""Heads: the nodes behind each dense output, grouped where outputs share nodes; and the refusal
of a model whose outputs are maps only."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from ..errors import AlreadyConvolutionalError, UnsupportedModelError
from ..graph import GraphIndex, node_label, walk_back
from .types import Head, TensorInfo, TensorState

_HEAD_STATES = (TensorState.POOLED, TensorState.FLAT)


@dataclass
class _Group:
    """Nodes (by id), feature maps and outputs of heads that share nodes (fan-out from one flatten)."""

    nodes: set[int] = field(default_factory=set)
    features: set[str] = field(default_factory=set)
    outputs: set[str] = field(default_factory=set)


def group_heads(model: onnx.ModelProto, index: GraphIndex, info: dict[str, TensorInfo]) -> list[Head]:
    """Walk back from each dense output through POOLED/FLAT tensors; heads sharing nodes merge."""
    head_nodes: dict[int, onnx.NodeProto] = {}
    groups: list[_Group] = []
    for out_name in index.graph_outputs:
        st = info.get(out_name)
        if st is None or st.state not in _HEAD_STATES:
            continue
        reached = walk_back([out_name], index.producer, follow=lambda t: t in info and info[t].state in _HEAD_STATES)
        found = [index.producer[t] for t in reached if t in index.producer]
        head_nodes.update((id(n), n) for n in found)
        mine = _Group({id(n) for n in found},
                      {i for n in found for i in n.input if i in info and info[i].state is TensorState.SPATIAL},
                      {out_name})
        shared = next((g for g in groups if g.nodes & mine.nodes), None)
        if shared is None:
            groups.append(mine)
        else:
            shared.nodes |= mine.nodes
            shared.features |= mine.features
            shared.outputs |= mine.outputs
    order = {id(n): k for k, n in enumerate(model.graph.node)}
    return [Head(sorted((head_nodes[i] for i in g.nodes), key=lambda n: order[id(n)]), sorted(g.features),
                 sorted(g.outputs)) for g in groups]


def refuse_headless(model: onnx.ModelProto, index: GraphIndex, info: dict[str, TensorInfo]) -> None:
    """Raise for a model with no head: exit 3 when every output is a 4-D map, else naming the node
    whose effect on the map the tool cannot follow."""
    outs = ", ".join(f"{o} ({info[o].state.value if o in info else '?'})" for o in index.graph_outputs)
    if all(info.get(o, TensorInfo(TensorState.CONST)).state is TensorState.SPATIAL for o in index.graph_outputs):
        _refuse_lost_map(model, index, info)
        raise AlreadyConvolutionalError(
            f"already fully convolutional: no dense head or global pool before the outputs ({outs})")
    raise UnsupportedModelError(f"no convertible head: no output is computed from pooled or flattened features ({outs})")


def _declared_rank(model: onnx.ModelProto, name: str) -> int | None:
    for vi in model.graph.output:
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def _refuse_lost_map(model: onnx.ModelProto, index: GraphIndex, info: dict[str, TensorInfo]) -> None:
    """'Already fully convolutional' only when every output is a 4-D map. An output of another
    rank (N x K scores, say) went through a node whose effect on the map the tool cannot follow
    (a custom or quantized op with no shape inference): refuse it, naming that node."""
    flat = [o for o in index.graph_outputs
            if (index.rank(o) if index.rank(o) is not None else _declared_rank(model, o)) not in (None, 4)]
    if not flat:
        return
    needed = index.ancestors(flat)
    for node in model.graph.node:
        if not any(o in needed for o in node.output):
            continue
        if not any(info.get(i) is not None and info[i].state is TensorState.SPATIAL for i in node.input if i):
            continue
        out = node.output[0] if node.output else ""
        if index.rank(out) is None or index.rank(out) != index.rank(node.input[0]):
            domain = f" ({node.domain})" if node.domain else ""
            raise UnsupportedModelError(
                f"{node.op_type}{domain}: op not supported: the tool cannot follow what it does to the feature map "
                f"(output '{flat[0]}' is not a 4-D map, so the model is not fully convolutional)", node_label(node))
    raise UnsupportedModelError(f"output '{flat[0]}' is not a 4-D map, and no node that collapses the feature map "
                                "was recognized")
