"""Planning: analyse a model and plan its rewrite without changing it. convert, inspect and
verify all start here, so they cannot disagree about mode, geometry or exactness."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx

from .errors import AlreadyConvolutionalError, OnnxFcnError
from .geometry import Geometry, plan_geometry
from .graph import attr, node_label
from .head import Analysis, analyze, find_image_input
from .matcher import plan_head_rewrite
from .metadata import is_converted
from .rewrite import MODES, Change, Plan
from .runtime import probe_shapes
from .stride import Edit, plan_head_dilation
from .trunk import TrunkPlan, plan_trunk_rewrite

log = logging.getLogger(__name__)

def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise OnnxFcnError(f"mode must be window or dense, not {mode!r}")


def analyse_model(model: onnx.ModelProto, input_name: str | None = None,
                  size: tuple[int, int] | None = None) -> Analysis:
    """Find the image input and the head; raise if the model is already converted."""
    if is_converted(model):
        raise AlreadyConvolutionalError("already converted by onnxfcn (metadata onnxfcn.mode is set)")
    image = find_image_input(model, input_name, size)
    return analyze(model, image, probe_shapes)


@dataclass
class Planned:
    """Everything convert would do to a model, before it does it (inspect stops here)."""

    analysis: Analysis
    plan: Plan
    trunk: TrunkPlan
    geometry: Geometry
    mode: str  # the mode that applies: dense falls back to window when there is no pool to drop
    # Output stride: the nodes to dilate or re-stride, trunk and head, keyed by first output.
    stride_edits: dict[str, Edit]
    stride_changes: list[Change]


def plan_conversion(model: onnx.ModelProto, *, mode: str = "window", input_name: str | None = None,
                    size: tuple[int, int] | None = None, output_stride: tuple[int, int] | None = None) -> Planned:
    """Analyse and plan the rewrite; convert, inspect and verify all start here."""
    check_mode(mode)  # before the analysis, which costs
    return plan_analysis(analyse_model(model, input_name, size), mode, output_stride)


def plan_analysis(analysis: Analysis, mode: str = "window", output_stride: tuple[int, int] | None = None) -> Planned:
    """The rewrite of an analysed model: head rules, geometry, trunk generalization, and with
    ``output_stride`` the trunk and head edits that give it."""
    check_mode(mode)
    plan = plan_head_rewrite(analysis, mode)
    if mode == "dense" and not plan.pools_dropped:
        log.info("dense mode: the head has no global pool to drop; it slides whole windows")
        mode = "window"
    windows = set(plan.windows)
    if len(windows) != 1:
        raise OnnxFcnError(f"heads read feature windows of different sizes: {sorted(windows)}")
    geo, edits = plan_geometry(analysis, plan.features, windows.pop(), mode, output_stride)
    head_nodes = [n for pos in sorted(plan.replacements) for n in plan.replacements[pos]]
    edits |= plan_head_dilation(head_nodes, plan.sources, geo.feature_dilation, analysis.index.opset,
                                plan.initializers, analysis.index.dtypes.get(plan.features[0]) or onnx.TensorProto.FLOAT)
    trunk = plan_trunk_rewrite(analysis)
    return Planned(analysis, plan, trunk, geo, mode, edits, _stride_changes(analysis, plan, edits))


def _edit_text(node: onnx.NodeProto, e: Edit) -> str:
    """What an output-stride edit does to ``node``, in words."""
    if e.values is not None:
        return f"{'pads' if e.op == 'Pad' else 'ends'} scaled by {e.factor[0]}x{e.factor[1]} for the denser map"
    parts = []
    if e.strides is not None and e.strides != tuple(attr(node, "strides") or [1, 1]):
        parts.append(f"strides {e.strides[0]}x{e.strides[1]}")
    if e.factor != (1, 1):
        dil = attr(node, "dilations") or [1, 1]
        parts.append(f"dilations {dil[0] * e.factor[0]}x{dil[1] * e.factor[1]}")
    if e.pads is not None and e.pads != tuple(attr(node, "pads") or [0, 0, 0, 0]):
        parts.append(f"pads {list(e.pads)}")
    if e.as_conv is not None:
        parts.insert(0, "as a depthwise Conv (AveragePool has no dilations before opset 19)")
    if e.pad_with is not None:
        parts.append("its pads in a Pad node before it")
    if e.subsample is not None:
        parts.append(f"reads every {e.subsample[0]}x{e.subsample[1]}th cell, the original's (a MaxPool 1x1 picks them)")
    return ", ".join(parts) or "unchanged"


def _stride_changes(analysis: Analysis, plan: Plan, edits: dict[str, Edit]) -> list[Change]:
    """The output stride's edits, as the report lists changes (graph order). An edit of a node the
    head's rewrite built goes into the row of the original node it replaces (the new node did not
    exist before); the trunk's edits get rows of their own."""
    graph = analysis.index.graph
    rows = {c.node: c for c in plan.changes}
    changes = []
    for pos in sorted(plan.replacements):
        original = graph.node[pos]
        texts = [_edit_text(n, edits[n.output[0]]) for n in plan.replacements[pos] if n.output and n.output[0] in edits]
        if not texts:
            continue
        row = rows.get(node_label(original))
        if row is None:
            row = Change(node_label(original), f"{original.op_type} (output stride)", "")
            changes.append(row)
        row.after = "; ".join([*([row.after] if row.after else []), *(f"{t} (output stride)" for t in texts)])
    built = {n.output[0] for nodes in plan.replacements.values() for n in nodes if n.output}
    for pos, node in enumerate(graph.node):
        e = edits.get(node.output[0]) if node.output else None
        if e is None or pos in plan.replacements or node.output[0] in built:
            continue
        before = f"{e.op} (output stride)"
        if e.values is None and e.subsample is None:
            s, d = attr(node, "strides") or [1, 1], attr(node, "dilations") or [1, 1]
            before = f"{e.op} strides {s[0]}x{s[1]}, dilations {d[0]}x{d[1]}"
        changes.append(Change(node_label(node), before, _edit_text(node, e)))
    return changes
