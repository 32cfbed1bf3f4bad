"""``scan``: run a converted model on an input of any size, in one pass or in tiles, and collect
the score map, each cell's best class and the best cells."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import OnnxFcnError
from ..geometry import check_on_lattice
from ..preprocess import Preprocess
from .model import ScanModel
from .outputs import ScoresFile
from .result import ScanResult, select_cells, softmax
from .runner import Runner
from .sources import Source, open_input
from .tiles import Tile, choose_tile, plan_tiles

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
# Where a tiled scan puts its K x out_h x out_w map (a file mapping, say), given the shape.
ScoresFor = Callable[[tuple[int, int, int]], ScoresFile]
# Runs the tiles elsewhere (Dask), yielding each tile's kept cells.
TilesRun = Callable[[list[Tile]], Iterator[tuple[Tile, np.ndarray]]]


@dataclass(frozen=True, kw_only=True)
class ScanOptions:
    """How to scan: which cells to keep, tiles, memory, provider."""

    top: int | None = 5
    threshold: float | None = None
    softmax: bool = False
    tile: int | None = None  # None: one pass, or tiles when one pass would not fit in memory
    max_memory: int | None = None
    provider: str = "cpu"

    def __post_init__(self) -> None:
        if self.top is not None and self.top < 0:
            raise OnnxFcnError("--top must be at least 0")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise OnnxFcnError("--threshold must be a finite number")
        if self.tile is not None and self.tile < 1:
            raise OnnxFcnError("--tile must be a positive number of pixels")


class _Collector:
    """The score map and the per-cell summaries, filled tile by tile."""

    def __init__(self, grid: tuple[int, int], use_softmax: bool, scores_for: ScoresFor | None) -> None:
        self.grid = grid
        self.softmax = use_softmax
        self.scores_for = scores_for
        self.scores: np.ndarray | ScoresFile | None = None
        self.best = np.full(grid, -np.inf, dtype=np.float32)
        self.best_class = np.zeros(grid, dtype=np.int32)
        self.class_max: np.ndarray | None = None

    def add(self, t: Tile, block: np.ndarray, whole: bool) -> None:
        """A tile's kept cells (``whole``: the one pass's output, the map itself)."""
        if whole:
            self.scores = block
        else:
            if self.scores is None:
                shape = (block.shape[0], *self.grid)
                self.scores = self.scores_for(shape) if self.scores_for is not None else np.empty(shape, np.float32)
            self.scores[:, t.i0:t.i1, t.j0:t.j1] = block
        if self.softmax:
            block = softmax(block)
        self.best[t.i0:t.i1, t.j0:t.j1] = block.max(axis=0)
        self.best_class[t.i0:t.i1, t.j0:t.j1] = block.argmax(axis=0)
        cm = block.reshape(block.shape[0], -1).max(axis=1)
        self.class_max = cm if self.class_max is None else np.maximum(self.class_max, cm)

    def map(self) -> np.ndarray:
        assert self.scores is not None
        return self.scores.read() if isinstance(self.scores, ScoresFile) else self.scores


def _runs(runner: Runner | None, model: ScanModel, source: Source, opts: ScanOptions,
          tiles_run: TilesRun | None) -> tuple[list[Tile], Iterator[tuple[Tile, np.ndarray]], bool]:
    """The tiles, the runs that give their cells, and whether it is one pass."""
    h, w = source.height, source.width
    tile = choose_tile(model, h, w, opts.tile, opts.max_memory)
    if tile is None and tiles_run is None:
        assert runner is not None
        first = runner.run(source.read(0, h, 0, w))  # one pass: its own grid is the grid
        whole = Tile(0, h, 0, w, 0, first.shape[1], 0, first.shape[2])
        return [whole], iter([(whole, first)]), True
    tiles = plan_tiles(model, h, w, tile if tile is not None else max(h, w))
    if tiles_run is not None:
        return tiles, tiles_run(tiles), False
    assert runner is not None
    return tiles, ((t, runner.run_tile(source, t)) for t in tiles), False


def scan_source(runner: Runner | None, model: ScanModel, source: Source, opts: ScanOptions,
                progress: Progress | None = None, scores_for: ScoresFor | None = None,
                tiles_run: TilesRun | None = None) -> ScanResult:
    """Scan one input with ``runner``. Tiled: ``scores_for(shape)`` gives where to put the
    K x out_h x out_w map, and ``tiles_run`` runs the tiles elsewhere (Dask)."""
    t0 = time.perf_counter()
    h, w = source.height, source.width
    check_on_lattice(h, w, model.lattice, f"{source.name}: the input size")
    gh, gw = model.grid(h, w)
    if gh < 1 or gw < 1:
        raise OnnxFcnError(f"{source.name}: the input is {h}x{w}, smaller than the model's {model.window[0]}x"
                           f"{model.window[1]} window: no cell fits")
    tiles, runs, one_pass = _runs(runner, model, source, opts, tiles_run)
    if one_pass:
        gh, gw = tiles[0].i1, tiles[0].j1
    collect = _Collector((gh, gw), opts.softmax, scores_for)
    for done, (t, block) in enumerate(runs, 1):
        collect.add(t, block, one_pass)
        if progress is not None:
            progress(done, len(tiles))
    scores = collect.map()
    assert collect.class_max is not None
    if model.labels is not None and len(model.labels) != scores.shape[0]:
        log.warning("the model has %d labels for %d classes", len(model.labels), scores.shape[0])
    cells = select_cells(model, collect.best, collect.best_class, (h, w), opts.top, opts.threshold)
    return ScanResult(name=source.name, size=(h, w), grid=(gh, gw), model=model, scores=scores, best=collect.best,
                      best_class=collect.best_class, class_max=collect.class_max, cells=cells, tiles=len(tiles),
                      tiles_exact=len(tiles) == 1 or not model.global_context, softmax=opts.softmax,
                      seconds=time.perf_counter() - t0, source=source)


def scan(model: str | os.PathLike[str] | onnx.ModelProto | ScanModel, image: str | os.PathLike[str] | np.ndarray, *,
         top: int | None = 5, threshold: float | None = None, softmax: bool = False, tile: int | None = None,
         preprocess: Preprocess | None = None, provider: str = "cpu", max_memory: int | None = None,
         progress: Progress | None = None) -> ScanResult:
    """Run a converted model on one input of any size; return its score maps and best cells.

    ``image``: an image file (preprocessed as the model's metadata says, or as ``preprocess``),
    a ``.npy`` file, or an array of model values (H x W, H x W x C or C x H x W). ``top``: keep the
    best cells (None: all); ``threshold``: keep every cell whose best score is at least this.
    ``tile``: run in tiles of about this many pixels a side (the stitched map equals one pass).
    """
    sm = model if isinstance(model, ScanModel) else ScanModel.load(model)
    opts = ScanOptions(top=top, threshold=threshold, softmax=softmax, tile=tile, max_memory=max_memory,
                       provider=provider)
    return scan_source(Runner(sm, provider), sm, open_input(image, sm, preprocess), opts, progress)
