"""Whole-slide images through OpenSlide (SVS, NDPI, MRXS, SCN, VMS, BIF...), read a region at a
time at any level: ``pip install 'onnxfcn[slides]'`` (openslide-python with openslide-bin)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import OnnxFcnError
from ...preprocess import Preprocess
from .base import Level, LevelledSource, Placement, choose_level, fit_scale, resized

SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")


def _openslide() -> Any:
    try:
        import openslide
    except ImportError:
        raise OnnxFcnError("whole-slide formats need OpenSlide: pip install 'onnxfcn[slides]' "
                           "(openslide-python and openslide-bin)") from None
    return openslide


def _rgb(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide's premultiplied RGBA as RGB; what no scan covers (alpha 0) is white, as glass is."""
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 255
    return rgb


@dataclass(kw_only=True)
class SlideSource(LevelledSource):
    """One level of a whole-slide image. Picklable: a Dask worker opens the slide itself."""

    def _slide(self) -> Any:
        if "slide" not in self._open:
            self._open["slide"] = _openslide().OpenSlide(self.path)
        return self._open["slide"]

    def pixels(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        ds = self.placement.downsample  # read_region takes level-0 coordinates
        region = self._slide().read_region((round(x0 * ds), round(y0 * ds)), self.level, (x1 - x0, y1 - y0))
        return _rgb(np.asarray(region))

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        scale = fit_scale(self.height, self.width, max_side)
        size = (max(1, round(self.width * scale)), max(1, round(self.height * scale)))
        thumb = np.asarray(self._slide().get_thumbnail(size).convert("RGB"))
        if thumb.shape[:2] != (size[1], size[0]):  # get_thumbnail keeps the aspect ratio within the size
            thumb = resized(thumb, size[1], size[0])
        return thumb, scale


def open_slide(path: Path, name: str, channels: int, preprocess: Preprocess, level: int | None = None,
               mpp: float | None = None) -> SlideSource:
    openslide = _openslide()
    try:
        slide = openslide.OpenSlide(str(path))
    except Exception as exc:  # OpenSlideError, OpenSlideUnsupportedFormatError
        raise OnnxFcnError(f"{path}: OpenSlide cannot read it: {exc}") from None
    with slide:
        levels = [Level(h, w, float(d)) for (w, h), d in zip(slide.level_dimensions, slide.level_downsamples)]
        try:
            mpp0: float | None = float(slide.properties[openslide.PROPERTY_NAME_MPP_X])
        except (KeyError, ValueError):
            mpp0 = None
    k = choose_level(levels, level, mpp, mpp0, str(path))
    preprocess.check(channels)
    ds = levels[k].downsample
    placement = Placement(level=k, levels=len(levels), downsample=ds, mpp=None if mpp0 is None else mpp0 * ds)
    return SlideSource(name=name, path=str(path), level=k, channels=channels, preprocess=preprocess,
                       height=levels[k].height, width=levels[k].width, placement=placement, levels=levels)
