"""Background: where a slide is glass, not tissue, from a low-resolution view of it.

The mask is computed on the input's thumbnail (a pyramid level, or a strided read): Otsu's
threshold on saturation and on brightness, as whole-slide pipelines do, bounded so that only
bright, unsaturated pixels can be background (saturation at most 50 of 255, brightness at least
200), whatever Otsu finds on a slide that is all tissue. A scan cell is background when every
mask pixel its window touches is: such cells are never read or run, and their scores are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OnnxFcnError

MASK_SIDE = 2048  # the thumbnail's longer side the mask is computed on
MAX_SATURATION, MIN_BRIGHTNESS = 50, 200


def otsu(values: np.ndarray) -> int:
    """Otsu's threshold of 8-bit values: the level that best splits them into two classes."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 / total - m0) ** 2 / (w0 * w1 / total)
    between[~np.isfinite(between)] = 0
    return int(np.argmax(between))


@dataclass(frozen=True)
class Foreground:
    """A foreground mask and how it lies over the scanned pixels (mask pixels per scanned pixel)."""

    mask: np.ndarray  # bool, True where there is tissue
    scale: float
    saturation: int  # the thresholds used
    brightness: int

    @classmethod
    def of(cls, rgb: np.ndarray, scale: float) -> Foreground:
        """The mask of an H x W x 3 uint8 thumbnail."""
        x = rgb.astype(np.int16)
        vmax, vmin = x.max(axis=2), x.min(axis=2)
        sat = np.where(vmax > 0, (vmax - vmin) * 255 // np.maximum(vmax, 1), 0).astype(np.uint8)
        bright = vmax.astype(np.uint8)
        t_s = min(otsu(sat), MAX_SATURATION)
        t_v = max(otsu(bright), MIN_BRIGHTNESS)
        return cls(~((sat <= t_s) & (bright >= t_v)), scale, t_s, t_v)

    @property
    def fraction(self) -> float:
        """The share of the mask that is foreground."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def _integral(self) -> np.ndarray:
        return np.pad(self.mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def boxes_any(self, y0: np.ndarray, y1: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
        """For boxes of scanned pixels (arrays of edges, end exclusive): whether any mask pixel
        they touch is foreground."""
        h, w = self.mask.shape
        r0 = np.clip(np.floor(y0 * self.scale).astype(np.int64), 0, h)
        r1 = np.clip(np.ceil(y1 * self.scale).astype(np.int64), 0, h)
        c0 = np.clip(np.floor(x0 * self.scale).astype(np.int64), 0, w)
        c1 = np.clip(np.ceil(x1 * self.scale).astype(np.int64), 0, w)
        r1, c1 = np.maximum(r1, np.minimum(r0 + 1, h)), np.maximum(c1, np.minimum(c0 + 1, w))
        ii = self._integral()
        counts = ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]
        return counts > 0


def cell_foreground(fg: Foreground, grid: tuple[int, int], origin: tuple[int, int], extent: tuple[int, int],
                    stride: tuple[int, int]) -> np.ndarray:
    """grid-shaped: whether cell (i, j)'s box (``origin + (i, j) * stride``, ``extent`` pixels)
    touches foreground."""
    i = np.arange(grid[0])[:, None]
    j = np.arange(grid[1])[None, :]
    y0 = origin[0] + i * stride[0] + 0 * j
    x0 = origin[1] + j * stride[1] + 0 * i
    return fg.boxes_any(y0, y0 + extent[0], x0, x0 + extent[1])


def require_pixels(source: object, name: str) -> None:
    if not hasattr(source, "pixels"):
        raise OnnxFcnError(f"{name}: --skip-background needs an image (pixels), not model values")
