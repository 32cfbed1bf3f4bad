"""What scan reads: a ``Source`` gives model input values a region at a time, and a picture of
itself. One module per format; ``open_input`` picks the reader by the file's suffix. To add a
reader: a module here with its ``SUFFIXES`` and an ``open_*`` function, and a line in ``READERS``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ...errors import OnnxFcnError
from ...preprocess import Preprocess
from ..model import ScanModel
from . import array, image
from .array import ArraySource
from .image import PixelSource


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


# suffix -> (path, name, the model's channels, preprocessing) -> Source
Opener = Callable[[Path, str, int, Preprocess], Source]
READERS: dict[str, Opener] = {
    **{s: image.open_image for s in image.SUFFIXES},
    **{s: (lambda path, name, channels, pre: array.open_npy(path, name, channels)) for s in array.SUFFIXES},
}
INPUT_SUFFIXES = tuple(READERS)


def open_input(item: str | os.PathLike[str] | np.ndarray, model: ScanModel, preprocess: Preprocess | None = None,
               name: str | None = None) -> Source:
    """An image file, a ``.npy`` file or an array in memory (model values: H x W, H x W x C, C x H x W);
    image files are preprocessed as ``preprocess`` says (default: as the model's metadata says)."""
    if isinstance(item, np.ndarray):
        return array.in_memory(item, model.channels, name or "array")
    path = Path(item)
    if not path.is_file():
        raise OnnxFcnError(f"{path}: no such file")
    opener = READERS.get(path.suffix.lower())
    if opener is None:
        raise OnnxFcnError(f"{path}: not an image ({', '.join(image.SUFFIXES)}) or a .npy array")
    return opener(path, name or path.stem, model.channels, preprocess or model.preprocess)


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


__all__ = ["INPUT_SUFFIXES", "ArraySource", "PixelSource", "Source", "list_inputs", "open_input"]
