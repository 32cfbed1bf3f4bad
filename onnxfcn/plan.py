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
    return Planned(analysis, plan, trunk, geo, mode, edits, _stride_changes(analysis, head_nodes, edits))


def _stride_changes(analysis: Analysis, head_nodes: list[onnx.NodeProto], edits: dict[str, Edit]) -> list[Change]:
    """The output stride's edits, as the report lists changes (graph order)."""
    changes, seen = [], set()
    # A rewritten head node keeps the original's output name: the head's own nodes come first.
    for node in head_nodes + list(analysis.index.graph.node):
        e = edits.get(node.output[0]) if node.output else None
        if e is None or node.output[0] in seen:
            continue
        seen.add(node.output[0])
        if e.values is not None:
            after = f"{'pads' if e.op == 'Pad' else 'ends'} scaled by {e.factor[0]}x{e.factor[1]} for the denser map"
        else:
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
                parts.append(f"reads every {e.subsample[0]}x{e.subsample[1]}th cell, the original's (a MaxPool "
                             "1x1 picks them)")
            after = ", ".join(parts) or "unchanged"
        before = f"{e.op} (output stride)"
        if e.values is None and e.subsample is None:
            s, d = attr(node, "strides") or [1, 1], attr(node, "dilations") or [1, 1]
            before = f"{e.op} strides {s[0]}x{s[1]}, dilations {d[0]}x{d[1]}"
        changes.append(Change(node_label(node), before, after))
    return changes
