"""Image files read with Pillow (PNG, JPEG, BMP, and TIFF that Pillow reads whole)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...preprocess import Preprocess, read_image

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


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


def open_image(path: Path, name: str, channels: int, preprocess: Preprocess) -> PixelSource:
    preprocess.check(channels)
    return PixelSource(name, read_image(path, channels), preprocess)
