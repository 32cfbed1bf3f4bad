"""Image files read with Pillow (PNG, JPEG, BMP, GIF, WebP): decoded whole, so an image whose
pixels would not fit in memory is refused before it is decoded, with the estimate."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import OnnxFcnError, ResourceError
from ...preprocess import Preprocess, any_image_size, read_image
from ...runtime import available_memory
from ...units import human_bytes
from .base import Placement, as_display, fit_scale

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass
class PixelSource:
    """An image's pixels, preprocessed region by region: decoded from ``path`` when first read (a
    Dask worker that receives it decodes the file itself), or given as ``pixels_``."""

    name: str
    path: str | None
    channels: int
    preprocess: Preprocess
    height: int
    width: int
    placement: Placement = field(default_factory=Placement)
    _pixels: np.ndarray | None = field(default=None, repr=False)  # H x W x C uint8
    lazy = False  # decoded whole: the tiles need not bound the memory

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        if self.path is not None:
            d["_pixels"] = None
        return d

    @property
    def pixels_(self) -> np.ndarray:
        if self._pixels is None:
            assert self.path is not None
            self._pixels = read_image(self.path, self.channels)
        return self._pixels

    def pixels(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.pixels_[y0:y1, x0:x1]

    def read(self, y0: int, y1: int, x0: int, x1: int, chw: bool = False) -> np.ndarray:
        return self.preprocess.apply(self.pixels_[y0:y1, x0:x1], chw)

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        from PIL import Image

        scale = fit_scale(self.height, self.width, max_side)
        img = as_display(self.pixels_)
        if scale < 1:
            size = (max(1, round(self.width * scale)), max(1, round(self.height * scale)))
            img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))
        return img, scale


def decoded_bytes(path: Path, channels: int) -> tuple[int, int, int]:
    """What decoding ``path`` takes (its pixels as uint8) and its height and width, from its header alone."""
    try:
        from PIL import Image
    except ImportError:
        raise OnnxFcnError("image files need Pillow: pip install pillow (onnxfcn depends on it: reinstall onnxfcn)") from None
    try:
        with any_image_size(), Image.open(path) as img:
            w, h = img.size
    except OSError as exc:
        raise OnnxFcnError(f"{path}: not a readable image: {exc}") from None
    return w * h * max(channels, 3), h, w


def open_image(path: Path, name: str, channels: int, preprocess: Preprocess, max_memory: int | None = None) -> PixelSource:
    preprocess.check(channels)
    need, h, w = decoded_bytes(path, channels)
    limit = max_memory if max_memory is not None else available_memory() // 2
    if need > limit:
        raise ResourceError(f"{path}: decoding this {h}x{w} image takes about {human_bytes(need)}, more than the "
                            f"{human_bytes(limit)} {'allowed by --max-memory' if max_memory is not None else 'free'}: "
                            "Pillow decodes a PNG or JPEG whole; save it as a tiled TIFF (which scan reads tile by "
                            "tile) or raise --max-memory")
    # decoded now: a file Pillow cannot decode is refused before anything runs
    return PixelSource(name, str(path), channels, preprocess, h, w, _pixels=read_image(path, channels))
