"""The reference check: at the reference size the converted outputs equal the original's."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from ..head import ImageInput
from ..runtime import failure_note, run_batched
from .cells import cell, feature_windows
from .compare import CheckResult, compare, compare_bounded, tolerance_for
from .subject import Subject


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
        note = failure_note(exc, f"{h}x{w}")
        return CheckResult(name="reference", passed=False, exact=True, details=details,
                           note=f"converted model fails at the reference size: {note}")
    got_by_name = dict(zip([o.name for o in converted.get_outputs()], got))
    return reference_compare(subject, want, got_by_name, details, rtol, atol)


def reference_compare(subject: Subject, want: list[np.ndarray], got_by_name: dict[str, np.ndarray],
                      details: dict[str, Any], rtol: float | None, atol: float | None) -> CheckResult:
    """The converted model's outputs at the reference size (and its feature map, which the exact
    head reads) against the original's outputs ``want``."""
    image = subject.image
    fmap = got_by_name[subject.conv_feature]
    subject.check_feature_shape(fmap, (image.height, image.width))
    dilated = subject.geo.feature_dilation != (1, 1)
    if dilated:  # an output stride: the window's cells lie apart
        fmap = feature_windows(subject, fmap, [(0, 0)])
    exact = subject.exact_or_none(fmap, details)
    cmps = []
    for name, ref in zip(subject.out_names, want):
        g = got_by_name[name]
        if dilated:  # finer than the windows: more than one cell fits the reference size; the first is the image
            g = cell(g, subject.grid_axes.get(name), 0, 0)
        if exact is not None and name in exact and rtol is None and atol is None:
            cmps.append(compare_bounded(name, g, exact[name], ref, class_axis=1 if ref.ndim >= 2 else None))
        else:
            r, a = tolerance_for(ref.dtype, rtol, atol)
            g = g.reshape(ref.shape) if g.size == ref.size else g
            cmps.append(compare(name, g, ref, r, a, class_axis=1 if ref.ndim >= 2 else None))
    return CheckResult(name="reference", passed=all(c.passed for c in cmps), exact=True, outputs=cmps,
                       details=details, note=subject.bound_note(rtol, atol))
