"""What scan found in one input: the score map, each cell's best class, the listed cells."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import OnnxFcnError
from ..io import atomic_path
from ..jsonout import dumps
from .model import ScanModel
from .outputs.heatmap import cell_geometry
from .sources import Placement, Source

_BLOCK = 2**22  # scores summarized at a time (16 MB of float32): memory follows the block, not the map


def _rows(classes: int, width: int) -> int:
    """Cell rows in one block of ``_BLOCK`` scores."""
    return max(1, _BLOCK // max(1, classes * width))


def softmax(scores: np.ndarray) -> np.ndarray:
    """Over the class axis (0), in float64 for the sums."""
    z = scores.astype(np.float64) - scores.max(axis=0, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class Summary:
    """Per cell: the best score and class, and how sure the model is of that class
    (``confidence``: its softmax probability rescaled so that 0 is a uniform guess and 1 is
    certain); per class: its best score over the cells. Cells not computed (NaN: background)
    have best and confidence NaN and class -1, and count for no class."""

    best: np.ndarray
    best_class: np.ndarray
    class_max: np.ndarray
    confidence: np.ndarray


def _is_probabilities(block: np.ndarray, seen: np.ndarray) -> bool:
    """Every value in [0, 1] and each computed cell's sum 1: the scores of a model that ends in Softmax."""
    return bool(block.min() >= 0 and block.max() <= 1 and np.allclose(block.sum(axis=0)[seen], 1, atol=1e-3))


def summarize(scores: Any, use_softmax: bool) -> Summary:
    """Read ``scores`` (K x h x w, numpy or Zarr) a block at a time into a ``Summary``; with
    ``use_softmax`` best scores are probabilities (a model's own probabilities as they are). The
    confidence needs only each cell's largest probability, 1 / sum(exp(score - best score)): the
    block is turned into it in place, and no other copy of it is made."""
    k, h, w = scores.shape
    best = np.full((h, w), np.nan, np.float32)
    best_class = np.full((h, w), -1, np.int32)
    confidence = np.full((h, w), np.nan, np.float32)
    class_max = np.full(k, -np.inf, np.float32)
    rows = _rows(k, w)
    for r in range(0, h, rows):
        block = np.array(scores[:, r:r + rows], dtype=np.float32)  # a copy, worked on in place
        seen = np.asarray(~np.isnan(block).any(axis=0), dtype=bool)
        if not seen.any():
            continue
        block[:, ~seen] = 0
        top, cls = block.max(axis=0), block.argmax(axis=0)
        probabilities = _is_probabilities(block, seen)
        if not use_softmax or probabilities:
            class_max = np.maximum(class_max, block[:, seen].max(axis=1))
        if probabilities:
            p_max = top
        else:
            block -= top  # exp(score - best score): each cell's probabilities times its sum
            np.exp(block, out=block)
            total = block.sum(axis=0)
            p_max = 1 / total
            if use_softmax:
                block /= total
                top = p_max
                class_max = np.maximum(class_max, block[:, seen].max(axis=1))
        best[r:r + rows] = np.where(seen, top, np.nan)
        best_class[r:r + rows] = np.where(seen, cls, -1)
        sure = (p_max - 1 / k) / (1 - 1 / k) if k > 1 else np.ones(seen.shape, np.float32)
        confidence[r:r + rows] = np.where(seen, np.clip(sure, 0, 1), np.nan)
    return Summary(best=best, best_class=best_class, class_max=class_max, confidence=confidence)


@dataclass(kw_only=True)
class Cell:
    row: int
    col: int
    box: list[int]  # x0, y0, x1, y1 in the scanned level's pixels
    cls: int
    label: str | None
    score: float
    box_level0: list[int] | None = None  # the same in level-0 pixels, where a coarser level was scanned

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"row": self.row, "col": self.col, "box": self.box}
        if self.box_level0 is not None:
            d["box_level0"] = self.box_level0
        d["class"] = self.cls
        if self.label is not None:
            d["label"] = self.label
        d["score"] = self.score
        return d


@dataclass(kw_only=True)
class ScanResult:
    """What scan found in one input; ``scores`` is K x out_h x out_w as the model returned it (a
    Zarr array for a tiled scan written to a folder), NaN where background was skipped."""

    name: str
    size: tuple[int, int]
    grid: tuple[int, int]
    model: ScanModel
    scores: Any
    best: np.ndarray  # out_h x out_w: each cell's best score (after softmax, with it)
    best_class: np.ndarray  # out_h x out_w (-1: not computed)
    class_max: np.ndarray  # K: each class's best score over the cells
    cells: list[Cell]
    confidence: np.ndarray | None = None  # out_h x out_w: 0 a uniform guess .. 1 certain (Summary)
    tiles: int
    tiles_exact: bool  # tiling left every cell as one pass computes it (up to float rounding)
    softmax: bool
    seconds: float
    source: Source | None = field(default=None, repr=False)
    placement: Placement = field(default_factory=Placement)
    background: dict[str, Any] | None = None  # with --skip-background: what was skipped
    run: dict[str, Any] = field(default_factory=dict)  # tile size, overlap, resumed tiles, MP/s

    def label(self, k: int) -> str | None:
        labels = self.model.labels
        return labels[k] if labels and 0 <= k < len(labels) else None

    def best_overall(self) -> int:
        return int(np.argmax(self.class_max))

    def centre0(self) -> tuple[float, float]:
        """Cell (0, 0)'s window centre (dense mode: its field's), in scanned pixels (y, x)."""
        m = self.model
        return float(m.centres(0, 1)[0]), float(m.centres(1, 1)[0])

    def class_map(self, k: int) -> np.ndarray:
        """One class's map (after softmax, with it), out_h x out_w; NaN where not computed."""
        if not 0 <= k < self.scores.shape[0]:
            raise OnnxFcnError(f"class {k}: the model has classes 0..{self.scores.shape[0] - 1}")
        if not self.softmax:
            return np.array(self.scores[k], dtype=np.float32)
        # Softmax of one class needs every class: a block of rows at a time keeps it small. A
        # model's own probabilities are used as they are (as summarize does).
        parts = []
        n = _rows(self.scores.shape[0], self.grid[1])
        for r in range(0, self.grid[0], n):
            block = np.asarray(self.scores[:, r:r + n], dtype=np.float32)
            seen = np.asarray(~np.isnan(block).any(axis=0), dtype=bool)
            probs = block if _is_probabilities(np.where(seen, block, 0), seen) else softmax(block)
            parts.append(probs[k])
        return np.concatenate(parts, axis=0)

    def to_dict(self) -> dict[str, Any]:
        m = self.model
        d: dict[str, Any] = {
            "name": self.name, "size": list(self.size), "grid": list(self.grid),
            "window": list(m.window), "stride": list(m.stride), "offset": list(m.offset),
            "mode": m.mode, "exact": m.exact, "classes": int(self.scores.shape[0]),
            "score": "softmax" if self.softmax else "raw",
            "tiles": self.tiles, "tiles_exact": self.tiles_exact,
            **self.placement.to_json(),
            "cells_geometry": cell_geometry(self.placement, m.stride, self.centre0()),
        }
        if self.background is not None:
            d["background"] = self.background
        if "tile" in self.run:  # what does not vary from run to run: the tile size and the overlap's cost
            d["run"] = {k: self.run[k] for k in ("tile", "overlap_overhead")}
        d["cells"] = [c.to_dict() for c in self.cells]
        return d

    def to_json(self) -> str:
        return dumps(self.to_dict())

    def save_png(self, path: str | os.PathLike[str], cls: int | str | None = None, display_scale: float = 1.0,
                 picture: str = "map", max_side: int = 2048) -> int:
        """Draw the picture (``picture``: "map", one class's map, default the best class overall;
        "classes", every cell's best class) over the input, its longer side at most ``max_side``;
        returns the class drawn (the best overall for "classes")."""
        from .picture import render

        if self.source is None:
            raise OnnxFcnError("this result has no input to draw on")
        k = self.best_overall() if cls is None else self.model.class_index(cls)
        img = render(self, k, display_scale, picture=picture, max_side=max_side)
        with atomic_path(path) as tmp:
            img.save(tmp, format="PNG", compress_level=1)  # a quarter of the default's time; a larger file
        return k


def select_cells(model: ScanModel, best: np.ndarray, best_class: np.ndarray, size: tuple[int, int],
                 top: int | None, threshold: float | None, downsample: float = 1.0,
                 nms: float | None = None) -> list[Cell]:
    """The best cells, in descending score order: every cell >= ``threshold`` (at most ``top``), or
    the ``top``; cells not computed (NaN) are never listed. ``nms``: a cell whose box overlaps a
    better listed cell's by more than this intersection over union is left out."""
    flat = best.ravel()
    order = np.argsort(-flat, kind="stable")
    order = order[~np.isnan(flat[order])]
    if threshold is not None:
        order = order[flat[order] >= threshold]
    if nms is not None:
        order = _suppress(model, order, best.shape, size, nms, top)
    if top is not None:
        order = order[:top]
    w = best.shape[1]
    cells = []
    for idx in order:
        i, j = divmod(int(idx), w)
        k = int(best_class[i, j])
        label = model.labels[k] if model.labels and k < len(model.labels) else None
        box = model.box(i, j, *size)
        level0 = [round(v * downsample) for v in box] if downsample != 1 else None
        cells.append(Cell(row=i, col=j, box=box, cls=k, label=label, score=float(flat[idx]), box_level0=level0))
    return cells


def _suppress(model: ScanModel, order: np.ndarray, grid: tuple[int, int], size: tuple[int, int], nms: float,
              top: int | None) -> np.ndarray:
    """Greedy non-maximum suppression over cells in ``order`` (best first): each kept cell marks
    the cells around it whose box overlaps its own by more than ``nms`` (IoU). Only the cells
    within a box's reach are compared, so the cost follows the cells kept, not the map squared."""
    gh, gw = grid
    span = model.window if model.mode == "window" else model.receptive_field
    reach = (-(-span[0] // model.stride[0]), -(-span[1] // model.stride[1]))
    suppressed = np.zeros(grid, bool)
    kept = []
    for idx in order:
        i, j = divmod(int(idx), gw)
        if suppressed[i, j]:
            continue
        kept.append(idx)
        if top is not None and len(kept) == top:
            break
        ii = np.arange(max(0, i - reach[0]), min(gh, i + reach[0] + 1))
        jj = np.arange(max(0, j - reach[1]), min(gw, j + reach[1] + 1))
        suppressed[np.ix_(ii, jj)] |= _iou(model, (i, j), ii, jj, size) > nms
    return np.asarray(kept, dtype=np.int64)


def _iou(model: ScanModel, cell: tuple[int, int], ii: np.ndarray, jj: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """IoU of cell's box with the boxes of cells ii x jj (clipped to the image, as listed)."""
    x0, y0, x1, y1 = model.box(*cell, *size)
    boxes_y = np.array([model.box(int(i), int(jj[0]), *size)[1::2] for i in ii])  # y0, y1 per row
    boxes_x = np.array([model.box(int(ii[0]), int(j), *size)[0::2] for j in jj])  # x0, x1 per column
    ih = np.clip(np.minimum(y1, boxes_y[:, 1]) - np.maximum(y0, boxes_y[:, 0]), 0, None)
    iw = np.clip(np.minimum(x1, boxes_x[:, 1]) - np.maximum(x0, boxes_x[:, 0]), 0, None)
    inter = ih[:, None] * iw[None, :]
    area = ((boxes_y[:, 1] - boxes_y[:, 0])[:, None] * (boxes_x[:, 1] - boxes_x[:, 0])[None, :])
    return inter / np.maximum((y1 - y0) * (x1 - x0) + area - inter, 1)
