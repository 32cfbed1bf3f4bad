"""convert's self-check: the converted model against the original at the reference size, then at
two larger sizes (one off the stride grid) for the output grid the geometry predicts, batch 2.

Both models run on light sessions (``runtime.light_session``), their weights used in place and
no graph optimizations, one after the other: no two copies of a model's weights ever live in
onnxruntime at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..errors import OnnxFcnError, SelfCheckError
from ..geometry import Geometry
from ..head import ImageInput
from ..runtime import check_memory, session_weights
from .reference import reference_compare
from .sessions import batched, input_dtype, random_input, run, session
from .subject import Subject

# What a user can change when the self-check would not fit: its sizes are the model's own.
SELF_CHECK_REMEDY = "convert with --no-self-check to write the model unchecked (then run verify where memory allows)"


def self_check_sizes(image: ImageInput, geo: Geometry) -> list[tuple[int, int]]:
    """One stride-aligned size, one that is not a multiple of the stride (each the next size the
    model runs at, for models whose branches agree only at some sizes)."""
    sh, sw = geo.stride
    h, w = image.height, image.width
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
                 f"the self-check at {image.height}x{image.width}, batch {batch},", max_memory, SELF_CHECK_REMEDY)
    x = random_input(image, batch, image.height, image.width, seed, input_dtype(original, image.name))
    # No graph optimizations, here and for the converted model (light sessions): the layout
    # transforms cost more than the few runs of a check, and both models run the same kernels.
    sess = session(original, "cpu", "the original model", error=OnnxFcnError, light=True)
    want = batched(sess, image.name, x, f"{image.height}x{image.width}")
    if subject.evaluator is not None:  # the head's weights, already read: the exact head need not read them again
        subject.evaluator.preload(session_weights(sess))
    return Reference(x, want)


def _grid_shapes(subject: Subject, names: list[str], got: list[np.ndarray], size: tuple[int, int],
                 batch: int) -> dict[str, list[int]]:
    """Each head output's shape at ``size``; its grid must be the geometry's, its batch the input's."""
    cells = list(subject.geo.grid(*size))
    shapes = {}
    for name, y in zip(names, got):
        if name not in subject.out_names:
            continue
        axes = subject.grid_axes.get(name)
        if axes is not None and [y.shape[axes[0]], y.shape[axes[1]]] != cells:
            raise SelfCheckError(
                f"output '{name}' has a {y.shape[axes[0]]}x{y.shape[axes[1]]} grid at input {size[0]}x{size[1]}; the "
                f"geometry predicts {cells[0]}x{cells[1]}")
        if y.shape[0] != batch:
            raise SelfCheckError(f"output '{name}' has batch {y.shape[0]} for an input batch of {batch}")
        shapes[name] = list(y.shape)
    return shapes


def _reference_result(subject: Subject, reference: Reference, got: dict[str, np.ndarray],
                      batch: int) -> dict[str, Any]:
    """The reference-size comparison: raises where the converted model differs from the original."""
    image = subject.image
    check = reference_compare(subject, reference.want, got, {"size": [image.height, image.width], "batch": batch},
                              None, None)
    for cmp in check.outputs:
        if not cmp.passed:
            raise SelfCheckError(f"output '{cmp.name}' differs from the original at the reference size: "
                                 + cmp.describe())
    if not check.passed:
        raise SelfCheckError(check.note)
    return {"size": [image.height, image.width], "batch": batch, "comparison": check.details.get("comparison"),
            "outputs": [{"name": c.name, "error": c.error_vs_exact if c.method == "bound" else c.max_abs,
                         "bound": c.bound, "ratio": c.ratio, "original_ratio": c.original_ratio,
                         "max_rel_error": c.needed_rtol} for c in check.outputs]}


def self_check(converted: onnx.ModelProto, subject: Subject, reference: Reference | None, seed: int = 0,
               batch: int = 2, max_memory: int | None = None) -> list[dict[str, Any]]:
    """convert's check: the converted model against the original's outputs at the reference size
    (window mode: ``reference``, from ``reference_outputs``), then two larger sizes, batch 2, for the
    output grid the geometry predicts. Its session uses the model's weights in place."""
    results: list[dict[str, Any]] = []
    image, geo = subject.image, subject.geo
    h, w = self_check_sizes(image, geo)[-1]
    check_memory(converted, image.name, image.shape_at(batch, max(h, image.height + geo.stride[0]), w),
                 f"the self-check at {h}x{w}, batch {batch},", max_memory, SELF_CHECK_REMEDY)
    dtype = input_dtype(converted, image.name)
    feat_dtype = subject.analysis.index.dtypes.get(subject.feature, 0)
    # Without the layout transforms the kernels do not depend on whether H and W are symbolic,
    # so one unpinned session of the converted model serves every size.
    conv_sess = session(converted, "cpu", "the converted model", light=True, outputs={subject.conv_feature: feat_dtype})
    names = [o.name for o in conv_sess.get_outputs()]
    ref_got = None
    if reference is not None:
        ref_got = dict(zip(names, run(conv_sess, {image.name: reference.x}, f"{image.height}x{image.width}")))
    for h, w in self_check_sizes(image, geo):
        got = run(conv_sess, {image.name: random_input(image, batch, h, w, seed + 1, dtype)}, f"{h}x{w}")
        results.append({"size": [h, w], "batch": batch, "output_shapes": _grid_shapes(subject, names, got, (h, w), batch)})
    del conv_sess  # before the exact head, which reads the head's weights in float64 blocks
    if ref_got is not None:
        assert reference is not None
        results.insert(0, _reference_result(subject, reference, ref_got, batch))
    return results
