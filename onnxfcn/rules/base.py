"""What a head rule is, and the registry the matcher walks in order."""

from __future__ import annotations

from typing import ClassVar

import onnx

from ..rewrite import Builder, HeadContext


class Rule:
    """One head construct, in three parts kept apart.

    - ``match``: the nodes the construct covers, starting at ``node`` (None: not this construct).
      Most constructs are one node; an idiom (a ravel and the Gather that undoes it) is several.
    - ``check``: why the construct cannot be rewritten here (None: it can). Nothing is built.
    - ``rewrite``: the replacement, into ``b``; returns a description of the change, or None when
      the node is only copied onto the 4-D tensors.
    """

    name: ClassVar[str] = ""
    ops: ClassVar[frozenset[str]] = frozenset()
    # Lower goes first: the collapse owns every node on the spatial map whatever its op, and a
    # multi-node idiom must be tried before the rule for its first node alone.
    priority: ClassVar[int] = 50

    def match(self, ctx: HeadContext, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        return [node] if node.op_type in self.ops else None

    def check(self, ctx: HeadContext, nodes: list[onnx.NodeProto]) -> str | None:
        return None

    def rewrite(self, ctx: HeadContext, nodes: list[onnx.NodeProto], b: Builder) -> str | None:
        raise NotImplementedError


REGISTRY: list[Rule] = []


def register(cls: type[Rule]) -> type[Rule]:
    """Add a rule; the matcher tries rules by priority, then registration order; first match wins."""
    REGISTRY.append(cls())
    REGISTRY.sort(key=lambda r: r.priority)  # stable: registration order within a priority
    return cls
