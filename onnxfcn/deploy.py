"""Shapes for deployers: a converted model fixed at one input size (``convert --static``), and the
strings other runtimes take for a dynamic one (TensorRT's optimization profile, OpenVINO's partial
shape, onnxruntime's free-dimension overrides).

The tool knows the answers: the smallest input is one window (``Geometry.min_size``), the sizes the
model runs at are its lattice, and the output grid follows from the geometry at any size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from .errors import OnnxFcnError, SelfCheckError
from .geometry import Geometry, lattice_text
from .head import ImageInput
from .shapes import BATCH, HEIGHT, OUT_H, OUT_W, WIDTH

log = logging.getLogger(__name__)


def check_static_size(geo: Geometry, height: int, width: int, what: str = "--static") -> None:
    """Refuse, with one line naming the nearest size that works, a size below one window or off
    the size lattice."""
    mh, mw = geo.min_size()
    if height < mh or width < mw:
        nh, nw = geo.next_size(max(height, mh), max(width, mw))
        raise OnnxFcnError(f"{what} {height}x{width} is below the smallest input, {mh}x{mw} (one window: no cell "
                           f"fits under it); the nearest size that works: {nh}x{nw}")
    geo.check_size(height, width, what)


@dataclass(frozen=True)
class StaticShapes:
    """The fixed dims written into a converted model: the input's, and each output's."""

    input: list[int | str]
    outputs: dict[str, list[int | str]]


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def _write(vi: onnx.ValueInfoProto, dims: list[int | str]) -> None:
    for d, value in zip(vi.type.tensor_type.shape.dim, dims):
        if isinstance(value, int):
            d.Clear()
            d.dim_value = value


def fix_shapes(model: onnx.ModelProto, image: ImageInput, geo: Geometry, height: int, width: int,
               batch: int | None) -> StaticShapes:
    """Fix the converted model's input at ``height`` x ``width`` (and the batch at ``batch``, if
    given) and write every output dim the grid formula gives; other dims keep their names."""
    batch_name = next((d.dim_param for vi in model.graph.input if vi.name == image.name
                       for d in vi.type.tensor_type.shape.dim[:1]), "") or BATCH
    cells = geo.grid(height, width)
    values: dict[str, int] = {HEIGHT: height, WIDTH: width, OUT_H: cells[0], OUT_W: cells[1]}
    if batch is not None:
        values[batch_name] = batch
    for vi in model.graph.input:
        if vi.name == image.name:
            fixed_in: list[int | str] = list(image.shape_at(batch if batch is not None else 0, height, width))
            _write(vi, [batch_name if batch is None and k == 0 else v for k, v in enumerate(fixed_in)])
            shapes_in = _dims(vi)
    outs = {}
    for vi in model.graph.output:
        dims = _dims(vi)
        fixed: list[int | str] = [values.get(d, d) if isinstance(d, str) else d for d in dims]
        _write(vi, fixed)
        outs[vi.name] = _dims(vi)
    del model.graph.value_info[:]  # expressions of H and W: onnxruntime infers the fixed ones itself
    return StaticShapes(shapes_in, outs)


def static_input(model: onnx.ModelProto, image: ImageInput, height: int, width: int, batch: int,
                 seed: int = 0, max_memory: int | None = None) -> np.ndarray:
    """The random input ``--static``'s check runs both models on, once its memory is known to fit."""
    from .runtime import check_memory
    from .verify.sessions import input_dtype

    check_memory(model, image.name, image.shape_at(batch, height, width),
                 f"the --static check at {height}x{width}, batch {batch},", max_memory,
                 "convert with --no-self-check to write the model unchecked")
    rng = np.random.default_rng(seed + 7)
    return rng.standard_normal(image.shape_at(batch, height, width)).astype(input_dtype(model, image.name))


def run_once(model: onnx.ModelProto, image: ImageInput, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of one run (a session that uses the weights in place: no copy of the model)."""
    from .runtime import light_session

    sess = light_session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {image.name: x}), strict=True))


def compare_static(dynamic: dict[str, np.ndarray], static: onnx.ModelProto, image: ImageInput,
                   x: np.ndarray) -> dict[str, Any]:
    """The static model's outputs on ``x`` (the static size) against the dynamic model's there
    (``dynamic``, from ``run_once`` before the shapes were fixed): the declared static dims, and
    equal cell for cell."""
    have_all = run_once(static, image, x)
    height, width = (x.shape[2], x.shape[3]) if image.layout == "NCHW" else (x.shape[1], x.shape[2])
    rows = []
    declared = {vi.name: _dims(vi) for vi in static.graph.output}
    for name, want in dynamic.items():
        have = have_all[name]
        dims = declared.get(name, [])
        if any(isinstance(d, int) and d and d != s for d, s in zip(dims, have.shape)) or have.shape != want.shape:
            raise SelfCheckError(f"--static: output '{name}' has shape {list(have.shape)} at {height}x{width}, "
                                 f"declared {dims}, dynamic model {list(want.shape)}")
        diff = float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        # The same graph and kernels: equal up to the reassociation a fixed shape may let
        # onnxruntime's optimizer choose (a few units in the last place of the output's range).
        if diff > 64 * np.finfo(np.float32).eps * max(scale, 1e-30):
            raise SelfCheckError(f"--static: output '{name}' differs from the dynamic model's at {height}x{width} "
                                 f"by {diff:.3g} (of a range {scale:.3g})")
        rows.append({"name": name, "shape": list(have.shape), "max_abs_diff": diff})
    return {"size": [height, width], "batch": int(x.shape[0]), "outputs": rows}


def deploy_shapes(image: ImageInput, geo: Geometry, dims: list[int | str], opt_size: tuple[int, int] | None = None,
                  max_size: tuple[int, int] | None = None, batch: int = 1,
                  static: tuple[int, int] | None = None) -> dict[str, Any]:
    """The shapes deployers type: the minimum input (one window), the size lattice, a TensorRT
    optimization profile (min = the window's minimum, opt = ``opt_size`` or twice the window,
    max = ``max_size`` or four times the window), OpenVINO's partial shape and onnxruntime's
    free-dimension overrides for the optimum, by the names ``dims`` (the converted input's,
    ``shapes.input_dims``) gives them. A ``static`` model takes its one size: min, opt and max are it."""
    mh, mw = geo.min_size()
    if static is not None:
        mh, mw = static
        opt_size = max_size = static
    opt = geo.next_size(*(opt_size or (2 * geo.window[0], 2 * geo.window[1])))
    mx = geo.next_size(*(max_size or (4 * geo.window[0], 4 * geo.window[1])))
    for what, (h, w) in (("--opt-size", opt), ("--max-size", mx)):
        check_static_size(geo, h, w, what)
    if mx[0] < opt[0] or mx[1] < opt[1]:
        raise OnnxFcnError(f"--max-size {mx[0]}x{mx[1]} is smaller than the optimum {opt[0]}x{opt[1]}")

    def shape(h: int, w: int) -> str:
        return "x".join(str(d) for d in image.shape_at(batch, h, w))

    name = image.name
    lattice = [lattice_text(geo.lattice[0]), lattice_text(geo.lattice[1])]
    h_range, w_range = f"{mh}..{mx[0]}", f"{mw}..{mx[1]}"
    partial = image.shape_at(batch, 0, 0)
    ov = ",".join(h_range if k == image.axes[2] else w_range if k == image.axes[3] else str(d)
                  for k, d in enumerate(partial))
    return {
        "min_input": [mh, mw], "sizes": lattice, "opt_input": list(opt), "max_input": list(mx),
        "output_grid": {"min": list(geo.grid(mh, mw)), "opt": list(geo.grid(*opt)), "max": list(geo.grid(*mx))},
        "trtexec": f"--minShapes={name}:{shape(mh, mw)} --optShapes={name}:{shape(*opt)} "
                   f"--maxShapes={name}:{shape(*mx)}",
        "openvino": f"{name}[{ov}]",
        "onnxruntime_free_dimension_overrides": {
            str(name): value for name, value in ((dims[image.axes[2]], opt[0]), (dims[image.axes[3]], opt[1]),
                                                 (dims[0], batch)) if isinstance(name, str)},
    }
