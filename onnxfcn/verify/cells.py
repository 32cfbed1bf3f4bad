"""Reading cells: one cell of an output map, and the feature windows the head reads for cells."""

from __future__ import annotations

from typing import Any

import numpy as np

from .subject import Subject


def cell(y: np.ndarray, axes: tuple[int, int] | None, i: int, j: int) -> np.ndarray:
    """Cell (i, j) of ``y`` whose grid is on ``axes`` (None: ``y`` has no grid, it is the cell)."""
    if axes is None:
        return y
    idx: list[Any] = [slice(None)] * y.ndim
    idx[axes[0]], idx[axes[1]] = i, j
    return y[tuple(idx)]


def output_cells(subject: Subject, ys: dict[str, np.ndarray], name: str, cells: list[tuple[int, int]]) -> np.ndarray:
    """The converted output's cells, stacked as cells*batch samples like the windows."""
    axes = subject.grid_axes.get(name)
    return np.concatenate([cell(ys[name], axes, i, j) for i, j in cells], axis=0)


def feature_windows(subject: Subject, fmap: np.ndarray, cells: list[tuple[int, int]]) -> np.ndarray:
    """Feature windows of ``cells`` (cells x batch stacked on axis 0), in the converted tensor's layout;
    in dense mode one cell repeated over the reference map."""
    analysis = subject.analysis
    lay = analysis.layout(subject.feature)
    conv_lay = tuple(subject.conv_to_orig[lay[c]] for c in range(4))
    ref_shape = analysis.index.static_shape(subject.feature)
    assert ref_shape is not None
    fh, fw = int(ref_shape[lay[2]]), int(ref_shape[lay[3]])
    (kh, kw), (dh, dw) = subject.geo.feature_window, subject.geo.feature_dilation
    hax, wax = conv_lay[2], conv_lay[3]
    out = []
    for i, j in cells:  # at an output stride the window's cells lie dh, dw apart
        idx: list[Any] = [slice(None)] * fmap.ndim
        idx[hax] = slice(i, i + (kh - 1) * dh + 1, dh)
        idx[wax] = slice(j, j + (kw - 1) * dw + 1, dw)
        win = fmap[tuple(idx)]
        if (kh, kw) != (fh, fw):  # dense mode: one cell, repeated over the reference map
            reps = [1] * fmap.ndim
            reps[hax], reps[wax] = fh // kh, fw // kw
            win = np.tile(win, reps)
        out.append(win)
    return np.concatenate(out, axis=0)
