"""Numerical proof of a conversion on onnxruntime.

Three checks, reported separately:

- **reference**: at the reference size the converted outputs equal the original's;
- **sliding**: one pass on a larger image, each cell against the original run on its crop.
  Exact when the model has no padding effect inside a window (metadata ``onnxfcn.exact``), else
  approximate and reported with its numbers;
- **feature**: the converted model's trunk on the larger image, then the *original* head on each
  reference-size window of the feature map. Exact for every model: it proves the head rewrite.

Tolerances compare the largest absolute error with ``atol + rtol * max|reference|`` per output.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .errors import OnnxFcnError, SelfCheckError
from .geometry import Geometry
from .head import ImageInput
from .io import load_model
from .runtime import Progress, first_line, make_session, node_from_error, resolve_providers, run_batched
from .shapes import OUT_H, OUT_W

log = logging.getLogger(__name__)

# Defaults per output dtype: (rtol, atol). rtol is relative to the largest reference magnitude.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-5, 1e-7),
    "float64": (1e-9, 1e-12),
    "float16": (1e-2, 1e-4),
    "bfloat16": (4e-2, 1e-3),
}

# ---- comparison ---------------------------------------------------------------------------
@dataclass
class OutputComparison:
    """One output compared with its reference (Polygraphy-style numbers)."""

    name: str
    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float
    ref_max: float
    needed_rtol: float  # max_abs / max|reference|: the smallest rtol that passes with atol 0
    rtol: float
    atol: float
    passed: bool
    top1: float | None = None  # fraction of cells whose arg-max class agrees
    error_map: list[list[float | None]] | None = None
    interior_max_abs: float | None = None
    border_max_abs: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def describe(self) -> str:
        """Why it failed, in one phrase."""
        return self.note or f"max abs error {self.max_abs:.3g} > {self.atol:.1g} + {self.rtol:.1g} * {self.ref_max:.3g}"


def compare(name: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float,
            class_axis: int | None = None) -> OutputComparison:
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        inf = float("inf")
        return OutputComparison(name, inf, inf, inf, inf, float(np.abs(want).max()) if want.size else 0.0, inf,
                                rtol, atol, False,
                                note=f"shape {list(got.shape)} does not match the reference {list(want.shape)}")
    if got.dtype.kind in "iub":
        diff = np.abs(got.astype(np.int64) - want.astype(np.int64)).astype(np.float64)
        ref_max = float(np.abs(want).max()) if want.size else 0.0
        max_abs = float(diff.max()) if diff.size else 0.0
        return OutputComparison(name, max_abs, float(diff.mean()) if diff.size else 0.0, max_abs, max_abs,
                                ref_max, 0.0 if max_abs == 0 else float("inf"), 0.0, 0.0, max_abs == 0)
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    diff = np.abs(g64 - w64)
    bad = ~np.isfinite(diff)
    ref_max = float(np.abs(w64).max()) if w64.size else 0.0
    rel = diff / np.maximum(np.abs(w64), 1e-12)
    max_abs = float(np.inf if bad.any() else diff.max()) if diff.size else 0.0
    needed = max_abs / ref_max if ref_max > 0 else (0.0 if max_abs <= atol else float("inf"))
    top1 = None
    if class_axis is not None and got.ndim > class_axis and got.shape[class_axis] > 1:
        top1 = float(np.mean(np.argmax(g64, axis=class_axis) == np.argmax(w64, axis=class_axis)))
    return OutputComparison(
        name=name, max_abs=max_abs, mean_abs=float(diff.mean()) if diff.size else 0.0,
        max_rel=float(rel.max()) if rel.size else 0.0, mean_rel=float(rel.mean()) if rel.size else 0.0,
        ref_max=ref_max, needed_rtol=max(needed, 0.0), rtol=rtol, atol=atol,
        passed=bool(max_abs <= atol + rtol * ref_max), top1=top1,
    )


@dataclass
class CheckResult:
    name: str  # "reference" | "sliding" | "feature" | "providers"
    passed: bool
    exact: bool
    outputs: list[OutputComparison] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "exact": self.exact, "note": self.note,
                "details": self.details, "outputs": [o.to_dict() for o in self.outputs]}


@dataclass
class VerifyReport:
    """Truthy when every check passed."""

    checks: list[CheckResult]
    provider: list[str]
    exact: bool
    seconds: float = 0.0
    reason: str = ""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reason": self.reason, "exact": self.exact, "providers": self.provider,
                "seconds": round(self.seconds, 3), "checks": [c.to_dict() for c in self.checks]}


def compare_outputs(names: Sequence[str], got: Sequence[np.ndarray], want: Sequence[np.ndarray],
                    rtol: float | None, atol: float | None) -> list[OutputComparison]:
    """Each output against its reference; N x K x 1 x 1 cells are compared as the original N x K."""
    cmps = []
    for name, g, ref in zip(names, got, want):
        r, a = tolerance_for(ref.dtype, rtol, atol)
        cmps.append(compare(name, g.reshape(ref.shape) if g.size == ref.size else g, ref, r, a,
                            class_axis=1 if ref.ndim >= 2 else None))
    return cmps


def spatial_axis(output: onnx.ValueInfoProto) -> int | None:
    """Axis of the ``out_height`` dim convert gives head outputs (``out_width`` follows it)."""
    dims = [d.dim_param for d in output.type.tensor_type.shape.dim]
    return dims.index(OUT_H) if OUT_H in dims else None


def tolerance_for(dtype: np.dtype[Any], rtol: float | None, atol: float | None) -> tuple[float, float]:
    d_rtol, d_atol = TOLERANCES.get(np.dtype(dtype).name, TOLERANCES["float32"])
    return (d_rtol if rtol is None else rtol), (d_atol if atol is None else atol)


def random_input(image: ImageInput, batch: int, height: int, width: int, seed: int,
                 dtype: np.dtype[Any] = np.dtype(np.float32)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(image.shape_at(batch, height, width)).astype(dtype)


def _input_dtype(model: onnx.ModelProto, name: str) -> np.dtype[Any]:
    for vi in model.graph.input:
        if vi.name == name:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    return np.dtype(np.float32)


# ---- self-check used by convert ---------------------------------------------------------------
def self_check_sizes(image: ImageInput, geo: Geometry) -> list[tuple[int, int]]:
    sh, sw = geo.stride
    h, w = image.height, image.width
    # One stride-aligned size, one that is not a multiple of the stride.
    return [(h + sh, w + 2 * sw), (h + sh + max(1, sh // 2) + 1, w + max(1, sw // 3) + 2)]


def self_check(original: onnx.ModelProto | str, converted: onnx.ModelProto, image: ImageInput, geo: Geometry,
               seed: int = 0, batch: int = 2) -> list[dict[str, Any]]:
    """Run the converted model at the reference size and at two larger sizes, batch 2."""
    results: list[dict[str, Any]] = []
    dtype = _input_dtype(converted, image.name)
    try:
        conv_sess = make_session(converted)
    except Exception as exc:  # onnxruntime raises several types
        raise SelfCheckError(f"onnxruntime cannot load the converted model: {first_line(exc)}",
                             node_from_error(exc)) from exc
    out_names = [o.name for o in converted.graph.output]
    if geo.mode == "window":
        x = random_input(image, batch, image.height, image.width, seed, dtype)
        want = run_batched(make_session(original), image.name, x)
        got = _run(conv_sess, image.name, x, "the reference size")
        cmps = compare_outputs(out_names, got, want, None, None)
        for cmp in cmps:
            if not cmp.passed:
                raise SelfCheckError(f"output '{cmp.name}' differs from the original at the reference size: "
                                     + cmp.describe())
        results.append({"size": [image.height, image.width], "batch": batch,
                        "max_rel_error": max(c.needed_rtol for c in cmps)})
    for h, w in self_check_sizes(image, geo):
        x = random_input(image, batch, h, w, seed + 1, dtype)
        got = _run(conv_sess, image.name, x, f"{h}x{w}")
        cells = list(geo.grid(h, w))
        shapes = {}
        for name, y, o in zip(out_names, got, converted.graph.output):
            ax = spatial_axis(o)
            if ax is not None:
                if [y.shape[ax], y.shape[ax + 1]] != cells:
                    raise SelfCheckError(
                        f"output '{name}' has a {y.shape[ax]}x{y.shape[ax + 1]} grid at input {h}x{w}; the geometry "
                        f"predicts {cells[0]}x{cells[1]}")
            if y.shape[0] != batch:
                raise SelfCheckError(f"output '{name}' has batch {y.shape[0]} for an input batch of {batch}")
            shapes[name] = list(y.shape)
        results.append({"size": [h, w], "batch": batch, "output_shapes": shapes})
    return results


def _run(sess: ort.InferenceSession, name: str, x: np.ndarray, where: str) -> list[np.ndarray]:
    try:
        return sess.run(None, {name: x})
    except Exception as exc:  # onnxruntime raises several types
        node = node_from_error(exc)
        raise SelfCheckError(f"converted model fails at {where}: {first_line(exc)}", node) from exc


# ---- verify ---------------------------------------------------------------------------------
def default_size(image: ImageInput, geo: Geometry) -> tuple[int, int]:
    """A larger size that gives a grid of at least 3 x 4 windows, all inside the image."""
    sh, sw = geo.stride
    if geo.mode == "dense":
        return image.height + 2 * sh, image.width + 3 * sw
    return image.height + 2 * sh + geo.offset[0], image.width + 3 * sw + geo.offset[1]


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
) -> VerifyReport:
    """Prove ``converted`` against ``original``; the report is truthy when every check passed."""
    from .convert import prepare, read_metadata
    from .geometry import compute_geometry
    from .head import find_image_input
    from .rewrite import plan_head_rewrite

    t0 = time.perf_counter()
    orig, _ = load_model(original)
    conv, _ = load_model(converted)
    meta = read_metadata(conv)
    if not meta.get("mode"):
        raise OnnxFcnError("the second model has no onnxfcn metadata: is it a model converted by onnxfcn?")
    mode = meta["mode"]
    window = tuple(int(v) for v in meta["window"].split(","))
    analysis = prepare(orig, None, (window[0], window[1]))
    image = analysis.image
    plan = plan_head_rewrite(analysis, mode)
    geo = compute_geometry(analysis, plan.features, plan.windows[0], mode)
    conv_image = find_image_input(conv, image.name, (image.height, image.width))
    if conv_image.layout != image.layout:
        raise OnnxFcnError("the two models' image inputs differ in layout")
    providers = resolve_providers(provider)
    exact = meta.get("exact") == "true"
    dtype = _input_dtype(conv, image.name)
    checks: list[CheckResult] = []
    # A path goes to onnxruntime as it is: serializing a 500 MB model again costs a second.
    orig_src: onnx.ModelProto | str = orig if isinstance(original, onnx.ModelProto) else str(original)
    orig_sess = {p: make_session(orig_src, p) for p in providers}
    feature = meta.get("features", "").split(",")[0]
    probe = _with_feature_output(conv, feature, analysis)  # one session gives outputs and feature map
    conv_sess = {p: make_session(probe, p) for p in providers}
    del probe
    out_names = [o.name for o in conv.graph.output]
    spatial_axes = {o.name: spatial_axis(o) for o in conv.graph.output}

    if inputs is not None:
        x_big = np.asarray(inputs, dtype=dtype)
        if x_big.ndim != 4:
            raise OnnxFcnError(f"input array must be 4-D {image.layout}, got shape {list(x_big.shape)}")
        hw = (x_big.shape[2], x_big.shape[3]) if image.layout == "NCHW" else (x_big.shape[1], x_big.shape[2])
        size_list = [hw]
    else:
        size_list = list(sizes) if sizes else [default_size(image, geo)]
        x_big = None
    for h, w in size_list:
        if h < image.height or w < image.width:
            raise OnnxFcnError(f"size {h}x{w} is smaller than the reference window {image.height}x{image.width}")

    ctx = _Context(orig, analysis, geo, mode, out_names, spatial_axes, positions, seed, rtol, atol, exact, strict,
                   progress)
    for p in providers:
        tag = "" if len(providers) == 1 else f" [{p}]"
        # 1. reference size
        if mode == "window":
            x = random_input(image, batch, image.height, image.width, seed, dtype)
            want = run_batched(orig_sess[p], image.name, x)
            details = {"size": [image.height, image.width], "batch": batch}
            try:
                got = run_batched(conv_sess[p], image.name, x)[:len(out_names)]
            except Exception as exc:  # cannot run at the reference size: a failed check
                checks.append(CheckResult("reference" + tag, False, True, [], details,
                                          f"converted model fails at the reference size: {first_line(exc)}"))
            else:
                cmps = compare_outputs(out_names, got, want, rtol, atol)
                checks.append(CheckResult("reference" + tag, all(c.passed for c in cmps), True, cmps, details))
        else:
            checks.append(CheckResult("reference" + tag, True, True, [], {},
                                      "not applicable in dense mode: cells score single feature positions"))
        for k, (h, w) in enumerate(size_list):
            xb = x_big if x_big is not None else random_input(image, batch, h, w, seed + 1 + k, dtype)
            checks.extend(_sliding_and_feature(ctx, p, orig_sess[p], conv_sess[p], xb, tag))
    if len(providers) == 2:
        xb = x_big if x_big is not None else random_input(image, batch, *size_list[0], seed + 1, dtype)
        a_out = conv_sess["cpu"].run(None, {image.name: xb})[:len(out_names)]
        b_out = conv_sess["cuda"].run(None, {image.name: xb})[:len(out_names)]
        cmps = compare_outputs(out_names, b_out, a_out, rtol, atol)
        checks.append(CheckResult("providers (cuda vs cpu)", all(c.passed for c in cmps), True, cmps,
                                  {"size": list(size_list[0])}))
    report = VerifyReport(checks, providers, exact, time.perf_counter() - t0)
    failed = [c for c in checks if not c.passed]
    if failed:
        worst = failed[0]
        outs = [o for o in worst.outputs if not o.passed]
        detail = f"output '{outs[0].name}' {outs[0].describe()}" if outs else worst.note
        report.reason = f"{worst.name} check failed: {detail}"
    else:
        report.reason = "every check passed" + ("" if exact else f" (sliding windows approximate: "
                                                 f"{summarize_reasons(meta.get('reasons', ''))})")
    return report


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


def _crop(x: np.ndarray, layout: str, top: int, left: int, h: int, w: int) -> np.ndarray:
    if layout == "NCHW":
        return x[:, :, top:top + h, left:left + w]
    return x[:, top:top + h, left:left + w, :]


def _cell(y: np.ndarray, ax: int | None, i: int, j: int) -> np.ndarray:
    if ax is None:
        return y
    idx: list[Any] = [slice(None)] * y.ndim
    idx[ax], idx[ax + 1] = i, j
    return y[tuple(idx)]


@dataclass
class _Context:
    """What every sliding and feature check of one verify run shares."""

    orig: onnx.ModelProto
    analysis: Any
    geo: Geometry
    mode: str
    out_names: list[str]
    spatial_axes: dict[str, int | None]
    positions: int | str
    seed: int
    rtol: float | None
    atol: float | None
    exact: bool
    strict: bool
    progress: Progress | None
    _head: dict[str, tuple[ort.InferenceSession, dict[str, np.ndarray]]] = field(default_factory=dict)

    def head_session(self, provider: str) -> tuple[ort.InferenceSession, dict[str, np.ndarray]]:
        """The original's head alone and its weight feeds, built once per provider."""
        if provider not in self._head:
            feature = self.analysis.heads[0].features[0]
            model, feeds = _head_model(self.orig, feature, self.analysis)
            self._head[provider] = (make_session(model, provider), feeds)
        return self._head[provider]


def _sliding_and_feature(ctx: _Context, provider: str, orig_sess: ort.InferenceSession,
                         conv_sess: ort.InferenceSession, x: np.ndarray, tag: str) -> list[CheckResult]:
    analysis, geo, out_names, spatial_axes = ctx.analysis, ctx.geo, ctx.out_names, ctx.spatial_axes
    exact = ctx.exact
    h, w = (x.shape[2], x.shape[3]) if analysis.image.layout == "NCHW" else (x.shape[1], x.shape[2])
    image = analysis.image
    batch = x.shape[0]
    gh, gw = geo.grid(h, w)
    first_ax = next((spatial_axes[n] for n in out_names if spatial_axes[n] is not None), None)
    if first_ax is None:
        raise OnnxFcnError(f"converted model has no output with {OUT_H}/{OUT_W} dims")
    note = ""
    try:
        *ys, fmap = conv_sess.run(None, {image.name: x})
    except Exception as exc:  # cannot run there: a failed check
        node = node_from_error(exc)
        note = f"converted model fails at {h}x{w}" + (f" in node '{node}'" if node else "") + f": {first_line(exc)}"
    else:
        y0 = ys[out_names.index(next(n for n in out_names if spatial_axes[n] is not None))]
        if (y0.shape[first_ax], y0.shape[first_ax + 1]) != (gh, gw):
            note = (f"output grid {y0.shape[first_ax]}x{y0.shape[first_ax + 1]} at {h}x{w}, "
                    f"the geometry predicts {gh}x{gw}")
    if note:
        inf = float("inf")
        cmp = OutputComparison(out_names[0], inf, inf, inf, inf, 0.0, inf, 0.0, 0.0, False, note=note)
        return [CheckResult("sliding" + tag, False, exact, [cmp], {"size": [h, w]}, note),
                CheckResult("feature" + tag, False, True, [cmp], {"size": [h, w]}, note)]
    checks: list[CheckResult] = []
    # 2. sliding windows: crops that lie fully inside the image
    sh, sw = geo.stride
    oh, ow = geo.offset
    if ctx.mode == "window":
        fit = [(i, j) for i in range(gh) for j in range(gw)
               if oh + i * sh + image.height <= h and ow + j * sw + image.width <= w and oh + i * sh >= 0
               and ow + j * sw >= 0]
        cells = [c for c in sample_positions(gh, gw, ctx.positions, ctx.seed) if c in fit]
        crops = np.concatenate([_crop(x, image.layout, oh + i * sh, ow + j * sw, image.height, image.width)
                                for i, j in cells], axis=0)
        want = run_batched(orig_sess, image.name, crops, chunk=max(batch, 8), progress=ctx.progress)
        checks.append(_cell_check(ctx, "sliding" + tag, ys, want, cells, batch, gh, gw, exact, ctx.strict,
                                  {"size": [h, w], "grid": [gh, gw], "cells_checked": len(cells),
                                   "cells_outside_image": gh * gw - len(fit)}))
    else:
        checks.append(CheckResult("sliding" + tag, True, False, [], {"size": [h, w]},
                                  "not applicable in dense mode: cells are not reference-size crops"))
    # 3. feature windows: converted trunk, original head
    checks.append(_feature_check(ctx, ctx.head_session(provider), fmap, ys, gh, gw, tag, (h, w)))
    return checks


def _cell_check(ctx: _Context, name: str, ys: list[np.ndarray], want: list[np.ndarray],
                cells: list[tuple[int, int]], batch: int, gh: int, gw: int, exact: bool, strict: bool,
                details: dict[str, Any]) -> CheckResult:
    rtol, atol = ctx.rtol, ctx.atol
    cmps = []
    for k, oname in enumerate(ctx.out_names):
        ax = ctx.spatial_axes[oname]
        if ax is None:
            continue
        got = np.stack([_cell(ys[k], ax, i, j) for i, j in cells], axis=0)  # cells x batch x ...
        ref = want[k].reshape((len(cells), batch, *got.shape[2:])) if want[k].size == got.size else want[k]
        r, a = tolerance_for(ref.dtype, rtol, atol)
        cmp = compare(oname, got, ref, r, a, class_axis=2 if got.ndim >= 3 else None)
        emap: list[list[float | None]] = [[None] * gw for _ in range(gh)]
        interior, border = 0.0, 0.0
        for c, (i, j) in enumerate(cells):
            e = float(np.abs(got[c].astype(np.float64) - ref[c].astype(np.float64)).max())
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
    if exact or strict:
        return CheckResult(name, ok, exact, cmps, details)
    note = "approximate: zero padding inside the trunk makes crops see zeros where the full image has pixels"
    return CheckResult(name, True, False, cmps, details, note if not ok else "matched within tolerance")


def _head_model(orig: onnx.ModelProto, feature: str, analysis: Any) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The original's head alone, cut out at ``feature`` with onnx-graphsurgeon.

    The surgery runs on the weightless skeleton, where large weights are typed graph inputs; they
    stay inputs, fed as arrays, so a 500 MB head is neither copied into a new proto nor serialized.
    Returns the model and those weight feeds.
    """
    import onnx_graphsurgeon as gs
    from onnx import numpy_helper

    from .graph import skeleton

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
    graph.inputs = [fmap]
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    used = [t.name for n in graph.nodes for t in n.inputs if t.name in weights and not isinstance(t, gs.Constant)]
    graph.inputs = [fmap, *(tensors[name] for name in dict.fromkeys(used))]
    model = gs.export_onnx(graph, do_type_check=False)
    del model.graph.value_info[:]
    model.ir_version = max(orig.ir_version, 4)
    del model.opset_import[:]
    model.opset_import.extend(orig.opset_import)
    return model, {name: numpy_helper.to_array(weights[name]) for name in dict.fromkeys(used)}


def _with_feature_output(conv: onnx.ModelProto, feature: str, analysis: Any) -> onnx.ModelProto:
    """A copy of the converted model that also outputs the trunk's feature map."""
    probe = onnx.ModelProto()
    probe.CopyFrom(conv)
    produced = {o for n in probe.graph.node for o in n.output}
    if feature not in produced:
        # The rewrite read the map before the exporter's NCHW->NHWC Transpose; put it back here.
        probe.graph.node.append(analysis.index.producer[feature])
    elem = analysis.index.dtypes.get(feature) or onnx.TensorProto.FLOAT
    probe.graph.output.append(onnx.helper.make_tensor_value_info(feature, elem, None))
    return probe


def _feature_check(ctx: _Context, head: tuple[ort.InferenceSession, dict[str, np.ndarray]], fmap: np.ndarray,
                   ys: list[np.ndarray], gh: int, gw: int, tag: str, size: tuple[int, int]) -> CheckResult:
    analysis = ctx.analysis
    feature = analysis.heads[0].features[0]
    lay = analysis.layout(feature)
    ref_shape = analysis.index.static_shape(feature)
    fh, fw = int(ref_shape[lay[2]]), int(ref_shape[lay[3]])
    kh, kw = ctx.geo.feature_window
    cells = sample_positions(gh, gw, ctx.positions, ctx.seed)
    windows = []
    for i, j in cells:
        idx: list[Any] = [slice(None)] * 4
        idx[lay[2]] = slice(i, i + kh)
        idx[lay[3]] = slice(j, j + kw)
        win = fmap[tuple(idx)]
        if (kh, kw) != (fh, fw):  # dense mode: one cell, repeated over the reference map
            reps = [1, 1, 1, 1]
            reps[lay[2]], reps[lay[3]] = fh // kh, fw // kw
            win = np.tile(win, reps)
        windows.append(win)
    batch = fmap.shape[0]
    head_sess, weights = head
    want = run_batched(head_sess, feature, np.concatenate(windows, axis=0), chunk=max(batch, 8), extra=weights)
    return _cell_check(ctx, "feature" + tag, ys, want, cells, batch, gh, gw, True, True,
                       {"size": list(size), "grid": [gh, gw], "cells_checked": len(cells), "feature": feature})
