"""The sliding and feature checks on a larger input.

- **sliding** (window mode): one pass on a larger image, each cell against the original run on
  its crop. Exact when nothing inside a window sees past it (``Geometry.exact``), else
  approximate and reported with its numbers (failing only with ``strict``);
- **feature**: the converted model's trunk on the larger image, then the *original* head on each
  reference-size window of the feature map. Exact for every model: it proves the head rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from ..bounds import Bounded, unit_roundoff
from ..errors import OnnxFcnError
from ..runtime import Progress, failure_note, node_from_error
from ..windows import crop, fits
from .cells import feature_windows, output_cells
from .compare import CheckResult, OutputComparison, compare, compare_bounded, tolerance_for
from .headcut import head_model
from .sessions import batched, input_dtype, session
from .subject import Subject

# The sliding check of an exact model compares crops run by the original with cells of the
# converted model: the same trunk ops at two input sizes, for which onnxruntime may pick kernels
# that round differently. Each feature value may differ by this many ulps of the sample's largest
# feature; the head carries it to the logits. (Measured on this suite's padding-free models on the
# CPU: 0, the features were bit-identical; the allowance is for kernels chosen by input size.)
TRUNK_ULPS = 64.0


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


@dataclass
class CheckContext:
    """What every sliding and feature check of one verify run shares."""

    orig: onnx.ModelProto
    subject: Subject
    positions: int | str
    seed: int
    rtol: float | None
    atol: float | None
    strict: bool
    progress: Progress | None
    batch: int = 2
    _head: dict[str, tuple[ort.InferenceSession, dict[str, np.ndarray]]] = field(default_factory=dict)
    _cut: tuple[onnx.ModelProto, dict[str, np.ndarray]] | None = None
    conv_sessions: dict[str, ort.InferenceSession] = field(default_factory=dict)

    def head(self) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        """The original's head alone and its weights, cut out once; the exact head reads the same
        weights (one copy in memory, read once)."""
        if self._cut is None:
            self._cut = head_model(self.orig, self.subject.feature, self.subject.analysis)
            if self.subject.evaluator is not None:
                self.subject.evaluator.preload(self._cut[1])
        return self._cut

    def head_session(self, provider: str) -> tuple[ort.InferenceSession, dict[str, np.ndarray]]:
        """The original's head alone and its weight feeds, a session per provider."""
        if provider not in self._head:
            model, feeds = self.head()
            self._head[provider] = (session(model, provider, "the original's head", error=OnnxFcnError), feeds)
        return self._head[provider]


def _failed_run(subject: Subject, note: str, size: tuple[int, int]) -> list[CheckResult]:
    cmp = OutputComparison.failed(subject.out_names[0], note)
    details = {"size": list(size)}
    return [CheckResult(name="sliding", passed=False, exact=subject.geo.exact, outputs=[cmp], details=details, note=note),
            CheckResult(name="feature", passed=False, exact=True, outputs=[cmp], details=dict(details), note=note)]


def _grid_note(subject: Subject, ys: dict[str, np.ndarray], grid: tuple[int, int], size: tuple[int, int]) -> str:
    """Why the outputs' grids are not the one the geometry predicts ("" when they are)."""
    gh, gw = grid
    for name in subject.out_names:
        axes = subject.grid_axes.get(name)
        y = ys[name]
        if axes is not None and (y.ndim <= max(axes) or (y.shape[axes[0]], y.shape[axes[1]]) != (gh, gw)):
            got = "x".join(str(y.shape[a]) for a in axes if a < y.ndim)
            return f"output '{name}' has a {got} grid at {size[0]}x{size[1]}; the geometry predicts {gh}x{gw}"
    return ""


def sliding_and_feature(ctx: CheckContext, provider: str, orig_sess: ort.InferenceSession,
                        conv_sess: ort.InferenceSession, x: np.ndarray, tag: str) -> list[CheckResult]:
    """Both checks on ``x``: one pass of the converted model, its cells against the crops and
    against the original head on its own feature windows."""
    subject = ctx.subject
    image, geo = subject.image, subject.geo
    h, w = (x.shape[2], x.shape[3]) if image.layout == "NCHW" else (x.shape[1], x.shape[2])
    grid = geo.grid(h, w)
    try:
        ys = dict(zip([o.name for o in conv_sess.get_outputs()], conv_sess.run(None, {image.name: x})))
    except Exception as exc:  # cannot run there: a failed check, unless it ran out of memory
        first = failure_note(exc, f"{h}x{w}")
        node = node_from_error(exc)
        note = f"converted model fails at {h}x{w}" + (f" in node '{node}'" if node else "") + f": {first}"
    else:
        note = _grid_note(subject, ys, grid, (h, w))
    if note:
        checks = _failed_run(subject, note, (h, w))
    else:
        fmap = ys[subject.conv_feature]
        subject.check_feature_shape(fmap, (h, w))
        checks = [_sliding(ctx, orig_sess, x, ys, fmap, grid, (h, w)),
                  _feature_check(ctx, ctx.head_session(provider), fmap, ys, grid, (h, w))]
    for c in checks:
        c.name += tag
    return checks


def _sliding(ctx: CheckContext, orig_sess: ort.InferenceSession, x: np.ndarray, ys: dict[str, np.ndarray],
             fmap: np.ndarray, grid: tuple[int, int], size: tuple[int, int]) -> CheckResult:
    """Crops that lie fully inside the image, run by the original, against their cells."""
    subject = ctx.subject
    image, geo = subject.image, subject.geo
    if subject.mode != "window":
        return CheckResult.skip("sliding", "not applicable in dense mode: cells are not reference-size crops",
                                {"size": list(size)})
    (sh, sw), (oh, ow), window = geo.stride, geo.offset, (image.height, image.width)
    cells = [c for c in sample_positions(*grid, ctx.positions, ctx.seed)
             if fits(oh + c[0] * sh, ow + c[1] * sw, window, size)]
    if not cells:
        return CheckResult.skip("sliding", f"no window fits inside {size[0]}x{size[1]}", {"size": list(size)})
    crops = np.concatenate([crop(x, image.layout, oh + i * sh, ow + j * sw, *window) for i, j in cells], axis=0)
    want = batched(orig_sess, image.name, crops, f"{image.height}x{image.width}", chunk=max(x.shape[0], 8),
                   progress=ctx.progress)
    return _sliding_check(ctx, ys, want, fmap, cells, x.shape[0], grid, size)


def _error_map(got: np.ndarray, ref: np.ndarray, ref64: np.ndarray, cells: list[tuple[int, int]], batch: int,
               grid: tuple[int, int], cmp: OutputComparison) -> None:
    """Per cell the largest error, as a grid, and the largest at the border and inside."""
    gh, gw = grid
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


def _cell_check(ctx: CheckContext, name: str, ys: dict[str, np.ndarray], want: dict[str, np.ndarray],
                exact: dict[str, Bounded] | None, cells: list[tuple[int, int]], batch: int, grid: tuple[int, int],
                judged: bool, details: dict[str, Any]) -> CheckResult:
    subject = ctx.subject
    cmps = []
    for oname in subject.out_names:
        if subject.grid_axes.get(oname) is None:
            continue
        got = output_cells(subject, ys, oname, cells)
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
            _error_map(got, ref, ref64, cells, batch, grid, cmp)
        cmps.append(cmp)
    ok = all(c.passed for c in cmps)
    if judged:
        return CheckResult(name=name, passed=ok, exact=True, outputs=cmps, details=details,
                           note=subject.bound_note(ctx.rtol, ctx.atol))
    note = "approximate: zero padding inside the trunk makes crops see zeros where the full image has pixels"
    return CheckResult(name=name, passed=True, exact=False, outputs=cmps, details=details,
                       note=note if not ok else "matched within the bound")


def _sliding_check(ctx: CheckContext, ys: dict[str, np.ndarray], want: list[np.ndarray], fmap: np.ndarray,
                   cells: list[tuple[int, int]], batch: int, grid: tuple[int, int], size: tuple[int, int]) -> CheckResult:
    subject = ctx.subject
    details: dict[str, Any] = {"size": list(size), "grid": list(grid), "cells_checked": len(cells),
                               "cells_outside_image": grid[0] * grid[1] - len(cells)}
    judged = subject.geo.exact or ctx.strict
    exact = None
    if judged:
        wins = feature_windows(subject, fmap, cells)
        # The trunk at two input sizes may round differently: allow TRUNK_ULPS of each sample's
        # largest feature, carried through the head.
        u = unit_roundoff(fmap.dtype)
        scale = np.abs(wins.astype(np.float64)).reshape(wins.shape[0], -1).max(axis=1)
        errs = np.broadcast_to((TRUNK_ULPS * u * scale).reshape(-1, *([1] * (wins.ndim - 1))), wins.shape)
        exact = subject.exact_or_none(wins, details, errs)
    return _cell_check(ctx, "sliding", ys, dict(zip(subject.out_names, want)), exact, cells, batch, grid, judged,
                       details)


def _feature_check(ctx: CheckContext, head: tuple[ort.InferenceSession, dict[str, np.ndarray]], fmap: np.ndarray,
                   ys: dict[str, np.ndarray], grid: tuple[int, int], size: tuple[int, int]) -> CheckResult:
    subject = ctx.subject
    cells = sample_positions(*grid, ctx.positions, ctx.seed)
    batch = fmap.shape[0]
    wins = feature_windows(subject, fmap, cells)
    head_sess, weights = head
    orig_wins = np.ascontiguousarray(np.transpose(wins, subject.conv_to_orig))
    image = subject.analysis.image
    alongside = None
    if image.name in {i.name for i in head_sess.get_inputs()}:  # read for its shape: zeros will do
        zeros = np.zeros(image.shape_at(1, image.height, image.width), dtype=input_dtype(ctx.orig, image.name))
        alongside = {image.name: np.broadcast_to(zeros, (len(orig_wins), *zeros.shape[1:]))}
    outs = batched(head_sess, subject.feature, orig_wins, "the original's head", chunk=max(batch, 8), extra=weights,
                   alongside=alongside)
    want = dict(zip([o.name for o in head_sess.get_outputs()], outs))
    details: dict[str, Any] = {"size": list(size), "grid": list(grid), "cells_checked": len(cells),
                               "feature": subject.conv_feature}
    exact = subject.exact_or_none(wins, details)
    return _cell_check(ctx, "feature", ys, want, exact, cells, batch, grid, True, details)
