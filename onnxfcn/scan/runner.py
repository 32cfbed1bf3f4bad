"""``Runner``: one onnxruntime session of a converted model, loaded once and run on regions."""

from __future__ import annotations

import numpy as np

from ..errors import OnnxFcnError
from ..runtime import make_session, onnxruntime_errors, release_free_memory
from .model import ScanModel
from .sources import Source
from .tiles import Tile


class Runner:
    """One onnxruntime session of a converted model, loaded once and run on regions of inputs."""

    def __init__(self, model: ScanModel, provider: str = "cpu") -> None:
        self.model = model
        self.session = make_session(model.source, provider, arena=False)

    def run(self, x: np.ndarray) -> np.ndarray:
        """H x W x C model values -> K x out_h x out_w float32 scores."""
        m = self.model
        feed = (x.transpose(2, 0, 1) if m.layout == "NCHW" else x)[None].astype(m.dtype, copy=False)
        where = f"input {x.shape[0]}x{x.shape[1]}"
        with onnxruntime_errors(where, f"the model failed on a {x.shape[0]}x{x.shape[1]} input"):
            y = self.session.run([m.output_name], {m.input_name: np.ascontiguousarray(feed)})[0]
        k, h, w = m.axes
        return np.ascontiguousarray(y[0].transpose(k - 1, h - 1, w - 1), dtype=np.float32)

    def run_tile(self, source: Source, t: Tile) -> np.ndarray:
        """The kept cells of one tile, K x (i1 - i0) x (j1 - j0)."""
        return self.run_region(source.read(t.y0, t.y1, t.x0, t.x1), t)

    def run_region(self, x: np.ndarray, t: Tile) -> np.ndarray:
        """The kept cells of tile ``t``, whose input values (H x W x C) are ``x``."""
        kept = self.keep(self.run(x), t).copy()
        release_free_memory()  # tiles of a few sizes, run after one another: keep the peak a tile's
        return kept

    def keep(self, y: np.ndarray, t: Tile) -> np.ndarray:
        """Of a tile's output, the cells it keeps: its first cell is the image's (y0, x0) / stride."""
        di, dj = t.i0 - t.y0 // self.model.stride[0], t.j0 - t.x0 // self.model.stride[1]
        hi, wj = di + t.i1 - t.i0, dj + t.j1 - t.j0
        # Fewer cells than planned, or cells past the image's last (a grid shape inference got
        # wrong): never stitched silently.
        if y.shape[1] < hi or y.shape[2] < wj or (t.last_row and y.shape[1] > hi) or (t.last_col and y.shape[2] > wj):
            raise OnnxFcnError(f"a tile at rows {t.y0}:{t.y1}, columns {t.x0}:{t.x1} gave {y.shape[1]}x{y.shape[2]} "
                               f"cells where {hi}x{wj} were planned: the model's grid is not the one its shapes "
                               "give; scan it without --tile")
        return y[:, di:hi, dj:wj]
