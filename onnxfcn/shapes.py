"""Shapes of the converted model: named dynamic input and output dims, no stale value_info."""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from .head import ImageInput
from .rewrite import Mapped

BATCH, HEIGHT, WIDTH = "batch", "height", "width"
OUT_H, OUT_W = "out_height", "out_width"


def _set_dims(vi: onnx.ValueInfoProto, dims: Sequence[int | str | None]) -> None:
    shape = vi.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d


def input_dims(model: onnx.ModelProto, image: ImageInput) -> list[int | str]:
    """The converted image input's dims: the exporter's names for batch, height and width where it
    gave them (else ``batch``, ``height``, ``width``), the channel count fixed."""
    vi = next(v for v in model.graph.input if v.name == image.name)
    old = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
    names: list[int | str] = [old[k] if isinstance(old[k], str) and old[k] else default  # type: ignore[misc]
                              for k, default in enumerate([BATCH, None, HEIGHT, WIDTH] if image.layout == "NCHW"
                                                          else [BATCH, HEIGHT, WIDTH, None])]
    names[1 if image.layout == "NCHW" else 3] = image.channels
    return names


def make_dynamic(model: onnx.ModelProto, image: ImageInput, outputs: dict[str, Mapped],
                 channels: dict[str, int | None]) -> None:
    """Batch, height and width become named dims; outputs become N x K x out_h x out_w."""
    g = model.graph
    names = input_dims(model, image)
    for vi in g.input:
        if vi.name == image.name:
            _set_dims(vi, names)
    batch = next(
        (d.dim_param for vi in g.input if vi.name == image.name for d in vi.type.tensor_type.shape.dim[:1]), BATCH
    ) or BATCH
    for out in g.output:
        m = outputs.get(out.name)
        if m is None:
            # Not a head output (a feature map, say): its spatial size now varies; keep only the rank.
            rank = len(out.type.tensor_type.shape.dim)
            _set_dims(out, [None] * rank)
            continue
        if m.layout is None:  # ArgMax/ArgMin with keepdims=0: N x out_h x out_w
            _set_dims(out, [batch, OUT_H, OUT_W])
            continue
        dims: list[int | str | None] = [None, None, None, None]
        dims[m.layout[0]] = batch
        dims[m.layout[1]] = channels.get(out.name)
        dims[m.layout[2]] = OUT_H
        dims[m.layout[3]] = OUT_W
        _set_dims(out, dims)
    # Every intermediate shape was recorded at the reference size and is stale now.
    del g.value_info[:]


def score_axes(out: onnx.ValueInfoProto) -> tuple[int, int, int] | None:
    """A score map output's class, out_height and out_width axes, from the names ``make_dynamic``
    gives its dims (None: not a 4-D output with those names)."""
    params = [d.dim_param for d in out.type.tensor_type.shape.dim]
    if len(params) != 4 or OUT_H not in params or OUT_W not in params:
        return None
    h, w = params.index(OUT_H), params.index(OUT_W)
    return next(a for a in (1, 2, 3) if a not in (h, w)), h, w


def classes_of(out: onnx.ValueInfoProto, class_axis: int) -> int | None:
    dim = out.type.tensor_type.shape.dim[class_axis]
    return int(dim.dim_value) if dim.HasField("dim_value") else None


def class_count(model: onnx.ModelProto) -> int | None:
    """Classes of the first score map output (the dim beside batch, out_height and out_width)."""
    for out in model.graph.output:
        axes = score_axes(out)
        if axes is not None:
            return classes_of(out, axes[0])
    return None
