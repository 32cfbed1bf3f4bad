"""What scan reads: a ``Source`` gives model input values a region at a time, a thumbnail of
itself, and where its pixels lie (``Placement``: pyramid level, pixel size, georeference). One
module per format; ``open_input`` picks the reader by the file's suffix. To add a reader: a module
here with its ``SUFFIXES`` and an ``open_*`` function, and an entry in ``READERS``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ...errors import OnnxFcnError
from ...preprocess import Preprocess
from ..model import ScanModel
from . import array, image, ome_zarr, slide, tiff
from .array import ArraySource
from .base import GeoRef, Placement
from .image import PixelSource

log = logging.getLogger(__name__)


class Source(Protocol):
    """An input to scan: model values read a region at a time, and a picture of it."""

    name: str
    placement: Placement

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    def read(self, y0: int, y1: int, x0: int, x1: int, chw: bool = False) -> np.ndarray:
        """Model input values of rows y0:y1 and columns x0:x1, H x W x C float32 (``chw``: C x H x W)."""
        ...

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        """The input fitted in ``max_side`` pixels as H x W x 3 uint8, and display pixels per input
        pixel; never more of the input than that takes."""
        ...


@dataclass(frozen=True, kw_only=True)
class ReadOptions:
    """How to read an input: its preprocessing, the pyramid level (or the pixel size to pick it
    by), and the memory a whole-image decode may take."""

    preprocess: Preprocess
    level: int | None = None
    mpp: float | None = None  # micrometres per pixel wanted: --mpp, or the model's (convert --mpp)
    strict_mpp: bool = True  # --mpp given: a file without a pixel size is an error; the model's: level 0
    max_memory: int | None = None


Opener = Callable[[Path, str, int, ReadOptions], Source]


def _pyramid(open_fn: Callable[..., Source]) -> Opener:
    def opener(path: Path, name: str, channels: int, opts: ReadOptions) -> Source:
        try:
            return open_fn(path, name, channels, opts.preprocess, opts.level, opts.mpp)
        except OnnxFcnError as exc:
            if opts.strict_mpp or opts.level is not None or "states no pixel size" not in exc.reason:
                raise
            log.info("%s states no pixel size: scanned at level 0, not at the model's %g um/px", path, opts.mpp)
            return open_fn(path, name, channels, opts.preprocess, 0, None)

    return opener


def _flat(open_fn: Callable[[Path, str, int, ReadOptions], Source], what: str) -> Opener:
    def opener(path: Path, name: str, channels: int, opts: ReadOptions) -> Source:
        if opts.level:
            raise OnnxFcnError(f"{path}: --level {opts.level}: {what} has one level")
        if opts.mpp is not None and opts.strict_mpp:
            raise OnnxFcnError(f"{path}: --mpp: {what} states no pixel size; choose the model's resolution yourself")
        return open_fn(path, name, channels, opts)

    return opener


READERS: dict[str, Opener] = {
    **{s: _flat(lambda p, n, c, o: image.open_image(p, n, c, o.preprocess, o.max_memory), "an image file")
       for s in image.SUFFIXES},
    **{s: _flat(lambda p, n, c, o: array.open_npy(p, n, c), "a .npy array") for s in array.SUFFIXES},
    **{s: _pyramid(tiff.open_tiff) for s in tiff.SUFFIXES},
    **{s: _pyramid(ome_zarr.open_zarr) for s in ome_zarr.SUFFIXES},
    **{s: _pyramid(slide.open_slide) for s in slide.SUFFIXES},
}
INPUT_SUFFIXES = tuple(READERS)


def read_options(model: ScanModel, preprocess: Preprocess | None = None, level: int | None = None,
                 mpp: float | None = None, max_memory: int | None = None) -> ReadOptions:
    """The options for ``model``'s inputs: the model's preprocessing and training resolution
    unless given."""
    return ReadOptions(preprocess=preprocess or model.preprocess, level=level,
                       mpp=mpp if mpp is not None else (model.mpp if level is None else None),
                       strict_mpp=mpp is not None, max_memory=max_memory)


def open_input(item: str | os.PathLike[str] | np.ndarray, model: ScanModel,
               options: ReadOptions | Preprocess | None = None, name: str | None = None) -> Source:
    """An image file (PNG, JPEG, TIFF, ...), a whole slide, a Zarr image, a ``.npy`` file, or an
    array in memory (model values: H x W, H x W x C, C x H x W); pixels are preprocessed as the
    options say (default: as the model's metadata says)."""
    opts = options if isinstance(options, ReadOptions) else read_options(model, options)
    if isinstance(item, np.ndarray):
        return array.in_memory(item, model.channels, name or "array")
    path = Path(item)
    suffix = path.suffix.lower()
    if not (path.is_file() or (path.is_dir() and suffix in ome_zarr.SUFFIXES)):
        raise OnnxFcnError(f"{path}: no such file")
    opener = READERS.get(suffix)
    if opener is None:
        raise OnnxFcnError(f"{path}: not an image or array scan reads ({', '.join(INPUT_SUFFIXES)})")
    return opener(path, name or output_name(path), model.channels, opts)


def output_name(path: Path) -> str:
    """The NAME of an input's files: its name less its suffix, and less ``.ome`` before it
    (``slide.ome.tif`` -> ``slide``; ``scene.v2.png`` -> ``scene.v2``)."""
    stem = path.stem
    return stem[:-4] if stem.lower().endswith(".ome") and len(stem) > 4 else stem


def _is_input(p: Path) -> bool:
    suffix = p.suffix.lower()
    return (p.is_file() and suffix in INPUT_SUFFIXES) or (p.is_dir() and suffix in ome_zarr.SUFFIXES)


def list_inputs(items: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files and folders (their inputs, not recursive; a ``.zarr`` folder is one input), in order;
    names must not repeat."""
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir() and p.suffix.lower() not in ome_zarr.SUFFIXES:
            found = sorted(f for f in p.iterdir() if _is_input(f))
            if not found:
                raise OnnxFcnError(f"{p}: no inputs scan reads in the folder ({', '.join(INPUT_SUFFIXES)})")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise OnnxFcnError(f"{p}: no such file or folder")
    seen: dict[str, Path] = {}
    for f in files:
        stem = output_name(f)
        if stem in seen:
            raise OnnxFcnError(f"{seen[stem]} and {f} would write the same outputs ({stem}.*); rename one")
        seen[stem] = f
    return files


__all__ = ["INPUT_SUFFIXES", "ArraySource", "GeoRef", "PixelSource", "Placement", "ReadOptions", "Source",
           "list_inputs", "open_input", "read_options"]
