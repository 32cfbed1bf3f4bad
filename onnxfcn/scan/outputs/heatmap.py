"""The score map as a TIFF that GIS and microscopy viewers open: one float32 plane per class,
tiled, written a tile at a time from the scores (never the whole map). A GeoTIFF input's map is a
GeoTIFF (QGIS): its pixels are cells, ``stride`` input pixels wide, the first centred on the first
window's centre, in the input's coordinate system. A microscopy input's map is an OME-TIFF
(QuPath) whose pixel size is a cell's; other inputs get a plain TIFF."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import OnnxFcnError
from ...io import atomic_path
from ..sources.base import Placement

_TILE = 256


def cell_geometry(placement: Placement, stride: tuple[int, int], centre0: tuple[float, float]) -> dict[str, Any]:
    """Where the map's cells lie: their size in micrometres (microscopy) and, for a GeoTIFF, the
    model coordinates of cell (0, 0)'s outer corner and a cell's size in the input's CRS.
    ``centre0``: cell (0, 0)'s window centre in scanned pixels (y, x)."""
    out: dict[str, Any] = {"cell_pixels": list(stride), "first_centre": [float(v) for v in centre0]}
    if placement.mpp is not None:
        out["cell_um"] = [stride[0] * placement.mpp, stride[1] * placement.mpp]
    geo = placement.georef
    if geo is not None:
        corner = (centre0[1] - stride[1] / 2, centre0[0] - stride[0] / 2)  # x, y in scanned pixels
        out["georef"] = {"origin": [geo.origin[0] + corner[0] * geo.pixel[0], geo.origin[1] - corner[1] * geo.pixel[1]],
                         "cell_size": [stride[1] * geo.pixel[0], stride[0] * geo.pixel[1]]}
    return out


def _tiles(scores: Any) -> Iterator[np.ndarray]:
    """Plane by plane, tile row by tile row: each tile as tifffile wants it, padded to full size."""
    k, h, w = scores.shape
    for c in range(k):
        for y in range(0, h, _TILE):
            rows = np.asarray(scores[c, y:y + _TILE], dtype=np.float32)
            for x in range(0, w, _TILE):
                tile = np.full((_TILE, _TILE), np.nan, np.float32)
                part = rows[:, x:x + _TILE]
                tile[:part.shape[0], :part.shape[1]] = part
                yield tile


def write_heatmap(path: Path, scores: Any, placement: Placement, stride: tuple[int, int],
                  centre0: tuple[float, float], labels: tuple[str, ...] | None) -> Path:
    """``scores`` (K x h x w, a Zarr or numpy array) as a tiled float32 TIFF at ``path``."""
    try:
        import tifffile
    except ImportError:
        raise OnnxFcnError("--heatmap-tiff needs tifffile: pip install tifffile") from None
    geometry = cell_geometry(placement, stride, centre0)
    kwargs: dict[str, Any] = {"photometric": "minisblack", "planarconfig": "separate", "tile": (_TILE, _TILE),
                              "shape": tuple(scores.shape), "dtype": np.float32}
    if "georef" in geometry:
        geo = placement.georef
        assert geo is not None
        g = geometry["georef"]
        tags: list[tuple[int, str, int, Any, bool]] = [(33550, "d", 3, (g["cell_size"][0], g["cell_size"][1], 0.0), True),
                (33922, "d", 6, (0.0, 0.0, 0.0, g["origin"][0], g["origin"][1], 0.0), True)]
        if geo.keys:
            tags.append((34735, "H", len(geo.keys), geo.keys, True))
        if geo.doubles:
            tags.append((34736, "d", len(geo.doubles), geo.doubles, True))
        if geo.ascii:
            tags.append((34737, "s", 0, geo.ascii, True))
        kwargs["extratags"] = tags
        ome = False
    else:
        ome = placement.mpp is not None
        if ome:
            size = geometry["cell_um"]
            kwargs["metadata"] = {"axes": "CYX", "PhysicalSizeY": size[0], "PhysicalSizeX": size[1],
                                  "PhysicalSizeYUnit": "µm", "PhysicalSizeXUnit": "µm",
                                  **({"Channel": {"Name": list(labels)}} if labels else {})}
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, _tiles(scores), ome=ome, **kwargs)
    return path
