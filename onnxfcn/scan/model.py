"""``ScanModel``: a converted model as scan needs it, read from its metadata (``metadata.py``):
what to load, what its cells mean, its input and score map output, and how to feed it."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import helper, shape_inference

from ..errors import InvalidConversionError, OnnxFcnError
from ..geometry import Lattice
from ..graph import skeleton, tensor_nbytes
from ..io import load_model
from ..metadata import ConversionMetadata
from ..preprocess import Preprocess
from ..runtime import estimate_memory
from ..shapes import classes_of, score_axes

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ScanModel:
    """A converted model, as scan needs it: what to load, and what its cells mean."""

    source: str | bytes  # a path, or the serialized model (what a session, or a Dask worker, loads)
    window: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    receptive_field: tuple[int, int]  # what one cell depends on (a tile must hold it)
    field_start: tuple[int, int]  # where cell (0, 0)'s receptive field begins
    mode: str
    exact: bool
    global_context: bool
    input_name: str
    layout: str  # NCHW or NHWC
    channels: int
    dtype: str
    output_name: str
    axes: tuple[int, int, int]  # the output's class, height and width axes
    labels: tuple[str, ...] | None
    preprocess: Preprocess
    weight_bytes: int
    classes: int | None
    lattice: tuple[Lattice, Lattice]  # the input sizes the model runs at (geometry.lattice)
    mpp: float | None  # the micrometres per pixel it was trained at (convert --mpp): a pyramid's level is chosen by it
    shapes: onnx.ModelProto = field(repr=False, compare=False)  # the graph without its weights
    _grids: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, model: str | os.PathLike[str] | onnx.ModelProto, output: str | None = None) -> ScanModel:
        """Read a model written by ``onnxfcn convert``; refuse anything else with one line."""
        proto, _ = load_model(model, weights=False)  # a file's weights: read by onnxruntime alone
        meta = ConversionMetadata.read(proto)
        if meta is None:
            raise InvalidConversionError("scan needs a model written by onnxfcn convert (no onnxfcn metadata)")
        if meta.static is not None:
            raise InvalidConversionError(
                f"the model was converted with --static {meta.static[0]}x{meta.static[1]} and takes that size only; "
                "scan runs tiles of other sizes: give it a conversion without --static")
        start, rf = meta.tile_field()
        name, layout, channels, dtype = _image_input(proto, meta)
        out_name, axes, classes = _score_output(proto, output)
        source: str | bytes = os.fspath(model) if isinstance(model, (str, os.PathLike)) else proto.SerializeToString()
        return cls(source=source, window=meta.window, stride=meta.stride, offset=meta.offset, receptive_field=rf,
                   field_start=start, mode=meta.mode, exact=meta.exact, global_context=meta.global_context,
                   input_name=name, layout=layout, channels=channels, dtype=dtype, output_name=out_name, axes=axes,
                   labels=meta.labels, preprocess=meta.preprocess or Preprocess(),
                   weight_bytes=sum(tensor_nbytes(t) for t in proto.graph.initializer), classes=classes,
                   lattice=meta.sizes, mpp=meta.mpp, shapes=skeleton(proto, {}))

    def with_labels(self, labels: Sequence[str]) -> ScanModel:
        """This model with other class names (scan's ``--labels``): one per class."""
        if self.classes is not None and len(labels) != self.classes:
            raise OnnxFcnError(f"{len(labels)} labels for {self.classes} classes: give one label per class")
        return replace(self, labels=tuple(labels), _grids={})

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Output cells at this input size (shape inference on the converted graph)."""
        if (height, width) not in self._grids:
            self._grids[height, width] = _grid(self, height, width)
        return self._grids[height, width]

    def box(self, i: int, j: int, height: int, width: int) -> list[int]:
        """Cell (i, j)'s window in input pixels, [x0, y0, x1, y1], clipped to the image."""
        (oy, ox), (wh, ww) = ((self.offset, self.window) if self.mode == "window"
                              else (self.field_start, self.receptive_field))
        y0, x0 = oy + i * self.stride[0], ox + j * self.stride[1]
        return [max(x0, 0), max(y0, 0), min(x0 + ww, width), min(y0 + wh, height)]

    def centres(self, axis: int, n: int) -> np.ndarray:
        """Centres of the first ``n`` cells' windows along an axis, in input pixels."""
        o, w = ((self.offset[axis], self.window[axis]) if self.mode == "window"
                else (self.field_start[axis], self.receptive_field[axis]))
        return o + w / 2 + np.arange(n) * self.stride[axis]

    def input_shape(self, height: int, width: int) -> list[int]:
        return [1, self.channels, height, width] if self.layout == "NCHW" else [1, height, width, self.channels]

    def estimate(self, height: int, width: int) -> int:
        """Bytes one untiled run at this size needs, roughly (``runtime.estimate_memory``)."""
        return self.weight_bytes + estimate_memory(self.shapes, self.input_name, self.input_shape(height, width))

    def class_index(self, value: str | int) -> int:
        """A class given by index or by label."""
        if isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit()):
            k = int(value)
            if k < 0 or (self.classes is not None and k >= self.classes):
                raise OnnxFcnError(f"class {k}: the model has classes 0..{(self.classes or 1) - 1}")
            return k
        if self.labels and value in self.labels:
            return self.labels.index(value)
        raise OnnxFcnError(f"class {value!r}: not an index, and not one of the model's labels"
                           + ("" if self.labels else " (the model has none)"))


def _image_input(model: onnx.ModelProto, meta: ConversionMetadata) -> tuple[str, str, int, str]:
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    name = meta.input or (inputs[0].name if inputs else "")
    vi = next((v for v in inputs if v.name == name), None)
    if vi is None:
        raise InvalidConversionError(f"metadata onnxfcn.input names '{name}', which is not an input of the model")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise InvalidConversionError(f"the image input '{name}' has rank {len(dims)}, not 4")
    layout = meta.input_layout or ("NCHW" if dims[1] is not None and dims[3] is None else "NHWC")
    channels = dims[1] if layout == "NCHW" else dims[3]
    if not channels:
        raise InvalidConversionError(f"the image input '{name}' has no fixed channel count")
    elem = vi.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name
    except (KeyError, ValueError, TypeError):
        raise InvalidConversionError(f"the image input '{name}' has element type {elem}, which is not a tensor "
                                     "type numpy and onnxruntime know") from None
    return name, layout, int(channels), dtype


def _score_output(model: onnx.ModelProto, wanted: str | None) -> tuple[str, tuple[int, int, int], int | None]:
    """The output of class scores, N x K x out_h x out_w in some order: its name, its K, h, w
    axes, and K where the graph states it."""
    found: list[tuple[onnx.ValueInfoProto, tuple[int, int, int]]] = []
    unnamed: list[tuple[onnx.ValueInfoProto, tuple[int, int, int]]] = []
    for out in model.graph.output:
        axes = score_axes(out)
        if axes is not None:
            found.append((out, axes))
        elif len(out.type.tensor_type.shape.dim) == 4:  # dims renamed by another tool: N x K x h x w
            unnamed.append((out, (1, 2, 3)))
    if wanted is not None:
        chosen = next(((o, a) for o, a in found + unnamed if o.name == wanted), None)
        if chosen is None:
            raise OnnxFcnError(f"--output {wanted!r}: not a score map output of the model "
                               f"({', '.join(o.name for o, _ in found + unnamed) or 'none'})")
    elif found or unnamed:
        chosen = (found or unnamed)[0]
    else:
        raise InvalidConversionError("the model has no four-dimensional score map output")
    out, axes = chosen
    return out.name, axes, classes_of(out, axes[0])


def _grid(model: ScanModel, height: int, width: int) -> tuple[int, int]:
    try:
        inferred = shape_inference.infer_shapes(
            skeleton(model.shapes, {model.input_name: model.input_shape(height, width)}), strict_mode=False)
        out = next(o for o in inferred.graph.output if o.name == model.output_name)
        dims = out.type.tensor_type.shape.dim
        _, h, w = model.axes
        if dims[h].HasField("dim_value") and dims[w].HasField("dim_value"):
            return int(dims[h].dim_value), int(dims[w].dim_value)
    except Exception as exc:  # shape inference raises several types; the run itself will say
        log.info("shape inference gave no output grid: %s", exc)
    # Stride-aligned trunks: the window fits floor((X - window) / stride) + 1 times.
    return ((height - model.window[0]) // model.stride[0] + 1, (width - model.window[1]) // model.stride[1] + 1)
