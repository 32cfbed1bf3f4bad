"""Planning: analyse a model and plan its rewrite without changing it. convert, inspect and
verify all start here, so they cannot disagree about mode, geometry or exactness. Also the
metadata that carries the plan's geometry in a converted model."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx

from ._version import __version__
from .errors import AlreadyConvolutionalError, InvalidConversionError, OnnxFcnError
from .geometry import Geometry, Lattice, lattice_text, parse_lattice, plan_geometry
from .graph import attr, node_label
from .head import Analysis, ImageInput, analyze, find_image_input
from .matcher import plan_head_rewrite
from .rewrite import MODES, Change, Plan
from .runtime import probe_shapes
from .stride import Edit, plan_head_dilation
from .trunk import TrunkPlan, plan_trunk_rewrite

log = logging.getLogger(__name__)

META_PREFIX = "onnxfcn."


def metadata(geo: Geometry, features: list[str], image: ImageInput) -> dict[str, str]:
    """The geometry, the image input, and the converted graph's NCHW tensor the head reads (for verify)."""
    def pair(p: tuple[int, int]) -> str:
        return f"{p[0]},{p[1]}"

    return {
        META_PREFIX + "window": pair(geo.window),
        META_PREFIX + "stride": pair(geo.stride),
        META_PREFIX + "offset": pair(geo.offset),
        META_PREFIX + "receptive_field": pair(geo.receptive_field),
        META_PREFIX + "receptive_field_start": pair(geo.receptive_field_start),
        META_PREFIX + "global_context": "true" if geo.global_context else "false",
        META_PREFIX + "sizes": sizes_text(geo),
        META_PREFIX + "input": image.name,
        META_PREFIX + "input_layout": image.layout,
        META_PREFIX + "mode": geo.mode,
        META_PREFIX + "exact": "true" if geo.exact else "false",
        META_PREFIX + "reasons": "; ".join(geo.reasons),
        META_PREFIX + "feature_window": pair(geo.feature_window),
        META_PREFIX + "feature_dilation": pair(geo.feature_dilation),
        META_PREFIX + "features": ",".join(features),
        META_PREFIX + "feature_layout": "NCHW",
        META_PREFIX + "version": __version__,
    }


def sizes_text(geo: Geometry) -> str:
    """The input sizes the model runs at: 'any', '32k+7' (both axes), or '32k+7 x 32k+3' (H x W)."""
    h, w = (lattice_text(lat) for lat in geo.lattice)
    return h if h == w else f"{h} x {w}"


def parse_sizes(text: str) -> tuple[Lattice, Lattice]:
    """The inverse of ``sizes_text``."""
    try:
        parts = [parse_lattice(p.strip()) for p in text.split(" x ")]
    except OnnxFcnError:
        raise InvalidConversionError(f"metadata onnxfcn.sizes is {text!r}, not 'any', '32k+7' or '32k+7 x 32k+3'") from None
    if len(parts) not in (1, 2):
        raise InvalidConversionError(f"metadata onnxfcn.sizes is {text!r}, not 'any', '32k+7' or '32k+7 x 32k+3'")
    return parts[0], parts[-1]


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key[len(META_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}


def meta_pair(meta: dict[str, str], key: str, minimum: int | None) -> tuple[int, int]:
    """A metadata value 'A,B' (``read_metadata``'s keys), each at least ``minimum`` (None: any
    integer, as an offset or a field's start may be negative)."""
    text = meta.get(key)
    if text is None:
        raise InvalidConversionError(f"metadata onnxfcn.{key} is missing")
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise InvalidConversionError(f"metadata onnxfcn.{key} is {text!r}, not two integers 'A,B'") from None
    if minimum is not None and (a < minimum or b < minimum):
        raise InvalidConversionError(f"metadata onnxfcn.{key} is {text!r}: values must be at least {minimum}")
    return a, b


def set_metadata(model: onnx.ModelProto, meta: dict[str, str]) -> None:
    kept = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise OnnxFcnError(f"mode must be window or dense, not {mode!r}")


def analyse_model(model: onnx.ModelProto, input_name: str | None = None,
                  size: tuple[int, int] | None = None) -> Analysis:
    """Find the image input and the head; raise if the model is already converted."""
    if read_metadata(model).get("mode"):
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
