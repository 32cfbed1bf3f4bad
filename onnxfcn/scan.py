"""``scan``: run a converted model on an image of any size and say where the classes are.

The converted model's metadata says what a cell means: cell (i, j) scores the window at
``offset + (i, j) * stride`` of size ``window`` (dense mode: the cell's receptive field). Scan
reads an image file (preprocessed with the metadata's ``scale``/``mean``/``std``/``channels``)
or a ``.npy`` array (the model input as it is), runs the model once, or in tiles, and returns
the score maps, the best cells with their boxes and labels, and a picture (``picture.py``).

Tiles are aligned to the stride, so a tile's cells are the image's cells shifted by a whole
number of cells, and they overlap by what a cell depends on: cell i reads the input rows
``field_start + i * stride`` to ``+ receptive_field`` (the window itself for exact models). A
tile keeps only the cells whose field lies inside it, or crosses only the image's own border;
those see the same pixels and the same zero padding as in one pass, so the stitched map equals
the untiled one up to float rounding. A global pool inside the trunk (squeeze-excitation) sees
the whole image: there tiles change the result, and the report says so.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import helper, shape_inference

from .errors import InvalidConversionError, OnnxFcnError, ResourceError
from .geometry import WHOLE_IMAGE, Lattice, check_on_lattice
from .graph import skeleton, tensor_nbytes
from .io import atomic_path, commit, load_model, temp_beside, write_text_atomic
from .plan import meta_pair, parse_sizes, read_metadata
from .preprocess import IMAGE_SUFFIXES, Preprocess, labels_from_metadata, read_image
from .runtime import (
    available_memory,
    estimate_memory,
    human_bytes,
    make_session,
    release_free_memory,
    resource_error,
)
from .shapes import classes_of, score_axes

log = logging.getLogger(__name__)

__all__ = ["Cell", "ScanModel", "ScanResult", "open_input", "scan"]

Progress = Callable[[int, int], None]
INPUT_SUFFIXES = (*IMAGE_SUFFIXES, ".npy")
# Auto-tiling: the untiled run may take this share of the memory available.
_MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class ScanModel:
    """A converted model, as scan needs it: what to load, and what its cells mean."""

    source: str | bytes  # a path, or the serialized model (what a session, or a Dask worker, loads)
    window: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    receptive_field: tuple[int, int]
    field_start: tuple[int, int]
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
    lattice: tuple[Lattice, Lattice]  # the input sizes the model runs at (geometry.Lattice)
    shapes: onnx.ModelProto = field(repr=False, compare=False)  # the graph without its weights
    _grids: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, model: str | os.PathLike[str] | onnx.ModelProto, output: str | None = None) -> ScanModel:
        """Read a model written by ``onnxfcn convert``; refuse anything else with one line."""
        proto, _ = load_model(model, weights=False)  # a file's weights: read by onnxruntime alone
        meta = read_metadata(proto)
        if not meta.get("mode"):
            raise InvalidConversionError("scan needs a model written by onnxfcn convert (no onnxfcn metadata)")
        window, stride = meta_pair(meta, "window", 1), meta_pair(meta, "stride", 1)
        rf = meta_pair(meta, "receptive_field", 1)
        offset = meta_pair(meta, "offset", None) if "offset" in meta else (0, 0)
        if "receptive_field_start" in meta:
            start = meta_pair(meta, "receptive_field_start", None)
        elif meta["mode"] == "dense":  # files from before the key: a dense cell's field is at the offset
            start = offset
        else:  # ... a window cell's field of rf holds its window, so it lies within rf - window of it
            start = (offset[0] - (rf[0] - window[0]), offset[1] - (rf[1] - window[1]))
            rf = (2 * rf[0] - window[0], 2 * rf[1] - window[1])
        global_context = meta.get("global_context", "true" if WHOLE_IMAGE in meta.get("reasons", "")
                                  else "false") == "true"
        name, layout, channels, dtype = _image_input(proto, meta)
        out_name, axes, classes = _score_output(proto, output)
        labels = labels_from_metadata(meta)
        source: str | bytes = os.fspath(model) if isinstance(model, (str, os.PathLike)) else proto.SerializeToString()
        weights = sum(tensor_nbytes(t) for t in proto.graph.initializer)
        return cls(source, window, stride, offset, rf, start, meta["mode"], meta.get("exact") == "true",
                   global_context, name, layout, channels, dtype, out_name, axes,
                   tuple(labels) if labels else None, Preprocess.from_metadata(meta), weights, classes,
                   parse_sizes(meta.get("sizes", "any")), skeleton(proto, {}))

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

    def estimate(self, height: int, width: int) -> int:
        """Bytes one untiled run at this size needs, roughly (``runtime.estimate_memory``)."""
        shape = [1, self.channels, height, width] if self.layout == "NCHW" else [1, height, width, self.channels]
        return self.weight_bytes + estimate_memory(self.shapes, self.input_name, shape)

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


def _image_input(model: onnx.ModelProto, meta: dict[str, str]) -> tuple[str, str, int, str]:
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    name = meta.get("input") or (inputs[0].name if inputs else "")
    vi = next((v for v in inputs if v.name == name), None)
    if vi is None:
        raise InvalidConversionError(f"metadata onnxfcn.input names '{name}', which is not an input of the model")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise InvalidConversionError(f"the image input '{name}' has rank {len(dims)}, not 4")
    layout = meta.get("input_layout") or ("NCHW" if dims[1] is not None and dims[3] is None else "NHWC")
    if layout not in ("NCHW", "NHWC"):
        raise InvalidConversionError(f"metadata onnxfcn.input_layout is {layout!r}, not NCHW or NHWC")
    channels = dims[1] if layout == "NCHW" else dims[3]
    if not channels:
        raise InvalidConversionError(f"the image input '{name}' has no fixed channel count")
    elem = vi.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
    return name, layout, int(channels), np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name


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
    shape = [1, model.channels, height, width] if model.layout == "NCHW" else [1, height, width, model.channels]
    try:
        inferred = shape_inference.infer_shapes(skeleton(model.shapes, {model.input_name: shape}), strict_mode=False)
        out = next(o for o in inferred.graph.output if o.name == model.output_name)
        dims = out.type.tensor_type.shape.dim
        _, h, w = model.axes
        if dims[h].HasField("dim_value") and dims[w].HasField("dim_value"):
            return int(dims[h].dim_value), int(dims[w].dim_value)
    except Exception as exc:  # shape inference raises several types; the run itself will say
        log.info("shape inference gave no output grid: %s", exc)
    # Stride-aligned trunks: the window fits floor((X - window) / stride) + 1 times.
    return ((height - model.window[0]) // model.stride[0] + 1, (width - model.window[1]) // model.stride[1] + 1)


# ---------------------------------------------------------------------------------------------
# Inputs


class Source(Protocol):
    """An input to scan: model values read a region at a time, and a picture of it."""

    name: str

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Model input values of rows y0:y1 and columns x0:x1, H x W x C float32."""
        ...

    def display(self) -> np.ndarray:
        """The input as H x W x 3 uint8, for the picture."""
        ...


@dataclass
class PixelSource:
    """An image file's pixels, preprocessed region by region."""

    name: str
    pixels: np.ndarray  # H x W x C uint8
    preprocess: Preprocess

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.preprocess.apply(self.pixels[y0:y1, x0:x1])

    def display(self) -> np.ndarray:
        p = self.pixels
        return np.repeat(p, 3, axis=2) if p.shape[2] == 1 else np.ascontiguousarray(p[:, :, :3])


@dataclass
class ArraySource:
    """Model input values as they are: an array in memory, or a ``.npy`` file mapped a region at a time."""

    name: str
    array: np.ndarray | None  # H x W x C (a view); None: read from ``path``
    order: str  # the stored order: HW, HWC or CHW
    shape: tuple[int, int]
    path: str | None = None

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    def _stored(self) -> np.ndarray:
        if self.array is not None:
            return self.array
        assert self.path is not None
        # Mapped anew for each region and dropped after: only the region's pages are ever resident.
        return np.load(self.path, mmap_mode="r", allow_pickle=False)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        a = self._stored()
        if self.order == "HW":
            region = a[y0:y1, x0:x1, None]
        elif self.order == "CHW":
            region = a[:, y0:y1, x0:x1].transpose(1, 2, 0)
        else:
            region = a[y0:y1, x0:x1]
        out = np.array(region, dtype=np.float32)
        if not np.isfinite(out).all():
            raise OnnxFcnError(f"{self.name}: the array holds NaN or infinite values")
        return out

    def display(self) -> np.ndarray:
        x = self.read(0, self.height, 0, self.width)
        x = x[:, :, :3] if x.shape[2] >= 3 else x[:, :, :1]
        lo, hi = (float(v) for v in np.percentile(x, [1, 99]))
        hi = hi if hi > lo else lo + 1.0
        g = np.clip((x - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(g, 3, axis=2) if g.shape[2] == 1 else g


def _array_order(shape: Sequence[int], channels: int, name: str) -> tuple[str, tuple[int, int]]:
    if len(shape) == 2:
        if channels != 1:
            raise OnnxFcnError(f"{name}: a 2-D array is one channel; the model reads {channels}")
        return "HW", (int(shape[0]), int(shape[1]))
    if len(shape) == 3:
        last, first = shape[2] == channels, shape[0] == channels
        if last and not first:
            return "HWC", (int(shape[0]), int(shape[1]))
        if first and not last:
            return "CHW", (int(shape[1]), int(shape[2]))
        if last and first:
            raise OnnxFcnError(f"{name}: shape {tuple(shape)} is ambiguous between H x W x C and C x H x W")
    raise OnnxFcnError(f"{name}: shape {tuple(shape)} is not H x W, H x W x {channels} or {channels} x H x W "
                       "(the model input as it is)")


def open_input(item: str | os.PathLike[str] | np.ndarray, model: ScanModel, preprocess: Preprocess | None = None,
               name: str | None = None) -> Source:
    """An image file, a ``.npy`` file or an array in memory (model values: H x W, H x W x C, C x H x W)."""
    pre = preprocess or model.preprocess
    if isinstance(item, np.ndarray):
        order, hw = _array_order(item.shape, model.channels, name or "array")
        return ArraySource(name or "array", item, order, hw)
    path = Path(item)
    label = name or path.stem
    if not path.is_file():
        raise OnnxFcnError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise OnnxFcnError(f"{path}: not a readable .npy file: {exc}") from None
        if arr.dtype.kind not in "fiub":
            raise OnnxFcnError(f"{path}: dtype {arr.dtype} is not numeric")
        order, hw = _array_order(arr.shape, model.channels, str(path))
        del arr
        return ArraySource(label, None, order, hw, str(path))
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise OnnxFcnError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}) or a .npy array")
    pre.check(model.channels)
    return PixelSource(label, read_image(path, model.channels), pre)


def list_inputs(items: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files and folders (their image and .npy files, not recursive), in order; names must not repeat."""
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in INPUT_SUFFIXES)
            if not found:
                raise OnnxFcnError(f"{p}: no image or .npy files in the folder")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise OnnxFcnError(f"{p}: no such file or folder")
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise OnnxFcnError(f"{seen[f.stem]} and {f} would write the same outputs ({f.stem}.*); rename one")
        seen[f.stem] = f
    return files


# ---------------------------------------------------------------------------------------------
# Tiles


@dataclass(frozen=True)
class Tile:
    """Input rows y0:y1, columns x0:x1; it gives the image's cells rows i0:i1, columns j0:j1."""

    y0: int
    y1: int
    x0: int
    x1: int
    i0: int
    i1: int
    j0: int
    j1: int
    last_row: bool = False  # holds the image's last row of cells (and reaches its bottom edge)
    last_col: bool = False


def _axis_tiles(n: int, cells: int, s: int, start: int, span: int, tile: int,
                period: int = 1) -> list[tuple[int, int, int, int]]:
    """Split one axis: (input a, b, cells c0, c1) with a a multiple of the stride, and every kept
    cell's field [start + c*s, + span) inside [a, b) or crossing only the image's own edge.
    ``period``: the model runs only at sizes n + k * period (its size lattice)."""
    q = math.lcm(s, period)
    per = max(1, (tile - span) // s + 1)
    out = []
    for c0 in range(0, cells, per):
        c1 = min(cells, c0 + per)
        lo, hi = start + c0 * s, start + (c1 - 1) * s + span
        a = 0 if lo <= 0 else lo // q * q
        if hi >= n or c1 == cells:  # the last cells' tile reaches the edge, where a cell more would show
            b = n
        else:
            # A length congruent to the image's modulo the stride (and the lattice's period): SAME
            # padding, whose amount depends on the size, then pads the tile as it pads the image,
            # and a model that runs only at some sizes runs at the tile's.
            b = min(n, hi + (n - hi) % q)
        out.append((a, b, c0, c1))
    return out


def plan_tiles(model: ScanModel, height: int, width: int, tile: int) -> list[Tile]:
    """Stride-aligned tiles of about ``tile`` x ``tile`` input pixels covering every cell once."""
    gh, gw = model.grid(height, width)
    spans = model.receptive_field
    if tile < max(spans):
        raise OnnxFcnError(f"--tile {tile} is smaller than what one cell depends on ({spans[0]}x{spans[1]} px: "
                           f"the {'window' if model.exact else 'receptive field'}); use at least {max(spans)}")
    rows = _axis_tiles(height, gh, model.stride[0], model.field_start[0], spans[0], tile, model.lattice[0][0])
    cols = _axis_tiles(width, gw, model.stride[1], model.field_start[1], spans[1], tile, model.lattice[1][0])
    return [Tile(a, b, c, d, i0, i1, j0, j1, i1 == gh, j1 == gw) for a, b, i0, i1 in rows for c, d, j0, j1 in cols]


# ---------------------------------------------------------------------------------------------
# Running


class Runner:
    """One onnxruntime session of a converted model, loaded once and run on regions of inputs."""

    def __init__(self, model: ScanModel, provider: str = "cpu") -> None:
        self.model = model
        self.session = make_session(model.source, provider, arena=False)

    def run(self, x: np.ndarray) -> np.ndarray:
        """H x W x C model values -> K x out_h x out_w float32 scores."""
        m = self.model
        feed = (x.transpose(2, 0, 1) if m.layout == "NCHW" else x)[None].astype(m.dtype, copy=False)
        try:
            y = self.session.run([m.output_name], {m.input_name: np.ascontiguousarray(feed)})[0]
        except Exception as exc:  # onnxruntime raises several types
            oom = resource_error(exc, f"input {x.shape[0]}x{x.shape[1]}")
            if oom is not None:
                raise oom from None
            raise OnnxFcnError(f"the model failed on a {x.shape[0]}x{x.shape[1]} input: "
                               f"{str(exc).strip().splitlines()[0]}") from None
        k, h, w = m.axes
        return np.ascontiguousarray(y[0].transpose(k - 1, h - 1, w - 1), dtype=np.float32)

    def run_tile(self, source: Source, t: Tile) -> np.ndarray:
        """The kept cells of one tile, K x (i1 - i0) x (j1 - j0)."""
        return self.run_region(source.read(t.y0, t.y1, t.x0, t.x1), t)

    def run_region(self, x: np.ndarray, t: Tile) -> np.ndarray:
        """The kept cells of tile ``t``, whose input values (H x W x C) are ``x``."""
        kept = self.keep(self.run(x), t).copy()
        release_free_memory()  # tiles of a few sizes, run after one another: keep the peak a tile's
        return kept

    def keep(self, y: np.ndarray, t: Tile) -> np.ndarray:
        """Of a tile's output, the cells it keeps: its first cell is the image's (y0, x0) / stride."""
        di, dj = t.i0 - t.y0 // self.model.stride[0], t.j0 - t.x0 // self.model.stride[1]
        hi, wj = di + t.i1 - t.i0, dj + t.j1 - t.j0
        # Fewer cells than planned, or cells past the image's last (a grid shape inference got
        # wrong): never stitched silently.
        if y.shape[1] < hi or y.shape[2] < wj or (t.last_row and y.shape[1] > hi) or (t.last_col and y.shape[2] > wj):
            raise OnnxFcnError(f"a tile at rows {t.y0}:{t.y1}, columns {t.x0}:{t.x1} gave {y.shape[1]}x{y.shape[2]} "
                               f"cells where {hi}x{wj} were planned: the model's grid is not the one its shapes "
                               "give; scan it without --tile")
        return y[:, di:hi, dj:wj]


def softmax(scores: np.ndarray) -> np.ndarray:
    """Over the class axis (0), in float64 for the sums."""
    z = scores.astype(np.float64) - scores.max(axis=0, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


@dataclass
class Cell:
    row: int
    col: int
    box: list[int]  # x0, y0, x1, y1 in input pixels
    cls: int
    label: str | None
    score: float

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"row": self.row, "col": self.col, "box": self.box, "class": self.cls}
        if self.label is not None:
            d["label"] = self.label
        d["score"] = self.score
        return d


@dataclass
class ScanResult:
    """What scan found in one input; ``scores`` is K x out_h x out_w, as the model returned it."""

    name: str
    size: tuple[int, int]
    grid: tuple[int, int]
    model: ScanModel
    scores: np.ndarray
    best: np.ndarray  # out_h x out_w: each cell's best score (after softmax, with it)
    best_class: np.ndarray  # out_h x out_w
    class_max: np.ndarray  # K: each class's best score over the cells
    cells: list[Cell]
    tiles: int
    tiles_exact: bool  # tiling left every cell as one pass computes it (up to float rounding)
    softmax: bool
    seconds: float
    source: Source | None = field(default=None, repr=False)

    def label(self, k: int) -> str | None:
        labels = self.model.labels
        return labels[k] if labels and 0 <= k < len(labels) else None

    def best_overall(self) -> int:
        return int(np.argmax(self.class_max))

    def class_map(self, k: int) -> np.ndarray:
        """One class's map (after softmax, with it), out_h x out_w."""
        if not 0 <= k < self.scores.shape[0]:
            raise OnnxFcnError(f"class {k}: the model has classes 0..{self.scores.shape[0] - 1}")
        m = np.array(self.scores[k], dtype=np.float32)
        if self.softmax:
            # Softmax of one class needs every class: one row of cells at a time keeps it small.
            m = np.stack([softmax(np.asarray(self.scores[:, r]))[k] for r in range(self.grid[0])])
        return m

    def to_dict(self) -> dict[str, Any]:
        m = self.model
        return {
            "name": self.name, "size": list(self.size), "grid": list(self.grid),
            "window": list(m.window), "stride": list(m.stride), "offset": list(m.offset),
            "mode": m.mode, "exact": m.exact, "classes": int(self.scores.shape[0]),
            "score": "softmax" if self.softmax else "raw",
            "tiles": self.tiles, "tiles_exact": self.tiles_exact,
            "cells": [c.to_dict() for c in self.cells],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def save_png(self, path: str | os.PathLike[str], cls: int | str | None = None, display_scale: float = 1.0) -> int:
        """Draw one class's map (default: the best class overall) over the input; returns the class."""
        from .picture import render

        if self.source is None:
            raise OnnxFcnError("this result has no input to draw on")
        k = self.best_overall() if cls is None else self.model.class_index(cls)
        img = render(self, k, display_scale)
        with atomic_path(path) as tmp:
            img.save(tmp, format="PNG")
        return k


def select_cells(model: ScanModel, best: np.ndarray, best_class: np.ndarray, size: tuple[int, int],
                 top: int | None, threshold: float | None) -> list[Cell]:
    """The best cells, in descending score order: every cell >= ``threshold`` (at most ``top``), or the ``top``."""
    flat = best.ravel()
    order = np.argsort(-flat, kind="stable")
    if threshold is not None:
        order = order[flat[order] >= threshold]
    if top is not None:
        order = order[:top]
    w = best.shape[1]
    cells = []
    for idx in order:
        i, j = divmod(int(idx), w)
        k = int(best_class[i, j])
        label = model.labels[k] if model.labels and k < len(model.labels) else None
        cells.append(Cell(i, j, model.box(i, j, *size), k, label, float(flat[idx])))
    return cells


@dataclass(frozen=True)
class ScanOptions:
    """How to scan: which cells to keep, tiles, memory, provider."""

    top: int | None = 5
    threshold: float | None = None
    softmax: bool = False
    tile: int | None = None  # None: one pass, or tiles when one pass would not fit in memory
    max_memory: int | None = None
    provider: str = "cpu"

    def __post_init__(self) -> None:
        if self.top is not None and self.top < 0:
            raise OnnxFcnError("--top must be at least 0")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise OnnxFcnError("--threshold must be a finite number")
        if self.tile is not None and self.tile < 1:
            raise OnnxFcnError("--tile must be a positive number of pixels")


def choose_tile(model: ScanModel, height: int, width: int, opts: ScanOptions) -> int | None:
    """``opts.tile``; else None when one pass fits, or the largest square tile that fits."""
    if opts.tile is not None:
        return opts.tile
    limit = int((opts.max_memory if opts.max_memory is not None else available_memory()) * _MEMORY_SHARE)
    need = model.estimate(height, width)
    if need <= limit:
        return None
    span = max(model.receptive_field)
    side = max(height, width)
    while side > span and model.estimate(min(side, height), min(side, width)) > limit:
        side = max(span, side * 3 // 4)
    if model.estimate(min(side, height), min(side, width)) > limit:
        raise ResourceError(f"even one {side}x{side} tile needs about {human_bytes(model.estimate(side, side))}, "
                            f"more than half the {human_bytes(limit * 2)} available")
    log.info("one pass at %dx%d needs about %s; tiles of %d px", height, width, human_bytes(need), side)
    return side


def scan_source(runner: Runner | None, model: ScanModel, source: Source, opts: ScanOptions,
                progress: Progress | None = None,
                scores_for: Callable[[tuple[int, int, int]], ScoresFile] | None = None,
                tiles_run: Callable[[list[Tile]], Iterator[tuple[Tile, np.ndarray]]] | None = None) -> ScanResult:
    """Scan one input with ``runner``. Tiled: ``scores_for(shape)`` gives where to put the
    K x out_h x out_w map (a file mapping, say), and ``tiles_run`` runs the tiles elsewhere (Dask),
    yielding each tile's kept cells."""
    t0 = time.perf_counter()
    m = model
    h, w = source.height, source.width
    check_on_lattice(h, w, m.lattice, f"{source.name}: the input size")
    gh, gw = m.grid(h, w)
    if gh < 1 or gw < 1:
        raise OnnxFcnError(f"{source.name}: the input is {h}x{w}, smaller than the model's {m.window[0]}x"
                           f"{m.window[1]} window: no cell fits")
    tile = choose_tile(m, h, w, opts)
    scores: np.ndarray | ScoresFile | None = None
    if tile is None and tiles_run is None:
        assert runner is not None
        first = runner.run(source.read(0, h, 0, w))  # one pass: its own grid is the grid
        gh, gw = first.shape[1:]
        tiles, done_first = [Tile(0, h, 0, w, 0, gh, 0, gw)], first
    else:
        tiles, done_first = plan_tiles(m, h, w, tile if tile is not None else max(h, w)), None
    best = np.full((gh, gw), -np.inf, dtype=np.float32)
    best_class = np.zeros((gh, gw), dtype=np.int32)
    class_max: np.ndarray | None = None
    if done_first is not None:
        runs: Iterator[tuple[Tile, np.ndarray]] = iter([(tiles[0], done_first)])
    elif tiles_run is not None:
        runs = tiles_run(tiles)
    else:
        assert runner is not None
        runs = ((t, runner.run_tile(source, t)) for t in tiles)
    for done, (t, block) in enumerate(runs, 1):
        if done_first is not None:
            scores = block
        else:
            if scores is None:
                shape = (block.shape[0], gh, gw)
                scores = scores_for(shape) if scores_for is not None else np.empty(shape, dtype=np.float32)
            scores[:, t.i0:t.i1, t.j0:t.j1] = block
        if opts.softmax:
            block = softmax(block)
        best[t.i0:t.i1, t.j0:t.j1] = block.max(axis=0)
        best_class[t.i0:t.i1, t.j0:t.j1] = block.argmax(axis=0)
        cm = block.reshape(block.shape[0], -1).max(axis=1)
        class_max = cm if class_max is None else np.maximum(class_max, cm)
        if progress is not None:
            progress(done, len(tiles))
    assert scores is not None and class_max is not None
    if isinstance(scores, ScoresFile):
        scores = scores.read()
    if m.labels is not None and len(m.labels) != scores.shape[0]:
        log.warning("the model has %d labels for %d classes", len(m.labels), scores.shape[0])
    cells = select_cells(m, best, best_class, (h, w), opts.top, opts.threshold)
    return ScanResult(source.name, (h, w), (gh, gw), m, scores, best, best_class, class_max, cells, len(tiles),
                      len(tiles) == 1 or not m.global_context, opts.softmax, time.perf_counter() - t0, source)


def scan(model: str | os.PathLike[str] | onnx.ModelProto | ScanModel, image: str | os.PathLike[str] | np.ndarray, *,
         top: int | None = 5, threshold: float | None = None, softmax: bool = False, tile: int | None = None,
         preprocess: Preprocess | None = None, provider: str = "cpu", max_memory: int | None = None,
         progress: Progress | None = None) -> ScanResult:
    """Run a converted model on one input of any size; return its score maps and best cells.

    ``image``: an image file (preprocessed as the model's metadata says, or as ``preprocess``),
    a ``.npy`` file, or an array of model values (H x W, H x W x C or C x H x W). ``top``: keep the
    best cells (None: all); ``threshold``: keep every cell whose best score is at least this.
    ``tile``: run in tiles of about this many pixels a side (the stitched map equals one pass).
    """
    sm = model if isinstance(model, ScanModel) else ScanModel.load(model)
    opts = ScanOptions(top, threshold, softmax, tile, max_memory, provider)
    return scan_source(Runner(sm, provider), sm, open_input(image, sm, preprocess), opts, progress)


# ---------------------------------------------------------------------------------------------
# Writing a result


class ScoresFile:
    """A float32 K x out_h x out_w .npy beside ``path``, filled tile by tile. Each write maps the
    file, fills one block and unmaps it, so resident memory stays a tile's, not the map's."""

    def __init__(self, path: Path, shape: tuple[int, int, int]) -> None:
        self.tmp = temp_beside(path)
        self.shape = shape
        np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=shape).flush()

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        arr = np.load(self.tmp, mmap_mode="r+", allow_pickle=False)
        arr[key] = value
        del arr  # unmapped: the kernel writes the pages back (a flush here would sync the whole file)

    def read(self) -> np.ndarray:
        """The whole map, mapped read-only (its pages load only where read)."""
        return np.load(self.tmp, mmap_mode="r", allow_pickle=False)


def write_result(result: ScanResult, out_dir: Path, cls: str | int | None = None, display_scale: float = 1.0,
                 png: bool = True, scores_tmp: str | None = None) -> list[Path]:
    """DIR/NAME.png, DIR/NAME.scores.npy and DIR/NAME.json, each written whole or not at all;
    the JSON last, so that a JSON present means the input's files are complete."""
    base = out_dir / result.name
    written = []
    data = result.to_dict()
    if png:
        k = result.save_png(base.with_name(base.name + ".png"), cls, display_scale)
        data["picture"] = {"file": base.name + ".png", "class": k, "label": result.label(k)}
        written.append(base.with_name(base.name + ".png"))
    npy = base.with_name(base.name + ".scores.npy")
    if scores_tmp is not None:  # a ScoresFile, already filled tile by tile
        commit(scores_tmp, npy)
    else:
        with atomic_path(npy) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(result.scores, dtype=np.float32))
    written.append(npy)
    js = base.with_name(base.name + ".json")
    write_text_atomic(js, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    written.append(js)
    return written
