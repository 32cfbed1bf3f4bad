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
        # The memory arena makes runs on slides' large tiles 1.5 to 2 times faster; it keeps what the
        # largest tile needed, and tiles come in a few sizes only (release_free_memory below).
        self.session = make_session(model.source, provider, arena=True)

    def prepare(self, x: np.ndarray, chw: bool = False) -> np.ndarray:
        """Model values (H x W x C, or ``chw`` C x H x W) as the model's input, 1 x C x H x W (or
        NHWC), contiguous: done in the thread that reads the next tile."""
        m = self.model
        if not chw and m.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        elif chw and m.layout == "NHWC":
            x = x.transpose(1, 2, 0)
        return np.ascontiguousarray(x[None].astype(m.dtype, copy=False))

    def read(self, source: Source, t: Tile) -> np.ndarray:
        """Tile ``t`` of ``source`` as the model's input (read channels first for an NCHW model)."""
        chw = self.model.layout == "NCHW"
        return self.prepare(source.read(t.y0, t.y1, t.x0, t.x1, chw=chw), chw=chw)

    def run(self, x: np.ndarray) -> np.ndarray:
        """H x W x C model values (or ``prepare``'s feed) -> K x out_h x out_w float32 scores."""
        m = self.model
        feed = x if x.ndim == 4 else self.prepare(x)
        hw = feed.shape[2:] if m.layout == "NCHW" else feed.shape[1:3]
        where = f"input {hw[0]}x{hw[1]}"
        with onnxruntime_errors(where, f"the model failed on a {hw[0]}x{hw[1]} input"):
            y = self.session.run([m.output_name], {m.input_name: feed})[0]
        k, h, w = m.axes
        return np.ascontiguousarray(y[0].transpose(k - 1, h - 1, w - 1), dtype=np.float32)

    def run_tile(self, source: Source, t: Tile) -> np.ndarray:
        """The kept cells of one tile, K x (i1 - i0) x (j1 - j0)."""
        return self.run_region(self.read(source, t), t)

    def run_region(self, x: np.ndarray, t: Tile) -> np.ndarray:
        """The kept cells of tile ``t``, whose input values (H x W x C, or ``prepare``'s feed) are ``x``."""
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
