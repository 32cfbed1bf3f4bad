"""Arrays of model input values, used as they are: in memory, or a ``.npy`` file mapped a region
at a time (H x W, H x W x C or C x H x W)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import OnnxFcnError
from .base import Placement, as_display, fit_scale

SUFFIXES = (".npy",)


@dataclass
class ArraySource:
    """Model input values as they are: an array in memory, or a ``.npy`` file mapped a region at a time."""

    name: str
    array: np.ndarray | None  # H x W x C (a view); None: read from ``path``
    order: str  # the stored order: HW, HWC or CHW
    shape: tuple[int, int]
    path: str | None = None
    placement: Placement = field(default_factory=Placement)

    @property
    def lazy(self) -> bool:
        """Read from its file a region at a time (a .npy), not held whole in memory."""
        return self.path is not None

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

    def read(self, y0: int, y1: int, x0: int, x1: int, chw: bool = False) -> np.ndarray:
        a = self._stored()
        if self.order == "HW":
            region = a[y0:y1, x0:x1, None]
        elif self.order == "CHW":
            region = a[:, y0:y1, x0:x1].transpose(1, 2, 0)
        else:
            region = a[y0:y1, x0:x1]
        out = np.ascontiguousarray(region.transpose(2, 0, 1) if chw else region, dtype=np.float32)
        if not np.isfinite(out).all():
            raise OnnxFcnError(f"{self.name}: the array holds NaN or infinite values")
        return out

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        """A strided read fitted in ``max_side``, its values stretched between their 1st and 99th
        percentile (model values, not pixels)."""
        from PIL import Image

        scale = fit_scale(self.height, self.width, max_side)
        step = max(1, int(1 / scale))
        rows, cols = range(0, self.height, step), range(0, self.width, step)
        a = self._stored()
        region = (a[::step, ::step, None] if self.order == "HW" else
                  a[:, ::step, ::step].transpose(1, 2, 0) if self.order == "CHW" else a[::step, ::step])
        img = as_display(np.asarray(region, dtype=np.float32))
        size = (max(1, round(self.width * scale)), max(1, round(self.height * scale)))
        if (len(rows), len(cols)) != (size[1], size[0]):
            img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))
        return img, scale


def array_order(shape: Sequence[int], channels: int, name: str) -> tuple[str, tuple[int, int]]:
    """How an array of ``shape`` holds a ``channels``-channel image, and its height and width."""
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


def in_memory(array: np.ndarray, channels: int, name: str) -> ArraySource:
    order, hw = array_order(array.shape, channels, name)
    return ArraySource(name, array, order, hw)


def open_npy(path: Path, name: str, channels: int) -> ArraySource:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise OnnxFcnError(f"{path}: not a readable .npy file: {exc}") from None
    if arr.dtype.kind not in "fiub":
        raise OnnxFcnError(f"{path}: dtype {arr.dtype} is not numeric")
    order, hw = array_order(arr.shape, channels, str(path))
    del arr
    return ArraySource(name, None, order, hw, str(path))
