"""The subject of a verification: the original (trusted) and what the checks need to read a
conversion of it. Nothing in the converted model is trusted: its metadata must equal what the
original's own graph gives (``read_conversion``), and the feature map the checks read must be a
tensor its own graph computes with the feature map's shape."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..bounds import Bounded, HeadEvaluator, NoBoundError
from ..errors import AlreadyConvolutionalError, InvalidConversionError, OnnxFcnError
from ..geometry import Geometry, sizes_text
from ..head import NCHW_AXES, Analysis, ImageInput, Layout, perm_to
from ..metadata import ConversionMetadata, is_converted
from ..plan import Planned, plan_conversion
from .compare import CheckResult


@dataclass(kw_only=True)
class Subject:
    """The original (trusted) and what the checks need to read a conversion of it."""

    analysis: Analysis
    geo: Geometry
    mode: str
    out_names: list[str]  # the original's outputs, matched by name in the converted model
    grid_axes: dict[str, tuple[int, int] | None]  # where each head output has its cells
    feature: str  # the original's feature map (the head's input)
    conv_feature: str  # the converted model's tensor holding it
    conv_to_orig: list[int]  # transpose from the converted tensor's layout to the original's
    evaluator: HeadEvaluator | None
    no_bound: str = ""  # why there is no evaluator

    @property
    def image(self) -> ImageInput:
        return self.analysis.image

    @property
    def head_outputs(self) -> list[str]:
        return [o for h in self.analysis.heads for o in h.outputs]

    def check_feature_shape(self, fmap: np.ndarray, size: tuple[int, int]) -> None:
        """The converted tensor named as the feature map must have its shape at this input size."""
        lay = self.analysis.layout(self.feature)
        ref = self.analysis.index.static_shape(self.feature)
        assert ref is not None
        fh, fw = self.geo.feature_size(*size)
        want = [fmap.shape[self.conv_to_orig[lay[0]]], int(ref[lay[1]]), fh, fw]
        conv_axes = [self.conv_to_orig[lay[c]] for c in range(4)]
        got = [fmap.shape[a] if a < fmap.ndim else None for a in conv_axes]
        if fmap.ndim != 4 or got != want:
            raise InvalidConversionError(
                f"metadata onnxfcn.features names '{self.conv_feature}', whose shape {list(fmap.shape)} at input "
                f"{size[0]}x{size[1]} is not the feature map's (N, C, H, W = {want})")

    def exact_head(self, fmap: np.ndarray, outputs: list[str], errors: np.ndarray | None = None) -> dict[str, Bounded]:
        """The original head in float64 on feature windows laid out as the converted tensor."""
        assert self.evaluator is not None
        feats = np.transpose(fmap, self.conv_to_orig)
        errs = None if errors is None else {self.feature: np.transpose(errors, self.conv_to_orig)}
        return self.evaluator.run({self.feature: feats}, outputs, errs)

    def exact_or_none(self, fmap: np.ndarray, details: dict[str, object],
                      errors: np.ndarray | None = None) -> dict[str, Bounded] | None:
        """``exact_head`` on every head output, or None where the head has no rounding model (the
        checks then compare with the default tolerance); ``details`` records which."""
        if self.evaluator is None:
            return None
        try:
            return self.exact_head(fmap, self.head_outputs, errors)
        except NoBoundError as exc:
            self.evaluator, self.no_bound = None, str(exc)
            return None
        finally:
            details["comparison"] = "rounding bound" if self.evaluator is not None else "tolerance"

    def bound_note(self, rtol: float | None, atol: float | None) -> str:
        if rtol is not None or atol is not None:
            return "tolerance from --rtol/--atol"
        if self.evaluator is None:
            return f"no rounding bound ({self.no_bound}): compared with the default relative tolerance"
        return ""


def make_evaluator(analysis: Analysis) -> tuple[HeadEvaluator | None, str]:
    """The original head's float64 evaluator, or None and why not."""
    nodes = [n for h in analysis.heads for n in h.nodes]
    order = {id(n): k for k, n in enumerate(analysis.index.graph.node)}
    nodes.sort(key=lambda n: order[id(n)])
    feature = analysis.heads[0].features[0]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(analysis.index.dtypes.get(feature) or onnx.TensorProto.FLOAT)
    ref_batch = analysis.image.batch if isinstance(analysis.image.batch, int) else 1
    try:
        return HeadEvaluator(analysis.index, nodes, ref_batch, dtype), ""
    except NoBoundError as exc:
        return None, str(exc)


def _grid_axes(analysis: Analysis, layouts: dict[str, Layout | None]) -> dict[str, tuple[int, int] | None]:
    axes: dict[str, tuple[int, int] | None] = {}
    for name in [o.name for o in analysis.index.graph.output]:
        if name not in layouts:
            axes[name] = None
        else:
            lay = layouts[name]
            axes[name] = (1, 2) if lay is None else (lay[2], lay[3])
    return axes


def _subject(planned: Planned, out_names: list[str], conv_feature: str, conv_layout: Layout) -> Subject:
    analysis, plan = planned.analysis, planned.plan
    evaluator, why = make_evaluator(analysis)
    feature = plan.features[0]
    layouts = {name: m.layout for name, m in plan.outputs.items()}
    return Subject(analysis=analysis, geo=planned.geometry, mode=planned.mode, out_names=out_names,
                   grid_axes=_grid_axes(analysis, layouts), feature=feature, conv_feature=conv_feature,
                   conv_to_orig=perm_to(conv_layout, analysis.layout(feature)), evaluator=evaluator, no_bound=why)


def subject_from_plan(planned: Planned, out_names: list[str]) -> Subject:
    """convert's view of its own plan, read from the original before the graph is rewritten in place
    (the evaluator copies the head's weights now)."""
    return _subject(planned, out_names, planned.plan.sources[0], NCHW_AXES)


def _plan_original(orig: onnx.ModelProto, meta: ConversionMetadata) -> Planned:
    """The original planned at the mode, size and stride the metadata states: its own stride, or an
    output stride that must follow from its graph (the same edits, the same geometry)."""
    try:
        return plan_conversion(orig, mode=meta.mode, size=meta.window, output_stride=meta.stride)
    except AlreadyConvolutionalError as exc:
        raise InvalidConversionError(f"the first model should be the original classifier, but {exc.reason} "
                                     "(are the two models swapped?)") from None
    except OnnxFcnError as exc:
        if exc.reason.startswith("output stride"):
            raise InvalidConversionError(f"metadata onnxfcn.stride is {meta.stride[0]},{meta.stride[1]}: {exc.reason}",
                                         exc.node) from None
        raise type(exc)(f"the original model: {exc.reason}", exc.node) from None


def _check_against(meta: ConversionMetadata, geo: Geometry, image: ImageInput) -> None:
    """Every geometry key the metadata states must be what the original's graph gives. What scan
    reads (the field, for its tiles' overlap; the sizes; the input) is checked like the rest; keys
    that files from before them lack are checked where present."""
    pairs: list[tuple[str, tuple[int, int] | None, tuple[int, int]]] = [
        ("stride", meta.stride, geo.stride), ("offset", meta.offset, geo.offset),
        ("feature_window", meta.feature_window, geo.feature_window),
        ("feature_dilation", meta.feature_dilation, geo.feature_dilation),
        ("receptive_field", meta.receptive_field, geo.receptive_field)]
    if "receptive_field_start" in meta.present:
        pairs.append(("receptive_field_start", meta.receptive_field_start, geo.receptive_field_start))
    for key, got, value in pairs:
        if got != tuple(value):
            assert got is not None
            raise InvalidConversionError(f"metadata onnxfcn.{key} is {got[0]},{got[1]} but the original's graph gives "
                                         f"{value[0]},{value[1]}")
    texts = {"sizes": (sizes_text(meta.sizes), sizes_text(geo.lattice)),
             "global_context": (str(meta.global_context).lower(), str(geo.global_context).lower()),
             "input": (meta.input, image.name), "input_layout": (meta.input_layout, image.layout)}
    for key, (stated, want_text) in texts.items():
        if key in meta.present and stated != want_text:
            raise InvalidConversionError(f"metadata onnxfcn.{key} is {stated!r} but the original's graph gives "
                                         f"{want_text!r}")
    if meta.exact != geo.exact:
        raise InvalidConversionError(f"metadata onnxfcn.exact is {str(meta.exact).lower()} but the original's graph "
                                     f"makes the conversion {'exact' if geo.exact else 'approximate'}")


def read_conversion(orig: onnx.ModelProto, conv: onnx.ModelProto) -> Subject:
    """Check the converted model's metadata against the original's own analysis; raise
    :class:`InvalidConversionError` where they disagree."""
    meta = ConversionMetadata.read(conv)
    if meta is None:
        if is_converted(orig):
            raise InvalidConversionError("the first model is the converted one and the second has no onnxfcn "
                                         "metadata: the two models look swapped (verify ORIGINAL CONVERTED)")
        raise InvalidConversionError("the second model has no onnxfcn metadata: is it a model converted by onnxfcn?")
    meta.require("offset", "feature_window", "receptive_field", "exact")
    planned = _plan_original(orig, meta)
    image = planned.analysis.image
    if (image.height, image.width) != meta.window:
        raise InvalidConversionError(f"metadata onnxfcn.window is {meta.window[0]},{meta.window[1]} but the "
                                     f"original's input is {image.height}x{image.width}")
    _check_against(meta, planned.geometry, image)
    # The tensor the checks read must be computed by the converted graph itself.
    if not meta.features:
        raise InvalidConversionError("metadata onnxfcn.features is missing")
    conv_feature = meta.features[0]
    if conv_feature not in {o for n in conv.graph.node for o in n.output if o}:
        raise InvalidConversionError(f"metadata onnxfcn.features names '{conv_feature}', which no node of the "
                                     "converted model computes")
    feature = planned.plan.features[0]
    lay = planned.analysis.layout(feature)
    conv_layout = meta.feature_layout or ("NCHW" if conv_feature != feature else ",".join(map(str, lay)))
    conv_lay: Layout = NCHW_AXES if conv_layout == "NCHW" else tuple(int(v) for v in conv_layout.split(","))  # type: ignore[assignment]
    return _subject(planned, [o.name for o in orig.graph.output], conv_feature, conv_lay)


def outputs_check(orig: onnx.ModelProto, conv: onnx.ModelProto) -> CheckResult | None:
    """The converted model must have the original's outputs, by name and dtype (order is free)."""
    def types(m: onnx.ModelProto) -> dict[str, int]:
        return {o.name: o.type.tensor_type.elem_type for o in m.graph.output}

    want, got = types(orig), types(conv)
    problems = []
    missing = [n for n in want if n not in got]
    extra = [n for n in got if n not in want]
    if missing:
        problems.append(f"missing output{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    if extra:
        problems.append(f"extra output{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))} (not the "
                        "original's)")
    for n in want:
        if n in got and got[n] != want[n]:
            problems.append(f"output '{n}' is {onnx.TensorProto.DataType.Name(got[n])}, the original's "
                            f"{onnx.TensorProto.DataType.Name(want[n])}")
    if not problems:
        return None
    return CheckResult(name="outputs", passed=False, exact=True,
                       details={"original": list(want), "converted": list(got)}, note="; ".join(problems))
