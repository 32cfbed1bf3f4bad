"""Zarr arrays and OME-Zarr images (a ``.zarr`` folder), read a chunk at a time at any level of
an OME-Zarr pyramid. Their values are pixels, preprocessed as image files are."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import OnnxFcnError
from ...preprocess import Preprocess
from .base import (
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

SUFFIXES = (".zarr",)
_UNITS = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, "centimeter": 1e4, "meter": 1e6}


def _open_root(path: Path) -> Any:
    try:
        import zarr
    except ImportError:
        raise OnnxFcnError("Zarr inputs need zarr: pip install zarr") from None
    try:
        return zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for what it cannot read
        raise OnnxFcnError(f"{path}: not a readable Zarr array or group: {type(exc).__name__}: {exc}") from None


def _multiscales(root: Any) -> tuple[list[str], list[str], float | None]:
    """(the levels' array paths, the axes, micrometres per level-0 pixel) of an OME-Zarr group."""
    attrs = dict(root.attrs)
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not ms:
        raise OnnxFcnError("a Zarr group without OME multiscales: give the path of one of its arrays")
    first = ms[0]
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in first.get("axes", [])]
    paths = [d["path"] for d in first["datasets"]]
    mpp = None
    if "x" in axes:
        ax = axes.index("x")
        unit = next((a.get("unit") for a in first["axes"] if isinstance(a, dict) and a.get("name") == "x"), None)
        for t in first["datasets"][0].get("coordinateTransformations", []):
            if t.get("type") == "scale" and unit in _UNITS:
                mpp = float(t["scale"][ax]) * _UNITS[unit]
    return paths, axes or ["y", "x"], mpp


def _roles(axes: list[str], shape: tuple[int, ...], name: str) -> list[str]:
    """Each array axis's role: "y", "x", "c", or "0" (t, z: the first index). Without OME axes, a
    2-D array is Y, X; a 3-D one keeps its channels (at most 16) last or first."""
    if axes and len(axes) == len(shape) and "y" in axes and "x" in axes:
        return [a if a in ("y", "x", "c") else "0" for a in axes]
    if len(shape) == 2:
        return ["y", "x"]
    if len(shape) == 3:
        return ["y", "x", "c"] if shape[2] <= 16 or shape[0] > 16 else ["c", "y", "x"]
    raise OnnxFcnError(f"{name}: a Zarr array of shape {shape}: scan reads H x W, H x W x C or C x H x W")


def _hw(roles: list[str], shape: tuple[int, ...]) -> tuple[int, int]:
    return int(shape[roles.index("y")]), int(shape[roles.index("x")])


@dataclass(kw_only=True)
class ZarrSource(LevelledSource):
    """One level of a Zarr image, read chunk by chunk. Picklable: a Dask worker opens it itself."""

    arrays: list[str]  # paths of the levels inside the store ("" for a plain array)
    axes: list[str]

    def _array(self, level: int) -> Any:
        if level not in self._open:
            root = _open_root(Path(self.path))
            self._open[level] = root if not self.arrays[level] else root[self.arrays[level]]
        return self._open[level]

    def _block(self, level: int, rows: slice, cols: slice) -> np.ndarray:
        """Rows and columns of a level as H x W x C."""
        z = self._array(level)
        roles = _roles(self.axes, z.shape, self.name)
        index = tuple(rows if r == "y" else cols if r == "x" else (slice(None) if r == "c" else 0) for r in roles)
        kept = [r for r in roles if r != "0"]
        block = np.asarray(z[index]).transpose([kept.index(r) for r in ("y", "x", "c") if r in kept])
        return block[..., None] if block.ndim == 2 else block

    def _cache(self) -> TileCache:
        if "cache" not in self._open:
            z = self._array(self.level)
            roles = _roles(self.axes, z.shape, self.name)
            th, tw = int(z.chunks[roles.index("y")]), int(z.chunks[roles.index("x")])
            sample = self._block(self.level, slice(0, 1), slice(0, 1))

            def decode(ty0: int, ty1: int, tx0: int, tx1: int) -> np.ndarray:
                return self._block(self.level, slice(ty0 * th, ty1 * th), slice(tx0 * tw, tx1 * tw))

            self._open["cache"] = TileCache((self.height, self.width, sample.shape[2]), (th, tw), sample.dtype, decode)
        cache: TileCache = self._open["cache"]
        return cache

    def pixels(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self._cache().region(y0, y1, x0, x1)

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        scale = fit_scale(self.height, self.width, max_side)
        k, step = thumbnail_level(self.levels, self.level, max(self.height, self.width) * scale)
        block = self._block(k, slice(None, None, step), slice(None, None, step))
        return resized(as_display(block), round(self.height * scale), round(self.width * scale)), scale


def open_zarr(path: Path, name: str, channels: int, preprocess: Preprocess, level: int | None = None,
              mpp: float | None = None) -> ZarrSource:
    root = _open_root(path)
    if hasattr(root, "shape"):  # a plain array
        arrays, axes, mpp0 = [""], list[str](), None
        shapes = [tuple(root.shape)]
    else:
        arrays, axes, mpp0 = _multiscales(root)
        shapes = [tuple(root[a].shape) for a in arrays]
    hw = [_hw(_roles(axes, shape, str(path)), shape) for shape in shapes]
    levels = [Level(h, w, hw[0][0] / h) for h, w in hw]
    k = choose_level(levels, level, mpp, mpp0, str(path))
    ds = levels[k].downsample
    preprocess.check(channels)
    placement = Placement(level=k, levels=len(levels), downsample=ds, mpp=None if mpp0 is None else mpp0 * ds)
    return ZarrSource(name=name, path=str(path), arrays=arrays, level=k, axes=axes, channels=channels,
                      preprocess=preprocess, height=hw[k][0], width=hw[k][1], placement=placement, levels=levels)
