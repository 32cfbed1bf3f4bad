"""TIFF, BigTIFF, OME-TIFF and GeoTIFF through tifffile and zarr: read a tile at a time, never the
whole image, at any pyramid level. Compressions beyond zlib and packbits (JPEG, JPEG 2000, zstd,
LZW, ...) need imagecodecs (``pip install 'onnxfcn[slides]'``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import OnnxFcnError
from ...preprocess import Preprocess
from .base import (
    GeoRef,
    Level,
    LevelledSource,
    Placement,
    TileCache,
    as_display,
    choose_level,
    fit_scale,
    resized,
    thumbnail_level,
)

SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
_AXES = {"YX": None, "YXS": None, "YXC": None, "CYX": (1, 2, 0), "SYX": (1, 2, 0)}


def _require() -> Any:
    try:
        import tifffile
        import zarr  # noqa: F401  (tifffile's aszarr stores are opened with it)
    except ImportError as exc:
        raise OnnxFcnError(f"TIFF files need tifffile and zarr ({exc.name} is missing): pip install tifffile zarr") from None
    return tifffile


def _mpp(tif: Any) -> float | None:
    """Micrometres per level-0 pixel: OME's PhysicalSizeX, or the resolution tags in centimetres
    (or in inches finer than 1000 dpi: a photo's 72 dpi says nothing about its pixels)."""
    if tif.is_ome and tif.ome_metadata:
        import tifffile

        try:
            pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
            pixels = (pixels[0] if isinstance(pixels, list) else pixels)["Pixels"]
            size = float(pixels["PhysicalSizeX"])
            unit = pixels.get("PhysicalSizeXUnit", "µm")
            scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(unit)
            if scale is not None and size > 0:
                return size * scale
        except (KeyError, TypeError, ValueError, IndexError):
            pass
    page = tif.pages.first
    res, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if res is None or unit is None:
        return None
    num, den = res.value if isinstance(res.value, tuple) else (res.value, 1)
    if not num or not den:
        return None
    per_unit = num / den
    if int(unit.value) == 3:  # centimetre
        return 1e4 / per_unit
    if int(unit.value) == 2 and per_unit >= 1000:  # inch
        return 25400 / per_unit
    return None


def _georef(tif: Any) -> GeoRef | None:
    """A GeoTIFF's pixel scale and tie point (raster point (0, 0)) with its GeoKeys."""
    page = tif.pages.first
    tags = page.tags
    scale, tie = tags.get("ModelPixelScaleTag"), tags.get("ModelTiepointTag")
    if scale is None or tie is None or len(tie.value) < 6 or any(tie.value[:2]):
        return None
    keys = tags.get("GeoKeyDirectoryTag")
    doubles = tags.get("GeoDoubleParamsTag")
    text = tags.get("GeoAsciiParamsTag")
    return GeoRef((float(tie.value[3]), float(tie.value[4])), (float(scale.value[0]), float(scale.value[1])),
                  tuple(int(v) for v in keys.value) if keys is not None else (),
                  tuple(float(v) for v in doubles.value) if doubles is not None else (),
                  str(text.value) if text is not None else "")


@dataclass(kw_only=True)
class TiffSource(LevelledSource):
    """One level of a TIFF's first series, read region by region. Picklable: a Dask worker that
    receives it opens the file itself."""

    def _array(self, level: int) -> Any:
        if level not in self._open:
            import zarr

            tifffile = _require()
            tif = self._open.setdefault("file", tifffile.TiffFile(self.path))
            self._open[level] = zarr.open(tif.series[0].aszarr(level=level), mode="r")
        return self._open[level]

    def _cache(self) -> TileCache:
        if "cache" not in self._open:
            z = self._array(self.level)
            axes = self._open["file"].series[0].axes
            perm = _AXES[axes]
            chunks = z.chunks if perm is None else tuple(z.chunks[p] for p in perm)

            def decode(ty0: int, ty1: int, tx0: int, tx1: int) -> np.ndarray:
                th, tw = chunks[0], chunks[1]
                rows, cols = slice(ty0 * th, ty1 * th), slice(tx0 * tw, tx1 * tw)
                try:
                    block = np.asarray(z[rows, cols] if perm is None else z[:, rows, cols])
                except Exception as exc:  # a codec that needs imagecodecs, a damaged tile
                    raise OnnxFcnError(f"{self.path}: cannot decode tiles ({ty0}, {tx0}) to ({ty1 - 1}, {tx1 - 1}) of "
                                       f"level {self.level}: "
                                       f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                                       " (compressed images need imagecodecs: pip install 'onnxfcn[slides]')") from None
                return block[..., None] if block.ndim == 2 else (block if perm is None else block.transpose(perm))

            sample = (self.height, self.width, 1 if len(z.shape) == 2 else (z.shape[0] if perm else z.shape[2]))
            self._open["cache"] = TileCache(sample, (chunks[0], chunks[1]), z.dtype, decode)
        cache: TileCache = self._open["cache"]
        return cache

    def pixels(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self._cache().region(y0, y1, x0, x1)

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        """The image fitted in ``max_side`` (display pixels per scanned pixel returned), read from
        a small enough level (``thumbnail_level``): never the whole image."""
        scale = fit_scale(self.height, self.width, max_side)
        k, step = thumbnail_level(self.levels, self.level, max(self.height, self.width) * scale)
        z = self._array(k)
        axes = self._open["file"].series[0].axes
        block = np.asarray(z[::step, ::step] if _AXES[axes] is None else z[:, ::step, ::step])
        block = block[..., None] if block.ndim == 2 else (block if _AXES[axes] is None else block.transpose(1, 2, 0))
        return resized(as_display(block), round(self.height * scale), round(self.width * scale)), scale


def open_tiff(path: Path, name: str, channels: int, preprocess: Preprocess, level: int | None = None,
              mpp: float | None = None) -> TiffSource:
    tifffile = _require()
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises several types for a file it cannot parse
        raise OnnxFcnError(f"{path}: not a readable TIFF: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    with tif:
        if not tif.series:
            raise OnnxFcnError(f"{path}: no image in the TIFF")
        series = tif.series[0]
        if series.axes not in _AXES:
            raise OnnxFcnError(f"{path}: axes {series.axes}: scan reads a 2-D image (Y, X and samples or channels)")
        yx = [series.axes.index("Y"), series.axes.index("X")]
        levels = [Level(int(lv.shape[yx[0]]), int(lv.shape[yx[1]]), 1.0) for lv in series.levels]
        levels = [Level(lv.height, lv.width, levels[0].height / lv.height) for lv in levels]
        mpp0, geo = _mpp(tif), _georef(tif)
    k = choose_level(levels, level, mpp, mpp0, str(path))
    ds = levels[k].downsample
    placement = Placement(level=k, levels=len(levels), downsample=ds, mpp=None if mpp0 is None else mpp0 * ds,
                          georef=None if geo is None else geo.scaled(ds))
    if preprocess is not None:
        preprocess.check(channels)
    source = TiffSource(name=name, path=str(path), level=k, channels=channels, preprocess=preprocess,
                        height=levels[k].height, width=levels[k].width, placement=placement, levels=levels)
    if not math.isfinite(ds) or ds <= 0:
        raise OnnxFcnError(f"{path}: level {k} has no size")
    return source
