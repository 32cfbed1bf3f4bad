"""What a check found: per output the errors and the bound (or tolerance) that judged them
(Polygraphy-style numbers), per check a verdict, and the report that is truthy when all passed.

"Equal" means within the rounding bound of :mod:`onnxfcn.bounds`: the converted output and the
original's own float output must both lie within the bound of the exact (float64) head.
``rtol``/``atol`` replace the bound by ``atol + rtol * max|reference|``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..bounds import Bounded
from ..jsonout import strict

# Used with --rtol/--atol, and where the head has an op without a rounding model: (rtol, atol),
# rtol relative to the largest reference magnitude.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-5, 1e-7),
    "float64": (1e-9, 1e-12),
    "float16": (1e-2, 1e-4),
    "bfloat16": (4e-2, 1e-3),
}
# Reported, never failed: a converted output this many times further from the exact head than the
# original's own float output (both within the bound) is flagged in the note.
SUSPECT_FACTOR = 16.0
_INF = float("inf")


@dataclass(kw_only=True)
class OutputComparison:
    """One output compared with its reference (Polygraphy-style numbers, plus the rounding bound)."""

    name: str
    max_abs: float  # against the original's output (or the crops')
    mean_abs: float
    max_rel: float
    mean_rel: float
    ref_max: float
    needed_rtol: float  # max_abs / max|reference|: the smallest rtol that passes with atol 0
    passed: bool = False
    rtol: float | None = None
    atol: float | None = None
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

    @classmethod
    def failed(cls, name: str, note: str) -> OutputComparison:
        """An output that could not be compared at all (wrong shape, a run that failed)."""
        return cls(name=name, max_abs=_INF, mean_abs=_INF, max_rel=_INF, mean_rel=_INF, ref_max=0.0,
                   needed_rtol=_INF, note=note)

    def to_dict(self) -> dict[str, Any]:
        return strict(asdict(self))

    def describe(self) -> str:
        """Why it failed, in one phrase."""
        if self.note:
            return self.note
        if self.method == "bound" and self.ratio is not None:
            return (f"max error {self.error_vs_exact:.3g} from the exact head is {self.ratio:.3g}x its rounding "
                    f"bound {self.bound:.3g}")
        return f"max abs error {self.max_abs:.3g} > {self.atol:.1g} + {self.rtol:.1g} * {self.ref_max:.3g}"


@dataclass(kw_only=True)
class CheckResult:
    name: str  # "outputs" | "load" | "reference" | "sliding" | "feature" | "providers (cuda vs cpu)"
    passed: bool
    exact: bool
    outputs: list[OutputComparison] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    skipped: bool = False  # did not run (note says why); neither passes nor fails the report

    @classmethod
    def skip(cls, name: str, why: str, details: dict[str, Any] | None = None) -> CheckResult:
        return cls(name=name, passed=True, exact=False, details=details or {}, note=why, skipped=True)

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else ("ok" if self.passed else "MISMATCH")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "skipped": self.skipped, "exact": self.exact,
                "note": self.note, "details": strict(self.details), "outputs": [o.to_dict() for o in self.outputs]}


@dataclass(kw_only=True)
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


def _stats(name: str, got: np.ndarray, want: np.ndarray, class_axis: int | None) -> OutputComparison:
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    diff = np.abs(g64 - w64)
    ref_max = float(np.abs(w64).max()) if w64.size else 0.0
    finite = bool(np.isfinite(diff).all())
    max_abs = (float(diff.max()) if finite else _INF) if diff.size else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = diff / np.maximum(np.abs(w64), 1e-12)
    needed = max_abs / ref_max if ref_max > 0 else (0.0 if max_abs == 0 else _INF)
    top1 = None
    if class_axis is not None and got.ndim > class_axis and got.shape[class_axis] > 1:
        top1 = float(np.mean(np.argmax(g64, axis=class_axis) == np.argmax(w64, axis=class_axis)))
    return OutputComparison(
        name=name, max_abs=max_abs, mean_abs=float(diff.mean()) if diff.size else 0.0,
        max_rel=float(rel.max()) if rel.size else 0.0, mean_rel=float(rel.mean()) if rel.size else 0.0,
        ref_max=ref_max, needed_rtol=needed, top1=top1,
    )


def _shape_mismatch(name: str, got: np.ndarray, want_shape: Sequence[int]) -> OutputComparison:
    return OutputComparison.failed(name, f"shape {list(got.shape)} does not match the reference {list(want_shape)}")


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
