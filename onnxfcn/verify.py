"""Numerical proof of a conversion on onnxruntime.

The converted model is the thing under test, so nothing in it is trusted: its outputs are matched
to the original's by name and dtype, its metadata is checked against the geometry computed from
the original, and the feature map the checks read must be a tensor its own graph computes.
onnxruntime runs the file itself: the sessions map the weights from the files
(``runtime.file_session``), and the converted model's weights are never parsed into Python.

Three checks, reported separately:

- **reference**: at the reference size the converted outputs equal the original's;
- **sliding**: one pass on a larger image, each cell against the original run on its crop.
  Exact when nothing inside a window sees past it (metadata ``onnxfcn.exact``), else
  approximate and reported with its numbers;
- **feature**: the converted model's trunk on the larger image, then the *original* head on each
  reference-size window of the feature map. Exact for every model: it proves the head rewrite.

"Equal" means: within the rounding bound of :mod:`onnxfcn.bounds`. The original head is evaluated
in float64 on the converted model's own feature map; the converted output and the original's own
float output must both lie within the bound of that exact value. ``rtol``/``atol`` replace the
bound by ``atol + rtol * max|reference|`` against the original's output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .bounds import Bounded, HeadEvaluator, NoBoundError, unit_roundoff
from .errors import AlreadyConvolutionalError, InvalidConversionError, OnnxFcnError, ResourceError, SelfCheckError
from .geometry import Geometry
from .graph import skeleton
from .head import NCHW, Analysis, ImageInput, Layout, perm_to
from .io import load_model, save_model
from .plan import Planned, meta_pair, plan_conversion, read_metadata, sizes_text
from .runtime import (
    Progress,
    check_memory,
    file_session,
    first_line,
    light_session,
    make_session,
    node_from_error,
    resolve_providers,
    resource_error,
    run_batched,
    session_weights,
)

log = logging.getLogger(__name__)

# Used with --rtol/--atol, and where the head has an op without a rounding model: (rtol, atol),
# rtol relative to the largest reference magnitude.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-5, 1e-7),
    "float64": (1e-9, 1e-12),
    "float16": (1e-2, 1e-4),
    "bfloat16": (4e-2, 1e-3),
}
# The sliding check of an exact model compares crops run by the original with cells of the
# converted model: the same trunk ops at two input sizes, for which onnxruntime may pick kernels
# that round differently. Each feature value may differ by this many ulps of the sample's largest
# feature; the head carries it to the logits. (Measured on this suite's padding-free models on the
# CPU: 0, the features were bit-identical; the allowance is for kernels chosen by input size.)
TRUNK_ULPS = 64.0
# Reported, never failed: a converted output this many times further from the exact head than the
# original's own float output (both within the bound) is flagged in the note.
SUSPECT_FACTOR = 16.0


# ---- comparison ---------------------------------------------------------------------------
@dataclass
class OutputComparison:
    """One output compared with its reference (Polygraphy-style numbers, plus the rounding bound)."""

    name: str
    max_abs: float  # against the original's output (or the crops')
    mean_abs: float
    max_rel: float
    mean_rel: float
    ref_max: float
    needed_rtol: float  # max_abs / max|reference|: the smallest rtol that passes with atol 0
    rtol: float | None
    atol: float | None
    passed: bool
    top1: float | None = None  # fraction of cells whose arg-max class agrees
    error_map: list[list[float | None]] | None = None
    interior_max_abs: float | None = None
    border_max_abs: float | None = None
    note: str = ""
    method: str = "bound"  # "bound" | "tolerance" | "exact" (integer outputs)
    bound: float | None = None  # the rounding bound at the worst element
    error_vs_exact: float | None = None  # max |converted - float64 head|
    ratio: float | None = None  # max |converted - exact| / bound: passes when <= 1
    original_ratio: float | None = None  # the same for the original's own float output

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite(v) for k, v in self.__dict__.items()}

    def describe(self) -> str:
        """Why it failed, in one phrase."""
        if self.note:
            return self.note
        if self.method == "bound" and self.ratio is not None:
            return (f"max error {self.error_vs_exact:.3g} from the exact head is {self.ratio:.3g}x its rounding "
                    f"bound {self.bound:.3g}")
        return f"max abs error {self.max_abs:.3g} > {self.atol:.1g} + {self.rtol:.1g} * {self.ref_max:.3g}"


def _finite(v: Any) -> Any:
    """Strict JSON has no Infinity or NaN: they become null (the note says why)."""
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _stats(name: str, got: np.ndarray, want: np.ndarray, class_axis: int | None) -> OutputComparison:
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    diff = np.abs(g64 - w64)
    ref_max = float(np.abs(w64).max()) if w64.size else 0.0
    finite = bool(np.isfinite(diff).all())
    max_abs = (float(diff.max()) if finite else float("inf")) if diff.size else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = diff / np.maximum(np.abs(w64), 1e-12)
    needed = max_abs / ref_max if ref_max > 0 else (0.0 if max_abs == 0 else float("inf"))
    top1 = None
    if class_axis is not None and got.ndim > class_axis and got.shape[class_axis] > 1:
        top1 = float(np.mean(np.argmax(g64, axis=class_axis) == np.argmax(w64, axis=class_axis)))
    return OutputComparison(
        name=name, max_abs=max_abs, mean_abs=float(diff.mean()) if diff.size else 0.0,
        max_rel=float(rel.max()) if rel.size else 0.0, mean_rel=float(rel.mean()) if rel.size else 0.0,
        ref_max=ref_max, needed_rtol=needed, rtol=None, atol=None, passed=False, top1=top1,
    )


def _shape_mismatch(name: str, got: np.ndarray, want_shape: Sequence[int]) -> OutputComparison:
    inf = float("inf")
    return OutputComparison(name, inf, inf, inf, inf, 0.0, inf, None, None, False,
                            note=f"shape {list(got.shape)} does not match the reference {list(want_shape)}")


def compare(name: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float,
            class_axis: int | None = None) -> OutputComparison:
    """``max|got - want| <= atol + rtol * max|want|``; integer outputs must be equal."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return _shape_mismatch(name, got, want.shape)
    cmp = _stats(name, got, want, class_axis)
    if got.dtype.kind in "iub":
        cmp.method, cmp.rtol, cmp.atol = "exact", 0.0, 0.0
        cmp.passed = cmp.max_abs == 0
        return cmp
    cmp.method, cmp.rtol, cmp.atol = "tolerance", rtol, atol
    cmp.passed = bool(cmp.max_abs <= atol + rtol * cmp.ref_max)
    return cmp


def _ratio(got: np.ndarray, exact: np.ndarray, bound: np.ndarray) -> tuple[float, float, float]:
    """(max |got - exact| / bound, max |got - exact|, bound at the worst element)."""
    diff = np.abs(got.astype(np.float64) - exact)
    b = np.broadcast_to(bound, diff.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(np.isinf(b), 0.0, np.where(diff == 0, 0.0, diff / b))
    r = np.where(np.isnan(r), np.inf, r)
    if not r.size:
        return 0.0, 0.0, 0.0
    k = int(np.argmax(r))
    return float(r.reshape(-1)[k]), float(diff.max()), float(b.reshape(-1)[k])


def compare_bounded(name: str, got: np.ndarray, exact: Bounded, original: np.ndarray | None,
                    class_axis: int | None = None) -> OutputComparison:
    """``got`` and the ``original``'s float output both within the rounding bound of ``exact``."""
    got = np.asarray(got)
    if got.size != exact.value.size:
        return _shape_mismatch(name, got, exact.value.shape)
    got = got.reshape(exact.value.shape)
    want = exact.value if original is None else np.asarray(original).reshape(exact.value.shape)
    cmp = _stats(name, got, want, class_axis)
    cmp.ratio, cmp.error_vs_exact, cmp.bound = _ratio(got, exact.value, exact.err)
    if original is not None:
        cmp.original_ratio = _ratio(np.asarray(original).reshape(exact.value.shape), exact.value, exact.err)[0]
    cmp.passed = cmp.ratio <= 1.0 and (cmp.original_ratio is None or cmp.original_ratio <= 1.0)
    vacuous = int(np.sum(np.isinf(np.broadcast_to(exact.err, exact.value.shape)))) if got.dtype.kind == "f" else 0
    if vacuous:
        cmp.note = (f"{vacuous} of {exact.value.size} values not judged: their rounding bound is infinite "
                    "(errors upstream too large for the bound to say anything)")
    if (cmp.passed and original is not None and cmp.original_ratio and cmp.ratio > SUSPECT_FACTOR * cmp.original_ratio
            and cmp.ratio > 1e-3):
        cmp.note = (f"within the rounding bound, but {cmp.ratio / cmp.original_ratio:.0f}x further from the exact head "
                    "than the original's own float output: worth a look")
    if cmp.ratio <= 1.0 and cmp.original_ratio is not None and cmp.original_ratio > 1.0:
        cmp.note = (f"the original's own output is {cmp.original_ratio:.3g}x the rounding bound away from its exact "
                    "head on the converted model's feature map: the converted trunk computes other features")
    return cmp


@dataclass
class CheckResult:
    name: str  # "outputs" | "reference" | "sliding" | "feature" | "providers (cuda vs cpu)"
    passed: bool
    exact: bool
    outputs: list[OutputComparison] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    skipped: bool = False  # did not run (note says why); neither passes nor fails the report

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else ("ok" if self.passed else "MISMATCH")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "skipped": self.skipped, "exact": self.exact,
                "note": self.note, "details": self.details, "outputs": [o.to_dict() for o in self.outputs]}


def _skipped(name: str, why: str, details: dict[str, Any] | None = None) -> CheckResult:
    return CheckResult(name, True, False, [], details or {}, why, skipped=True)


@dataclass
class VerifyReport:
    """Truthy when every check that ran passed."""

    checks: list[CheckResult]
    providers: list[str]
    exact: bool
    seconds: float = 0.0
    reason: str = ""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and any(not c.skipped for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reason": self.reason, "exact": self.exact, "providers": self.providers,
                "seconds": round(self.seconds, 3), "checks": [c.to_dict() for c in self.checks]}


def tolerance_for(dtype: np.dtype[Any], rtol: float | None, atol: float | None) -> tuple[float, float]:
    d_rtol, d_atol = TOLERANCES.get(np.dtype(dtype).name, TOLERANCES["float32"])
    return (d_rtol if rtol is None else rtol), (d_atol if atol is None else atol)


def random_input(image: ImageInput, batch: int, height: int, width: int, seed: int,
                 dtype: np.dtype[Any] = np.dtype(np.float32)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    try:
        return rng.standard_normal(image.shape_at(batch, height, width)).astype(dtype)
    except MemoryError as exc:
        raise ResourceError(f"out of memory at {height}x{width} (batch {batch}): {first_line(exc)}") from exc


def _input_dtype(model: onnx.ModelProto, name: str) -> np.dtype[Any]:
    for vi in model.graph.input:
        if vi.name == name:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    return np.dtype(np.float32)


# ---- what the checks share ------------------------------------------------------------------
@dataclass
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

    def check_feature_shape(self, fmap: np.ndarray, size: tuple[int, int]) -> None:
        """The converted tensor named as the feature map must have its shape at this input size."""
        lay = self.analysis.layout(self.feature)
        ref = self.analysis.index.static_shape(self.feature)
        assert ref is not None
        want = [fmap.shape[self.conv_to_orig[lay[0]]], int(ref[lay[1]]),
                self.geo._size_h(size[0]), self.geo._size_w(size[1])]
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


def subject_from_plan(planned: Planned, out_names: list[str]) -> Subject:
    """convert's view of its own plan, read from the original before the graph is rewritten in place
    (the evaluator copies the head's weights now)."""
    analysis, plan = planned.analysis, planned.plan
    evaluator, why = make_evaluator(analysis)
    feature = plan.features[0]
    layouts = {name: m.layout for name, m in plan.outputs.items()}
    return Subject(analysis, planned.geometry, planned.mode, out_names, _grid_axes(analysis, layouts), feature,
                   plan.sources[0], perm_to(NCHW, analysis.layout(feature)), evaluator, why)


def head_outputs(analysis: Analysis) -> list[str]:
    return [o for h in analysis.heads for o in h.outputs]


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


def _run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], where: str,
         error: type[OnnxFcnError] = SelfCheckError) -> list[np.ndarray]:
    try:
        return sess.run(None, feeds)
    except Exception as exc:  # onnxruntime raises several types
        oom = resource_error(exc, where)
        if oom is not None:
            raise oom from exc
        raise error(f"converted model fails at {where}: {first_line(exc)}", node_from_error(exc)) from exc


def _session(model: onnx.ModelProto | str | os.PathLike[str], provider: str, what: str,
             pin: dict[str, int] | None = None, error: type[OnnxFcnError] = SelfCheckError, optimize: bool = True,
             light: bool = False, outputs: dict[str, int] | None = None) -> ort.InferenceSession:
    """A session whose failure to load is one line: ``error`` naming ``what``, or a ResourceError.
    ``model`` a proto: ``light``, its weights used in place (``light_session``), else serialized;
    a path: its weights mapped from the file (``file_session``). ``outputs``: added to the graph's."""
    try:
        if not isinstance(model, onnx.ModelProto):
            return file_session(model, provider, pin, optimize, outputs)
        if light:
            return light_session(model, provider, pin, outputs)
        assert outputs is None, "extra outputs need a light session or a file"
        return make_session(model, provider, pin, optimize)
    except Exception as exc:  # onnxruntime raises several types
        oom = resource_error(exc, f"loading {what}")
        if oom is not None:
            raise oom from exc
        raise error(f"onnxruntime cannot load {what}: {first_line(exc)}", node_from_error(exc)) from exc


def _batched(sess: ort.InferenceSession, name: str, x: np.ndarray, where: str, **kw: Any) -> list[np.ndarray]:
    try:
        return run_batched(sess, name, x, **kw)
    except OnnxFcnError:
        raise
    except Exception as exc:  # onnxruntime raises several types
        oom = resource_error(exc, where)
        if oom is not None:
            raise oom from exc
        raise OnnxFcnError(f"the original model fails at {where}: {first_line(exc)}", node_from_error(exc)) from exc


@contextlib.contextmanager
def _on_disk(model: onnx.ModelProto, source: str | os.PathLike[str] | onnx.ModelProto) -> Iterator[Path]:
    """The file ``model`` was loaded from, or (given a proto) a temporary copy written for
    onnxruntime, external data and all: ``file_session`` then maps its weights from there."""
    if not isinstance(source, onnx.ModelProto):
        yield Path(source)
        return
    with tempfile.TemporaryDirectory(prefix="onnxfcn-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_model(model, path)
        yield path


def reference_pins(original_image: ImageInput, converted: onnx.ModelProto) -> dict[str, int]:
    """The converted input's free dims, fixed where the original's are (reference size, batch)."""
    vi = next(i for i in converted.graph.input if i.name == original_image.name)
    dims = vi.type.tensor_type.shape.dim
    hw_axes = (2, 3) if original_image.layout == "NCHW" else (1, 2)
    pins: dict[str, int] = {}
    for ax, value in ((hw_axes[0], original_image.height), (hw_axes[1], original_image.width),
                      (0, original_image.batch)):
        if ax < len(dims) and dims[ax].dim_param and isinstance(value, int):
            pins[dims[ax].dim_param] = value
    return pins


def reference_check(subject: Subject, want: list[np.ndarray], converted: ort.InferenceSession,
                    x: np.ndarray, rtol: float | None, atol: float | None) -> CheckResult:
    """The converted model (dims pinned to the reference size) on ``x`` against the original's
    outputs ``want`` on it."""
    image = subject.image
    h, w = image.height, image.width
    details: dict[str, Any] = {"size": [h, w], "batch": int(x.shape[0])}
    try:
        got = run_batched(converted, image.name, x)
    except Exception as exc:  # onnxruntime raises several types
        oom = resource_error(exc, f"{h}x{w}")
        if oom is not None:
            raise oom from exc
        return CheckResult("reference", False, True, [], details,
                           f"converted model fails at the reference size: {first_line(exc)}")
    got_by_name = dict(zip([o.name for o in converted.get_outputs()], got))
    return reference_compare(subject, want, got_by_name, details, rtol, atol)


def reference_compare(subject: Subject, want: list[np.ndarray], got_by_name: dict[str, np.ndarray],
                      details: dict[str, Any], rtol: float | None, atol: float | None) -> CheckResult:
    """The converted model's outputs at the reference size (and its feature map, which the exact
    head reads) against the original's outputs ``want``."""
    image = subject.image
    h, w = image.height, image.width
    fmap = got_by_name[subject.conv_feature]
    subject.check_feature_shape(fmap, (h, w))
    heads = head_outputs(subject.analysis)
    dilated = subject.geo.feature_dilation != (1, 1)
    if dilated:  # an output stride: the window's cells lie apart
        fmap = _windows(subject, fmap, [(0, 0)])
    exact = _exact_or_none(subject, fmap, heads, details)
    cmps = []
    for name, ref in zip(subject.out_names, want):
        g = got_by_name[name]
        if dilated:  # finer than the windows: more than one cell fits the reference size; the first is the image
            g = _cell(g, subject.grid_axes.get(name), 0, 0)
        if exact is not None and name in exact and rtol is None and atol is None:
            cmps.append(compare_bounded(name, g, exact[name], ref, class_axis=1 if ref.ndim >= 2 else None))
        else:
            r, a = tolerance_for(ref.dtype, rtol, atol)
            g = g.reshape(ref.shape) if g.size == ref.size else g
            cmps.append(compare(name, g, ref, r, a, class_axis=1 if ref.ndim >= 2 else None))
    return CheckResult("reference", all(c.passed for c in cmps), True, cmps, details, _bound_note(subject, rtol, atol))


def _exact_or_none(subject: Subject, fmap: np.ndarray, outputs: list[str], details: dict[str, Any],
                   errors: np.ndarray | None = None) -> dict[str, Bounded] | None:
    if subject.evaluator is None:
        return None
    try:
        return subject.exact_head(fmap, outputs, errors)
    except NoBoundError as exc:
        subject.evaluator, subject.no_bound = None, str(exc)
        return None
    finally:
        details["comparison"] = "rounding bound" if subject.evaluator is not None else "tolerance"


def _bound_note(subject: Subject, rtol: float | None, atol: float | None) -> str:
    if rtol is not None or atol is not None:
        return "tolerance from --rtol/--atol"
    if subject.evaluator is None:
        return f"no rounding bound ({subject.no_bound}): compared with the default relative tolerance"
    return ""


# ---- self-check used by convert ---------------------------------------------------------------
def self_check_sizes(image: ImageInput, geo: Geometry) -> list[tuple[int, int]]:
    sh, sw = geo.stride
    h, w = image.height, image.width
    # One stride-aligned size, one that is not a multiple of the stride (each the next size the
    # model runs at, for models whose branches agree only at some sizes).
    return [geo.next_size(h + sh, w + 2 * sw), geo.next_size(h + sh + max(1, sh // 2) + 1, w + max(1, sw // 3) + 2)]


@dataclass
class Reference:
    """The original's outputs on a random input at the reference size, for convert's self-check."""

    x: np.ndarray
    want: list[np.ndarray]


def reference_outputs(original: onnx.ModelProto, subject: Subject, seed: int = 0, batch: int = 2,
                      max_memory: int | None = None) -> Reference:
    """Run the original (in memory, before the rewrite) at the reference size, batch ``batch``.

    The session uses the proto's weights in place (``light_session``) and is gone before the
    converted model's exists, so no two copies of a model's weights are ever alive in onnxruntime."""
    image = subject.image
    check_memory(original, image.name, image.shape_at(batch, image.height, image.width),
                 f"the self-check at {image.height}x{image.width}, batch {batch},", max_memory)
    x = random_input(image, batch, image.height, image.width, seed, _input_dtype(original, image.name))
    # No graph optimizations, here and for the converted model (light sessions): the layout
    # transforms cost more than the few runs of a check, and both models run the same kernels.
    sess = _session(original, "cpu", "the original model", error=OnnxFcnError, light=True)
    want = _batched(sess, image.name, x, f"{image.height}x{image.width}")
    if subject.evaluator is not None:  # the head's weights, already read: the exact head need not read them again
        subject.evaluator.preload(session_weights(sess))
    return Reference(x, want)


def self_check(converted: onnx.ModelProto, subject: Subject, reference: Reference | None, seed: int = 0,
               batch: int = 2, max_memory: int | None = None) -> list[dict[str, Any]]:
    """convert's check: the converted model against the original's outputs at the reference size
    (window mode: ``reference``, from ``reference_outputs``), then two larger sizes, batch 2, for the
    output grid the geometry predicts. Its session uses the model's weights in place."""
    results: list[dict[str, Any]] = []
    image, geo = subject.image, subject.geo
    h, w = self_check_sizes(image, geo)[-1]
    check_memory(converted, image.name, image.shape_at(batch, max(h, image.height + geo.stride[0]), w),
                 f"the self-check at {h}x{w}, batch {batch},", max_memory)
    dtype = _input_dtype(converted, image.name)
    feat_dtype = subject.analysis.index.dtypes.get(subject.feature, 0)
    # Without the layout transforms the kernels do not depend on whether H and W are symbolic,
    # so one unpinned session of the converted model serves every size.
    conv_sess = _session(converted, "cpu", "the converted model", light=True,
                         outputs={subject.conv_feature: feat_dtype})
    names = [o.name for o in conv_sess.get_outputs()]
    ref_got = None
    if reference is not None:
        ref_got = dict(zip(names, _run(conv_sess, {image.name: reference.x}, f"{image.height}x{image.width}")))
    for h, w in self_check_sizes(image, geo):
        xs = random_input(image, batch, h, w, seed + 1, dtype)
        got = _run(conv_sess, {image.name: xs}, f"{h}x{w}")
        cells = list(geo.grid(h, w))
        shapes = {}
        for name, y in zip(names, got):
            if name not in subject.out_names:
                continue
            axes = subject.grid_axes.get(name)
            if axes is not None and [y.shape[axes[0]], y.shape[axes[1]]] != cells:
                raise SelfCheckError(
                    f"output '{name}' has a {y.shape[axes[0]]}x{y.shape[axes[1]]} grid at input {h}x{w}; the "
                    f"geometry predicts {cells[0]}x{cells[1]}")
            if y.shape[0] != batch:
                raise SelfCheckError(f"output '{name}' has batch {y.shape[0]} for an input batch of {batch}")
            shapes[name] = list(y.shape)
        results.append({"size": [h, w], "batch": batch, "output_shapes": shapes})
    del conv_sess  # before the exact head, which reads the head's weights in float64 blocks
    if ref_got is not None:
        assert reference is not None
        check = reference_compare(subject, reference.want, ref_got, {"size": [image.height, image.width], "batch": batch},
                                  None, None)
        for cmp in check.outputs:
            if not cmp.passed:
                raise SelfCheckError(f"output '{cmp.name}' differs from the original at the reference size: "
                                     + cmp.describe())
        if not check.passed:
            raise SelfCheckError(check.note)
        results.insert(0, {"size": [image.height, image.width], "batch": batch,
                           "comparison": check.details.get("comparison"),
                           "outputs": [{"name": c.name, "error": c.error_vs_exact if c.method == "bound" else c.max_abs,
                                        "bound": c.bound, "ratio": c.ratio, "original_ratio": c.original_ratio,
                                        "max_rel_error": c.needed_rtol} for c in check.outputs]})
    return results


# ---- verify ---------------------------------------------------------------------------------
def default_size(image: ImageInput, geo: Geometry) -> tuple[int, int]:
    """A larger size that gives a grid of at least 3 x 4 windows, all inside the image."""
    sh, sw = geo.stride
    if geo.mode == "dense":
        return geo.next_size(image.height + 2 * sh, image.width + 3 * sw)
    return geo.next_size(image.height + 2 * sh + geo.offset[0], image.width + 3 * sw + geo.offset[1])


def sample_positions(gh: int, gw: int, positions: int | str, seed: int) -> list[tuple[int, int]]:
    """All cells, or N of them: corners, edge midpoints, the centre, then random cells."""
    cells = [(i, j) for i in range(gh) for j in range(gw)]
    if positions == "all" or (isinstance(positions, int) and positions >= len(cells)):
        return cells
    n = int(positions)
    pick: list[tuple[int, int]] = []
    for c in [(0, 0), (0, gw - 1), (gh - 1, 0), (gh - 1, gw - 1), (gh // 2, gw // 2),
              (0, gw // 2), (gh - 1, gw // 2), (gh // 2, 0), (gh // 2, gw - 1)]:
        if c not in pick:
            pick.append(c)
    rest = [c for c in cells if c not in pick]
    rng = np.random.default_rng(seed)
    rng.shuffle(rest)
    return (pick + rest)[:max(n, 1)]


def read_conversion(orig: onnx.ModelProto, conv: onnx.ModelProto) -> Subject:
    """Check the converted model's metadata against the original's own analysis; raise
    :class:`InvalidConversionError` where they disagree."""
    meta = read_metadata(conv)
    if not meta.get("mode"):
        if read_metadata(orig).get("mode"):
            raise InvalidConversionError("the first model is the converted one and the second has no onnxfcn "
                                         "metadata: the two models look swapped (verify ORIGINAL CONVERTED)")
        raise InvalidConversionError("the second model has no onnxfcn metadata: is it a model converted by onnxfcn?")
    mode = meta["mode"]
    if mode not in ("window", "dense"):
        raise InvalidConversionError(f"metadata onnxfcn.mode is {mode!r}, not window or dense")
    window = meta_pair(meta, "window", 1)
    stride = meta_pair(meta, "stride", 1)
    try:
        # The original planned at the stride the metadata states: its own, or an output stride
        # that must follow from its graph (the same edits, the same geometry).
        planned = plan_conversion(orig, mode=mode, size=window, output_stride=stride)
    except AlreadyConvolutionalError as exc:
        raise InvalidConversionError(f"the first model should be the original classifier, but {exc.reason} "
                                     "(are the two models swapped?)") from None
    except OnnxFcnError as exc:
        if exc.reason.startswith("output stride"):
            raise InvalidConversionError(f"metadata onnxfcn.stride is {stride[0]},{stride[1]}: {exc.reason}",
                                         exc.node) from None
        raise type(exc)(f"the original model: {exc.reason}", exc.node) from None
    analysis, plan, geo = planned.analysis, planned.plan, planned.geometry
    image = analysis.image
    if (image.height, image.width) != window:
        raise InvalidConversionError(f"metadata onnxfcn.window is {window[0]},{window[1]} but the original's input "
                                     f"is {image.height}x{image.width}")
    meta.setdefault("feature_dilation", "1,1")  # files from before output strides
    # What scan reads (the field, for its tiles' overlap; the sizes; the input) is checked like the
    # rest; keys that files from before them lack are checked where present.
    pairs = [("stride", geo.stride, 1), ("offset", geo.offset, None), ("feature_window", geo.feature_window, 1),
             ("feature_dilation", geo.feature_dilation, 1), ("receptive_field", geo.receptive_field, 1)]
    if "receptive_field_start" in meta:
        pairs.append(("receptive_field_start", geo.receptive_field_start, None))
    for key, value, minimum in pairs:
        got = meta_pair(meta, key, minimum)
        if got != tuple(value):
            raise InvalidConversionError(f"metadata onnxfcn.{key} is {got[0]},{got[1]} but the original's graph gives "
                                         f"{value[0]},{value[1]}")
    if meta.get("exact") not in ("true", "false"):
        raise InvalidConversionError(f"metadata onnxfcn.exact is {meta.get('exact')!r}, not true or false")
    texts = {"sizes": sizes_text(geo), "global_context": "true" if geo.global_context else "false",
             "input": image.name, "input_layout": image.layout}
    for key, want_text in texts.items():
        if meta.get(key, want_text) != want_text:
            raise InvalidConversionError(f"metadata onnxfcn.{key} is {meta[key]!r} but the original's graph gives "
                                         f"{want_text!r}")
    if (meta["exact"] == "true") != geo.exact:
        raise InvalidConversionError(f"metadata onnxfcn.exact is {meta['exact']} but the original's graph makes the "
                                     f"conversion {'exact' if geo.exact else 'approximate'}")
    # The tensor the checks read must be computed by the converted graph itself.
    conv_feature = (meta.get("features") or "").split(",")[0]
    produced = {o for n in conv.graph.node for o in n.output if o}
    if not conv_feature:
        raise InvalidConversionError("metadata onnxfcn.features is missing")
    if conv_feature not in produced:
        raise InvalidConversionError(f"metadata onnxfcn.features names '{conv_feature}', which no node of the "
                                     "converted model computes")
    feature = plan.features[0]
    lay = analysis.layout(feature)
    conv_layout = meta.get("feature_layout", "NCHW" if conv_feature != feature else ",".join(map(str, lay)))
    conv_lay: Layout = NCHW if conv_layout == "NCHW" else tuple(int(v) for v in conv_layout.split(","))  # type: ignore[assignment]
    evaluator, why = make_evaluator(analysis)
    layouts = {name: m.layout for name, m in plan.outputs.items()}
    return Subject(analysis, geo, mode, [o.name for o in orig.graph.output], _grid_axes(analysis, layouts), feature,
                   conv_feature, perm_to(conv_lay, lay), evaluator, why)


def _outputs_check(orig: onnx.ModelProto, conv: onnx.ModelProto) -> CheckResult | None:
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
        problems.append(f"unexpected output{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))}")
    for n in want:
        if n in got and got[n] != want[n]:
            problems.append(f"output '{n}' is {onnx.TensorProto.DataType.Name(got[n])}, the original's "
                            f"{onnx.TensorProto.DataType.Name(want[n])}")
    if not problems:
        return None
    return CheckResult("outputs", False, True, [], {"original": list(want), "converted": list(got)},
                       "; ".join(problems))


def verify(
    original: str | os.PathLike[str] | onnx.ModelProto,
    converted: str | os.PathLike[str] | onnx.ModelProto,
    *,
    sizes: Sequence[tuple[int, int]] | None = None,
    batch: int = 2,
    inputs: np.ndarray | None = None,
    positions: int | str = 16,
    seed: int = 0,
    provider: str = "cpu",
    rtol: float | None = None,
    atol: float | None = None,
    strict: bool = False,
    progress: Progress | None = None,
    max_memory: int | None = None,
) -> VerifyReport:
    """Prove ``converted`` against ``original``; the report is truthy when every check passed.

    Sizes whose estimated memory exceeds what is available (or ``max_memory`` bytes) are refused
    with :class:`ResourceError` before anything runs."""
    t0 = time.perf_counter()
    orig, _ = load_model(original)
    # The converted model's weights are only ever read by onnxruntime, from its file.
    conv, _ = load_model(converted, weights=False)
    providers = resolve_providers(provider)
    subject = read_conversion(orig, conv)
    image, geo, mode = subject.image, subject.geo, subject.mode
    exact = geo.exact
    failed = _outputs_check(orig, conv)
    if failed is not None:
        return _finish(VerifyReport([failed], providers, exact), t0, "")
    if not any(i.name == image.name for i in conv.graph.input):
        raise InvalidConversionError(f"the converted model has no input '{image.name}'")
    dtype = _input_dtype(conv, image.name)
    size_list = _sizes(image, geo, sizes, inputs)
    for h, w in size_list:
        check_memory(conv, image.name, image.shape_at(batch if inputs is None else len(inputs), h, w),
                     f"verify at {h}x{w}, batch {batch if inputs is None else len(inputs)},", max_memory)
    x_big = None if inputs is None else np.asarray(inputs, dtype=dtype)
    checks: list[CheckResult] = []
    feat_dtype = subject.analysis.index.dtypes.get(subject.feature, 0)
    ctx = _Context(orig, subject, positions, seed, rtol, atol, strict, progress)
    ctx.head()
    with _on_disk(orig, original) as orig_path, _on_disk(conv, converted) as conv_path:
        for p in providers:
            tag = "" if len(providers) == 1 else f" [{p}]"
            orig_sess = _session(orig_path, p, "the original model", error=OnnxFcnError)
            # The converted model with its feature map as an extra output, H and W free.
            conv_sess, failure = _converted_session(conv_path, p, tag, {subject.conv_feature: feat_dtype})
            if conv_sess is None:
                checks.append(failure)
                break
            # 1. reference size
            if mode == "window":
                x = random_input(image, batch, image.height, image.width, seed, dtype)
                want = _batched(orig_sess, image.name, x, f"{image.height}x{image.width}")
                check = reference_check(subject, want, conv_sess, x, rtol, atol)
                pins = reference_pins(image, conv)
                if not check.passed and pins:
                    # With H and W free, onnxruntime may pick other trunk kernels than the original's
                    # (grouped convolutions after its layout transforms): their rounding is not the
                    # head's. The same check again with the dims pinned to the reference size, where
                    # the trunk runs the original's kernels.
                    ref_sess, failure = _converted_session(conv_path, p, tag, {subject.conv_feature: feat_dtype}, pins)
                    if ref_sess is None:
                        checks.append(failure)
                        break
                    check = reference_check(subject, want, ref_sess, x, rtol, atol)
                    check.details["dims"] = "pinned to the reference size"
                    del ref_sess
                check.name += tag
                checks.append(check)
            else:
                checks.append(_skipped("reference" + tag, "not applicable in dense mode: cells score single feature "
                                       "positions, not reference-size windows"))
            for k, (h, w) in enumerate(size_list):
                xb = x_big if x_big is not None else random_input(image, batch, h, w, seed + 1 + k, dtype)
                checks.extend(_sliding_and_feature(ctx, p, orig_sess, conv_sess, xb, tag))
            ctx.conv_sessions[p] = conv_sess
            del orig_sess
    if len(providers) == 2 and len(ctx.conv_sessions) == 2:
        xb = x_big if x_big is not None else random_input(image, batch, *size_list[0], seed + 1, dtype)
        by_provider = {}
        for p, where in (("cpu", "CPU"), ("cuda", "CUDA")):
            sess = ctx.conv_sessions[p]
            by_provider[p] = dict(zip([o.name for o in sess.get_outputs()], _run(sess, {image.name: xb}, where,
                                                                                  OnnxFcnError)))
        cmps = []
        for name in subject.out_names:  # by name: the converted model may order its outputs otherwise
            a, b = by_provider["cpu"][name], by_provider["cuda"][name]
            r, at = tolerance_for(a.dtype, rtol, atol)
            cmps.append(compare(name, b, a, r, at, class_axis=1 if a.ndim >= 2 else None))
        checks.append(CheckResult("providers (cuda vs cpu)", True, False, cmps,
                                  {"size": list(size_list[0])},
                                  "reported, not judged: CUDA and CPU kernels round differently; each provider's "
                                  "own checks above are judged against the rounding bound"))
    return _finish(VerifyReport(checks, providers, exact), t0, _reasons_text(conv))


def _reasons_text(conv: onnx.ModelProto) -> str:
    return read_metadata(conv).get("reasons", "")


def _finish(report: VerifyReport, t0: float, reasons: str) -> VerifyReport:
    report.seconds = time.perf_counter() - t0
    failed = [c for c in report.checks if not c.passed]
    if failed:
        worst = failed[0]
        outs = [o for o in worst.outputs if not o.passed]
        detail = f"output '{outs[0].name}' {outs[0].describe()}" if outs else worst.note
        report.reason = f"{worst.name} check failed: {detail}"
    elif not report.passed:
        report.reason = "no check ran"
    else:
        report.reason = "every check passed" + ("" if report.exact else f" (sliding windows approximate: "
                                                f"{summarize_reasons(reasons)})")
    return report


def _converted_session(path: Path, provider: str, tag: str, outputs: dict[str, int],
                       pin: dict[str, int] | None = None) -> tuple[ort.InferenceSession | None, CheckResult]:
    """A session of the converted model, or a failed "load" check: a model onnxruntime cannot load
    is a wrong conversion (exit 1), running out of memory is a ResourceError."""
    try:
        return file_session(path, provider, pin, outputs=outputs), CheckResult("load" + tag, True, True)
    except Exception as exc:  # onnxruntime raises several types
        oom = resource_error(exc, "loading the converted model")
        if oom is not None:
            raise oom from exc
        return None, CheckResult("load" + tag, False, True, [], {},
                                 f"onnxruntime cannot load the converted model: {first_line(exc)}")


def _sizes(image: ImageInput, geo: Geometry, sizes: Sequence[tuple[int, int]] | None,
           inputs: np.ndarray | None) -> list[tuple[int, int]]:
    if inputs is not None:
        arr = np.asarray(inputs)
        if arr.ndim != 4:
            raise OnnxFcnError(f"input array must be 4-D {image.layout}, got shape {list(arr.shape)}")
        size_list = [(arr.shape[2], arr.shape[3]) if image.layout == "NCHW" else (arr.shape[1], arr.shape[2])]
    else:
        size_list = list(sizes) if sizes else [default_size(image, geo)]
    for h, w in size_list:
        if h < image.height or w < image.width:
            raise OnnxFcnError(f"size {h}x{w} is smaller than the reference window {image.height}x{image.width}")
        geo.check_size(h, w)
    return size_list


def summarize_reasons(text: str) -> str:
    """'zero padding in 18 nodes (first /conv1/Conv); global pooling in the trunk at 3 nodes'."""
    reasons = [r for r in text.split("; ") if r]
    pads = [r for r in reasons if r.startswith("zero padding at ")]
    pools = [r for r in reasons if r.startswith("global pooling")]
    rest = [r for r in reasons if r not in pads and r not in pools]
    parts = []
    if pads:
        first = pads[0][len("zero padding at "):].split(" (")[0]
        parts.append(f"zero padding in {len(pads)} node{'s' if len(pads) > 1 else ''} (first {first})")
    if pools:
        parts.append(f"global pooling inside the trunk at {len(pools)} node{'s' if len(pools) > 1 else ''}")
    return "; ".join(parts + rest) or "not exact"


def crop(x: np.ndarray, layout: str, top: int, left: int, h: int, w: int) -> np.ndarray:
    """The h x w window of ``x`` at (top, left), in its layout."""
    if layout == "NCHW":
        return x[:, :, top:top + h, left:left + w]
    return x[:, top:top + h, left:left + w, :]


def _cell(y: np.ndarray, axes: tuple[int, int] | None, i: int, j: int) -> np.ndarray:
    if axes is None:
        return y
    idx: list[Any] = [slice(None)] * y.ndim
    idx[axes[0]], idx[axes[1]] = i, j
    return y[tuple(idx)]


@dataclass
class _Context:
    """What every sliding and feature check of one verify run shares."""

    orig: onnx.ModelProto
    subject: Subject
    positions: int | str
    seed: int
    rtol: float | None
    atol: float | None
    strict: bool
    progress: Progress | None
    _head: dict[str, tuple[ort.InferenceSession, dict[str, np.ndarray]]] = field(default_factory=dict)
    _cut: tuple[onnx.ModelProto, dict[str, np.ndarray]] | None = None
    conv_sessions: dict[str, ort.InferenceSession] = field(default_factory=dict)

    def head(self) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        """The original's head alone and its weights, cut out once; the exact head reads the same
        weights (one copy in memory, read once)."""
        if self._cut is None:
            self._cut = _head_model(self.orig, self.subject.feature, self.subject.analysis)
            if self.subject.evaluator is not None:
                self.subject.evaluator.preload(self._cut[1])
        return self._cut

    def head_session(self, provider: str) -> tuple[ort.InferenceSession, dict[str, np.ndarray]]:
        """The original's head alone and its weight feeds, a session per provider."""
        if provider not in self._head:
            model, feeds = self.head()
            self._head[provider] = (_session(model, provider, "the original's head", error=OnnxFcnError), feeds)
        return self._head[provider]


def _sliding_and_feature(ctx: _Context, provider: str, orig_sess: ort.InferenceSession,
                         conv_sess: ort.InferenceSession, x: np.ndarray, tag: str) -> list[CheckResult]:
    subject = ctx.subject
    image, geo = subject.image, subject.geo
    h, w = (x.shape[2], x.shape[3]) if image.layout == "NCHW" else (x.shape[1], x.shape[2])
    gh, gw = geo.grid(h, w)
    note = ""
    try:
        ys = dict(zip([o.name for o in conv_sess.get_outputs()], conv_sess.run(None, {image.name: x})))
        fmap = ys[subject.conv_feature]
    except Exception as exc:  # cannot run there: a failed check, unless it ran out of memory
        oom = resource_error(exc, f"{h}x{w}")
        if oom is not None:
            raise oom from exc
        node = node_from_error(exc)
        note = f"converted model fails at {h}x{w}" + (f" in node '{node}'" if node else "") + f": {first_line(exc)}"
    else:
        for name in subject.out_names:
            axes = subject.grid_axes.get(name)
            y = ys[name]
            if axes is not None and (y.ndim <= max(axes) or (y.shape[axes[0]], y.shape[axes[1]]) != (gh, gw)):
                got = "x".join(str(y.shape[a]) for a in axes if a < y.ndim)
                note = f"output '{name}' has a {got} grid at {h}x{w}; the geometry predicts {gh}x{gw}"
                break
    if note:
        inf = float("inf")
        cmp = OutputComparison(subject.out_names[0], inf, inf, inf, inf, 0.0, inf, None, None, False, note=note)
        return [CheckResult("sliding" + tag, False, geo.exact, [cmp], {"size": [h, w]}, note),
                CheckResult("feature" + tag, False, True, [cmp], {"size": [h, w]}, note)]
    subject.check_feature_shape(fmap, (h, w))
    checks: list[CheckResult] = []
    # 2. sliding windows: crops that lie fully inside the image
    sh, sw = geo.stride
    oh, ow = geo.offset
    if subject.mode == "window":
        fit = [(i, j) for i in range(gh) for j in range(gw)
               if oh + i * sh + image.height <= h and ow + j * sw + image.width <= w and oh + i * sh >= 0
               and ow + j * sw >= 0]
        cells = [c for c in sample_positions(gh, gw, ctx.positions, ctx.seed) if c in fit]
        if not cells:
            checks.append(_skipped("sliding" + tag, f"no window fits inside {h}x{w}", {"size": [h, w]}))
        else:
            crops = np.concatenate([crop(x, image.layout, oh + i * sh, ow + j * sw, image.height, image.width)
                                    for i, j in cells], axis=0)
            want = _batched(orig_sess, image.name, crops, f"{image.height}x{image.width}", chunk=max(x.shape[0], 8),
                            progress=ctx.progress)
            checks.append(_sliding_check(ctx, tag, ys, want, fmap, cells, x.shape[0], (gh, gw), (h, w)))
    else:
        checks.append(_skipped("sliding" + tag, "not applicable in dense mode: cells are not reference-size crops",
                               {"size": [h, w]}))
    # 3. feature windows: converted trunk, original head
    checks.append(_feature_check(ctx, ctx.head_session(provider), fmap, ys, gh, gw, tag, (h, w)))
    return checks


def _windows(subject: Subject, fmap: np.ndarray, cells: list[tuple[int, int]]) -> np.ndarray:
    """Feature windows of ``cells`` (cells x batch stacked on axis 0), in the converted tensor's layout;
    in dense mode one cell repeated over the reference map."""
    analysis = subject.analysis
    lay = analysis.layout(subject.feature)
    conv_lay = tuple(subject.conv_to_orig[lay[c]] for c in range(4))
    ref_shape = analysis.index.static_shape(subject.feature)
    assert ref_shape is not None
    fh, fw = int(ref_shape[lay[2]]), int(ref_shape[lay[3]])
    (kh, kw), (dh, dw) = subject.geo.feature_window, subject.geo.feature_dilation
    hax, wax = conv_lay[2], conv_lay[3]
    out = []
    for i, j in cells:  # at an output stride the window's cells lie dh, dw apart
        idx: list[Any] = [slice(None)] * fmap.ndim
        idx[hax] = slice(i, i + (kh - 1) * dh + 1, dh)
        idx[wax] = slice(j, j + (kw - 1) * dw + 1, dw)
        win = fmap[tuple(idx)]
        if (kh, kw) != (fh, fw):  # dense mode: one cell, repeated over the reference map
            reps = [1] * fmap.ndim
            reps[hax], reps[wax] = fh // kh, fw // kw
            win = np.tile(win, reps)
        out.append(win)
    return np.concatenate(out, axis=0)


def _cells(subject: Subject, ys: dict[str, np.ndarray], name: str, cells: list[tuple[int, int]]) -> np.ndarray:
    """The converted output's cells, stacked as cells*batch samples like the windows."""
    axes = subject.grid_axes.get(name)
    parts = [_cell(ys[name], axes, i, j) for i, j in cells]
    return np.concatenate(parts, axis=0)


def _cell_check(ctx: _Context, name: str, ys: dict[str, np.ndarray], want: dict[str, np.ndarray],
                exact: dict[str, Bounded] | None, cells: list[tuple[int, int]], batch: int, grid: tuple[int, int],
                judged: bool, details: dict[str, Any]) -> CheckResult:
    subject = ctx.subject
    gh, gw = grid
    cmps = []
    for oname in subject.out_names:
        if subject.grid_axes.get(oname) is None:
            continue
        got = _cells(subject, ys, oname, cells)
        ref = want[oname]
        class_axis = 1 if ref.ndim >= 2 else None
        if exact is not None and oname in exact and ctx.rtol is None and ctx.atol is None:
            cmp = compare_bounded(oname, got, exact[oname], ref, class_axis)
            ref64 = exact[oname].value
        else:
            r, a = tolerance_for(ref.dtype, ctx.rtol, ctx.atol)
            got = got.reshape(ref.shape) if got.size == ref.size else got
            cmp = compare(oname, got, ref, r, a, class_axis)
            ref64 = ref.astype(np.float64)
        if got.size == ref64.size:
            per = np.abs(got.astype(np.float64).reshape(ref64.shape) - ref.astype(np.float64).reshape(ref64.shape))
            per = per.reshape(len(cells), batch, -1).max(axis=(1, 2))
            emap: list[list[float | None]] = [[None] * gw for _ in range(gh)]
            interior, border = 0.0, 0.0
            for c, (i, j) in enumerate(cells):
                e = float(per[c])
                emap[i][j] = e
                if i in (0, gh - 1) or j in (0, gw - 1):
                    border = max(border, e)
                else:
                    interior = max(interior, e)
            cmp.error_map = emap
            cmp.interior_max_abs = interior if any(0 < i < gh - 1 and 0 < j < gw - 1 for i, j in cells) else None
            cmp.border_max_abs = border
        cmps.append(cmp)
    ok = all(c.passed for c in cmps)
    if judged:
        return CheckResult(name, ok, True, cmps, details, _bound_note(subject, ctx.rtol, ctx.atol))
    note = "approximate: zero padding inside the trunk makes crops see zeros where the full image has pixels"
    return CheckResult(name, True, False, cmps, details, note if not ok else "matched within the bound")


def _sliding_check(ctx: _Context, tag: str, ys: dict[str, np.ndarray], want: list[np.ndarray], fmap: np.ndarray,
                   cells: list[tuple[int, int]], batch: int, grid: tuple[int, int], size: tuple[int, int]) -> CheckResult:
    subject = ctx.subject
    details: dict[str, Any] = {"size": list(size), "grid": list(grid), "cells_checked": len(cells),
                               "cells_outside_image": grid[0] * grid[1] - len([c for c in cells])}
    judged = subject.geo.exact or ctx.strict
    exact = None
    if judged:
        wins = _windows(subject, fmap, cells)
        # The trunk at two input sizes may round differently: allow TRUNK_ULPS of each sample's
        # largest feature, carried through the head.
        u = unit_roundoff(fmap.dtype)
        scale = np.abs(wins.astype(np.float64)).reshape(wins.shape[0], -1).max(axis=1)
        errs = np.broadcast_to((TRUNK_ULPS * u * scale).reshape(-1, *([1] * (wins.ndim - 1))), wins.shape)
        exact = _exact_or_none(subject, wins, head_outputs(subject.analysis), details, errs)
    return _cell_check(ctx, "sliding" + tag, ys, dict(zip(subject.out_names, want)), exact, cells, batch,
                       grid, judged, details)


def _head_model(orig: onnx.ModelProto, feature: str, analysis: Analysis) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The original's head alone, cut out at ``feature`` with onnx-graphsurgeon.

    The surgery runs on the weightless skeleton, where large weights are typed graph inputs; they
    stay inputs, fed as arrays, so a 500 MB head is neither copied into a new proto nor serialized.
    Returns the model and those weight feeds. A head that reads the image input too (tf2onnx's
    Reshape takes the batch size from ``Shape(image)``) keeps it as a second input:
    ``_feature_check`` feeds it a zero image of the reference size, batch by batch.
    """
    import onnx_graphsurgeon as gs
    from onnx import numpy_helper

    graph = gs.import_onnx(skeleton(orig, {}))
    tensors = graph.tensors()
    fmap = tensors[feature]
    fmap.inputs.clear()  # detach the trunk: cleanup() then drops it
    dims: list[Any] = list(analysis.index.shape(feature) or [])
    if dims:
        dims[0] = "batch"
    elem = analysis.index.dtypes.get(feature) or onnx.TensorProto.FLOAT
    fmap.to_variable(dtype=onnx.helper.tensor_dtype_to_np_dtype(elem), shape=dims or None)
    weights = analysis.index.initializers
    image = analysis.image.name
    graph.inputs = [fmap, tensors[image]] if image in tensors else [fmap]
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    used = [t.name for n in graph.nodes for t in n.inputs if t.name in weights and not isinstance(t, gs.Constant)]
    reads_image = any(t.name == image for n in graph.nodes for t in n.inputs)
    graph.inputs = [fmap, *([tensors[image]] if reads_image else []), *(tensors[name] for name in dict.fromkeys(used))]
    model = gs.export_onnx(graph, do_type_check=False)
    del model.graph.value_info[:]
    model.ir_version = max(orig.ir_version, 4)
    del model.opset_import[:]
    model.opset_import.extend(orig.opset_import)
    return model, {name: numpy_helper.to_array(weights[name]) for name in dict.fromkeys(used)}


def _feature_check(ctx: _Context, head: tuple[ort.InferenceSession, dict[str, np.ndarray]], fmap: np.ndarray,
                   ys: dict[str, np.ndarray], gh: int, gw: int, tag: str, size: tuple[int, int]) -> CheckResult:
    subject = ctx.subject
    cells = sample_positions(gh, gw, ctx.positions, ctx.seed)
    batch = fmap.shape[0]
    wins = _windows(subject, fmap, cells)
    head_sess, weights = head
    orig_wins = np.ascontiguousarray(np.transpose(wins, subject.conv_to_orig))
    image = subject.analysis.image
    alongside = None
    if image.name in {i.name for i in head_sess.get_inputs()}:  # read for its shape: zeros will do
        zeros = np.zeros(image.shape_at(1, image.height, image.width), dtype=_input_dtype(ctx.orig, image.name))
        alongside = {image.name: np.broadcast_to(zeros, (len(orig_wins), *zeros.shape[1:]))}
    outs = _batched(head_sess, subject.feature, orig_wins, "the original's head", chunk=max(batch, 8), extra=weights,
                    alongside=alongside)
    want = dict(zip([o.name for o in head_sess.get_outputs()], outs))
    details: dict[str, Any] = {"size": list(size), "grid": [gh, gw], "cells_checked": len(cells),
                               "feature": subject.conv_feature}
    exact = _exact_or_none(subject, wins, head_outputs(subject.analysis), details)
    return _cell_check(ctx, "feature" + tag, ys, want, exact, cells, batch, (gh, gw), True, details)


__all__ = ["CheckResult", "OutputComparison", "ResourceError", "VerifyReport", "compare", "compare_bounded",
           "self_check", "verify"]
