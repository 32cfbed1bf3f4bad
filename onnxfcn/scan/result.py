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
from .sources import Source


def softmax(scores: np.ndarray) -> np.ndarray:
    """Over the class axis (0), in float64 for the sums."""
    z = scores.astype(np.float64) - scores.max(axis=0, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


@dataclass(kw_only=True)
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


@dataclass(kw_only=True)
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
        return dumps(self.to_dict())

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
        cells.append(Cell(row=i, col=j, box=model.box(i, j, *size), cls=k, label=label, score=float(flat[idx])))
    return cells
