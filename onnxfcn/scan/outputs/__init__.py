"""The files a scan writes for each input, each whole or not at all, the JSON last (a JSON
present means the input's files are complete): ``NAME.png`` (the picture), the scores
(``NAME.scores.npy`` for one pass, ``NAME.scores.zarr`` for a tiled scan, ``zarr.py``), optionally
``NAME.heatmap.tif`` (``heatmap.py``), and ``NAME.json``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...io import atomic_path, write_text_atomic
from ...jsonout import dumps
from .heatmap import cell_geometry, write_heatmap
from .zarr import ScoresZarr

if TYPE_CHECKING:
    from ..result import ScanResult

__all__ = ["ScoresZarr", "cell_geometry", "write_heatmap", "write_result"]


def write_result(result: ScanResult, out_dir: Path, cls: str | int | None = None, display_scale: float = 1.0,
                 png: bool = True, store: ScoresZarr | None = None, picture: str = "map", max_side: int = 2048,
                 heatmap: bool = False) -> list[Path]:
    """Write the input's files into ``out_dir``; ``store``: a tiled scan's scores, renamed into
    place here. Returns the files written, in order."""
    base = out_dir / result.name
    written = []
    data = result.to_dict()
    if png:
        k = result.save_png(base.with_name(base.name + ".png"), cls, display_scale, picture=picture, max_side=max_side)
        data["picture"] = {"file": base.name + ".png", "view": picture, "class": k, "label": result.label(k)}
        written.append(base.with_name(base.name + ".png"))
    if store is not None:
        written.append(store.commit())
        data["scores"] = {"file": store.final.name, "format": "zarr", "shape": list(store.shape)}
    else:
        npy = base.with_name(base.name + ".scores.npy")
        with atomic_path(npy) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(result.scores, dtype=np.float32))
        written.append(npy)
        data["scores"] = {"file": npy.name, "format": "npy", "shape": list(np.shape(result.scores))}
    if heatmap:
        tif = base.with_name(base.name + ".heatmap.tif")
        scores = store.read() if store is not None else result.scores
        written.append(write_heatmap(tif, scores, result.placement, result.model.stride, result.centre0(),
                                     result.model.labels))
        data["heatmap"] = {"file": tif.name}
    js = base.with_name(base.name + ".json")
    write_text_atomic(js, dumps(data) + "\n")
    written.append(js)
    return written
