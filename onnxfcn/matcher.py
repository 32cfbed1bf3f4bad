"""Walk each head node by node, give each to the first rule that matches it, and collect every
refusal with its node before building anything (``inspect`` lists them all)."""

from __future__ import annotations

import onnx

from .errors import UnsupportedModelError
from .graph import node_label
from .head import Analysis
from .rewrite import MODES, Blocker, Builder, Change, HeadContext, Mapped, Plan, Reject
from .rules import REGISTRY, Rule


class HeadRefusedError(UnsupportedModelError):
    """No rule can rewrite one or more head nodes; ``blockers`` holds every one."""

    def __init__(self, blockers: list[Blocker]) -> None:
        first = blockers[0]
        more = f" (and {len(blockers) - 1} more: {'; '.join(b.node for b in blockers[1:])})" if len(blockers) > 1 else ""
        super().__init__(f"{first.op}: {first.reason}{more}", first.node)
        self.blockers = blockers


def describe(ctx: HeadContext, node: onnx.NodeProto) -> str:
    shape = ctx.index.shape(node.input[0]) if node.input else None
    return f"{node.op_type}({'x'.join(str(d) for d in shape) if shape else '?'})"


def plan_head_rewrite(analysis: Analysis, mode: str = "window", rules: list[Rule] | None = None) -> Plan:
    """The plan for every head. Raises ``HeadRefusedError`` naming every node no rule can take
    (a node that only reads a refused node's output is not reported again)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    rules = REGISTRY if rules is None else rules
    ctx = HeadContext(analysis, mode)
    positions = {id(n): k for k, n in enumerate(analysis.index.graph.node)}
    blocked: set[str] = set()
    for head in analysis.heads:
        consumed: set[int] = set()
        for node in head.nodes:
            if id(node) in consumed:
                continue
            if any(i in blocked for i in node.input):
                blocked.update(node.output)
                continue
            rule, nodes = _find(ctx, node, rules)
            why = "op not supported in a dense head" if rule is None else rule.check(ctx, nodes)
            if rule is None or why is not None:
                ctx.plan.blockers.append(Blocker(node_label(node), node.op_type, str(why)))
                blocked.update(o for n in nodes for o in n.output)
                continue
            b = Builder(ctx.index, ctx.plan)
            before = describe(ctx, node)
            try:
                after = rule.rewrite(ctx, nodes, b)
            except Reject as r:
                ctx.plan.blockers.append(Blocker(node_label(r.node), r.node.op_type, r.reason))
                blocked.update(o for n in nodes for o in n.output)
                continue
            ctx.plan.replacements[positions[id(node)]] = b.nodes
            for extra in nodes[1:]:  # the rest of a multi-node construct goes
                consumed.add(id(extra))
                ctx.plan.replacements[positions[id(extra)]] = []
            if after:
                ctx.plan.changes.append(Change(node_label(node), before, after))
        if not ctx.plan.blockers:
            _bind_outputs(ctx, head.outputs, positions[id(head.nodes[-1])])
    if ctx.plan.blockers:
        raise HeadRefusedError(ctx.plan.blockers)
    return ctx.plan


def _find(ctx: HeadContext, node: onnx.NodeProto, rules: list[Rule]) -> tuple[Rule | None, list[onnx.NodeProto]]:
    for rule in rules:
        nodes = rule.match(ctx, node)
        if nodes is not None:
            return rule, nodes
    return None, [node]


def _bind_outputs(ctx: HeadContext, outputs: list[str], last: int) -> None:
    """Each graph output keeps its name: an Identity when its counterpart has another name."""
    for out in outputs:
        m = ctx.mapped[out]
        if m.name != out:
            b = Builder(ctx.index, ctx.plan)
            b.node("Identity", [m.name], out, outputs=[out])
            ctx.plan.replacements.setdefault(last, []).extend(b.nodes)
            m = Mapped(out, m.layout, m.window)
        ctx.plan.outputs[out] = m
