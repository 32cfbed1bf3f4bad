"""The windows a converted model's cells stand for: cutting one out of an input, and listing those
that fit. verify compares cells with the original on these crops; bench times the original on
them."""

from __future__ import annotations

import numpy as np


def crop(x: np.ndarray, layout: str, top: int, left: int, h: int, w: int) -> np.ndarray:
    """The h x w window of ``x`` (N x C x H x W, or N x H x W x C) at (top, left), in its layout."""
    if layout == "NCHW":
        return x[:, :, top:top + h, left:left + w]
    return x[:, top:top + h, left:left + w, :]


def fits(top: int, left: int, window: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether the window at (top, left) lies inside an image of ``size``."""
    return top >= 0 and left >= 0 and top + window[0] <= size[0] and left + window[1] <= size[1]


def corners(grid: tuple[int, int], stride: tuple[int, int], offset: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(row, col, top, left) of every cell of ``grid``, in row-major order."""
    return [(i, j, offset[0] + i * stride[0], offset[1] + j * stride[1]) for i in range(grid[0]) for j in range(grid[1])]
