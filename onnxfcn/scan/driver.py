"""``scan``: run a converted model on an input of any size, in one pass or in tiles, and collect
the score map, each cell's best class and the best cells.

A tiled scan plans its tiles (``tiles.py``), leaves out those with no foreground
(``--skip-background``, ``background.py``) and those a killed scan already wrote (``--resume``,
``outputs/zarr.py``), reads the next tile while the model runs on this one (a prefetch thread),
and writes each tile's cells where they go (an array in memory, or the Zarr store a folder scan
writes). The summaries (each cell's best class, each class's best score) are read off the whole
map afterwards, a block of rows at a time.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..errors import OnnxFcnError
from ..geometry import check_on_lattice
from ..preprocess import Preprocess
from .background import MASK_SIDE, Foreground, cell_foreground, require_pixels
from .model import ScanModel
from .outputs.zarr import ScoresZarr
from .result import ScanResult, select_cells, summarize
from .runner import Runner
from .sources import ReadOptions, Source, open_input
from .tiles import Tile, choose_tile, crop_tile, plan_tiles

log = logging.getLogger(__name__)

# progress(tiles done, tiles in all, input pixels done)
Progress = Callable[[int, int, int], None]
# Where a tiled scan's scores go, given the K x out_h x out_w shape and the chunk (one tile's cells).
StoreFor = Callable[[tuple[int, int, int], tuple[int, int, int]], ScoresZarr]
# Runs the tiles elsewhere (Dask), each with its cells' foreground (None: every cell), writing
# them to the store there where there is one; yields each tile and its cells (None: written).
TilesRun = Callable[[list[tuple[Tile, np.ndarray | None]], ScoresZarr | None],
                    Iterator[tuple[Tile, np.ndarray | None]]]


def masked(block: np.ndarray, foreground: np.ndarray | None) -> np.ndarray:
    """A tile's cells with those whose window is all background set to NaN."""
    return block if foreground is None else np.where(foreground[None], block, np.nan).astype(np.float32)


def run_tile(runner: Runner, source: Source, t: Tile, foreground: np.ndarray | None,
             store: ScoresZarr | None) -> np.ndarray | None:
    """One tile, run where it is called (here or on a Dask worker): written to ``store``, or returned."""
    block = masked(runner.run_tile(source, t), foreground)
    if store is None:
        return block
    store.write(t.i0, t.j0, block)
    return None


@dataclass(frozen=True, kw_only=True)
class ScanOptions:
    """How to scan: which cells to keep, tiles, memory, provider, background."""

    top: int | None = 5
    threshold: float | None = None
    softmax: bool = False
    tile: int | None = None  # None: one pass, or tiles when one pass would not fit the budget
    max_memory: int | None = None
    provider: str = "cpu"
    skip_background: bool = False
    nms: float | None = None  # leave out cells overlapping a better listed one by more than this IoU

    def __post_init__(self) -> None:
        if self.nms is not None and not 0 <= self.nms < 1:
            raise OnnxFcnError("--nms must be an overlap (intersection over union) from 0 up to, not including, 1")
        if self.top is not None and self.top < 0:
            raise OnnxFcnError("--top must be at least 0")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise OnnxFcnError("--threshold must be a finite number")
        if self.tile is not None and self.tile < 1:
            raise OnnxFcnError("--tile must be a positive number of pixels")


@dataclass
class _Plan:
    """The tiles of one input, and which of them run."""

    tiles: list[Tile]
    run: list[Tile]
    one_pass: bool
    tile_side: int | None
    foreground: np.ndarray | None  # per cell, with --skip-background
    skipped: int = 0  # tiles with no foreground
    resumed: int = 0  # tiles a killed scan already wrote


def _foreground(model: ScanModel, source: Source, grid: tuple[int, int]) -> tuple[np.ndarray, Foreground]:
    require_pixels(source, source.name)
    thumb, scale = source.thumbnail(MASK_SIDE)
    fg = Foreground.of(thumb, scale)
    (oy, ox), (wh, ww) = ((model.offset, model.window) if model.mode == "window"
                          else (model.field_start, model.receptive_field))
    return cell_foreground(fg, grid, (oy, ox), (wh, ww), model.stride), fg


# What one tile costs besides its pixels (a session run, a read, the stitching), in input pixels.
TILE_COST = 512 * 512


def foreground_tiles(model: ScanModel, h: int, w: int, tiles: list[Tile], foreground: np.ndarray) -> list[Tile]:
    """The tiles with foreground, each cropped to the cells from its first to its last foreground
    row and column: glass along a tile's edges is neither read nor run."""
    out = []
    for t in tiles:
        fg = foreground[t.i0:t.i1, t.j0:t.j1]
        rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
        if rows.size:
            out.append(crop_tile(model, h, w, t.i0 + int(rows[0]), t.i0 + int(rows[-1]) + 1,
                                 t.j0 + int(cols[0]), t.j0 + int(cols[-1]) + 1))
    return out


def background_tile(model: ScanModel, h: int, w: int, largest: int, foreground: np.ndarray) -> int:
    """With --skip-background: the tile side, from ``largest`` (what the memory budget allows)
    down to four fields, that reads and runs the fewest pixels over its foreground tiles (each
    also costs ``TILE_COST``). Smaller tiles leave more glass out but overlap more."""
    smallest = max(4 * max(model.receptive_field), 256)
    best, side = (math.inf, largest), largest
    while True:
        run = foreground_tiles(model, h, w, plan_tiles(model, h, w, side), foreground)
        best = min(best, (sum((t.y1 - t.y0) * (t.x1 - t.x0) + TILE_COST for t in run), side))
        if side * 3 // 4 < smallest:
            return best[1]
        side = side * 3 // 4


def _plan(model: ScanModel, source: Source, opts: ScanOptions, grid: tuple[int, int], lazy: bool) -> _Plan:
    h, w = source.height, source.width
    side = choose_tile(model, h, w, opts.tile, opts.max_memory, lazy)
    fg_cells = _foreground(model, source, grid)[0] if opts.skip_background else None
    if fg_cells is not None and opts.tile is None:
        largest = side if side is not None else max(h, w)
        chosen = background_tile(model, h, w, largest, fg_cells)
        side = None if side is None and chosen == largest else chosen
    if side is None:
        return _Plan([Tile(0, h, 0, w, 0, grid[0], 0, grid[1], True, True)], [], True, None, fg_cells)
    tiles = plan_tiles(model, h, w, side)
    run = tiles if fg_cells is None else foreground_tiles(model, h, w, tiles, fg_cells)
    return _Plan(tiles, run, False, side, fg_cells, skipped=len(tiles) - len(run))


def _prefetched(tiles: list[Tile], read: Callable[[Tile], np.ndarray]) -> Iterator[tuple[Tile, np.ndarray]]:
    """Each tile's input, read in a thread one tile ahead of the model (decoding overlaps inference)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxfcn-read") as pool:
        ahead: list[tuple[Tile, Future[np.ndarray]]] = []
        for t in tiles:
            ahead.append((t, pool.submit(read, t)))
            if len(ahead) > 1:
                done, fut = ahead.pop(0)
                yield done, fut.result()
        for done, fut in ahead:
            yield done, fut.result()


class _Scores:
    """The map the tiles fill: the Zarr store, or an array in memory (made at the first tile)."""

    def __init__(self, grid: tuple[int, int], chunk: tuple[int, int], store_for: StoreFor | None) -> None:
        self.grid, self.chunk, self.store_for = grid, chunk, store_for
        self.store: ScoresZarr | None = None
        self.array: np.ndarray | None = None

    def ready(self, classes: int) -> None:
        if self.store is None and self.array is None:
            shape = (classes, *self.grid)
            if self.store_for is not None:
                self.store = self.store_for(shape, (classes, *self.chunk))
            else:
                self.array = np.full(shape, np.nan, np.float32)

    def write(self, t: Tile, block: np.ndarray) -> None:
        self.ready(block.shape[0])
        if self.store is not None:
            self.store.write(t.i0, t.j0, block)
        else:
            assert self.array is not None
            self.array[:, t.i0:t.i1, t.j0:t.j1] = block

    def map(self, classes: int | None) -> Any:
        if self.store is None and self.array is None:  # every tile was background, or resumed
            if classes is None:
                raise OnnxFcnError("no tile has foreground, and the model states no class count: nothing to scan")
            self.ready(classes)
        return self.store.read() if self.store is not None else self.array


def _chunk(plan: _Plan) -> tuple[int, int]:
    first = plan.tiles[0]
    return first.i1 - first.i0, first.j1 - first.j0


def scan_source(runner: Runner | None, model: ScanModel, source: Source, opts: ScanOptions,
                progress: Progress | None = None, store_for: StoreFor | None = None,
                tiles_run: TilesRun | None = None) -> ScanResult:
    """Scan one input with ``runner``. A tiled scan writes its cells into ``store_for(shape,
    chunks)`` (a Zarr store; default: an array in memory); ``tiles_run`` runs the tiles elsewhere."""
    t0 = time.perf_counter()
    h, w = source.height, source.width
    check_on_lattice(h, w, model.lattice, f"{source.name}: the input size")
    grid = model.grid(h, w)
    if grid[0] < 1 or grid[1] < 1:
        raise OnnxFcnError(f"{source.name}: the input is {h}x{w}, smaller than the model's {model.window[0]}x"
                           f"{model.window[1]} window: no cell fits")
    plan = _plan(model, source, opts, grid, lazy=bool(getattr(source, "lazy", False)))
    if plan.one_pass:
        assert runner is not None
        scores = runner.run(source.read(0, h, 0, w))  # one pass: its own grid is the grid
        grid = (scores.shape[1], scores.shape[2])
        if plan.foreground is not None:
            scores = np.where(plan.foreground[None], scores, np.nan).astype(np.float32)
        if progress is not None:
            progress(1, 1, h * w)
    else:
        scores = _run_tiles(runner, model, source, plan, grid, store_for, tiles_run, progress)
    summary = summarize(scores, opts.softmax)
    if model.labels is not None and len(model.labels) != scores.shape[0]:
        log.warning("the model has %d labels for %d classes", len(model.labels), scores.shape[0])
    cells = select_cells(model, summary.best, summary.best_class, (h, w), opts.top, opts.threshold,
                         source.placement.downsample, opts.nms)
    seconds = time.perf_counter() - t0
    return ScanResult(name=source.name, size=(h, w), grid=grid, model=model, scores=scores, best=summary.best,
                      best_class=summary.best_class, class_max=summary.class_max, confidence=summary.confidence,
                      cells=cells, tiles=len(plan.tiles),
                      tiles_exact=len(plan.tiles) == 1 or not model.global_context, softmax=opts.softmax,
                      seconds=seconds, source=source, placement=source.placement,
                      background=_background(plan, grid), run=_run_report(model, plan, h, w, seconds))


def _run_tiles(runner: Runner | None, model: ScanModel, source: Source, plan: _Plan, grid: tuple[int, int],
               store_for: StoreFor | None, tiles_run: TilesRun | None, progress: Progress | None) -> Any:
    scores = _Scores(grid, _chunk(plan), store_for)
    if store_for is not None and model.classes is not None:  # made now, the store knows what a killed scan left
        scores.ready(model.classes)
        assert scores.store is not None
        done = scores.store.done()
        run = [t for t in plan.run if (t.i0, t.j0) not in done]
        plan.resumed = len(plan.run) - len(run)
        plan.run = run
    total = len(plan.run)
    pixels = source.height * source.width
    work = [(t, None if plan.foreground is None else plan.foreground[t.i0:t.i1, t.j0:t.j1]) for t in plan.run]
    if tiles_run is not None:
        runs: Iterator[tuple[Tile, np.ndarray | None]] = tiles_run(work, scores.store)
    else:
        assert runner is not None
        masks = dict(work)
        runs = ((t, masked(runner.run_region(x, t), masks[t]))
                for t, x in _prefetched(plan.run, lambda t: runner.read(source, t)))
    for k, (t, block) in enumerate(runs, 1):
        if block is not None:
            scores.write(t, block)
        if progress is not None:
            progress(k, total, round(pixels * k / max(total, 1)))
    return scores.map(model.classes)


def _background(plan: _Plan, grid: tuple[int, int]) -> dict[str, Any] | None:
    if plan.foreground is None:
        return None
    cells = grid[0] * grid[1]
    skipped = int(cells - plan.foreground.sum())
    return {"tiles": len(plan.tiles), "tiles_skipped": plan.skipped, "cells": cells, "cells_skipped": skipped,
            "fraction_skipped": skipped / cells if cells else 0.0}


def _run_report(model: ScanModel, plan: _Plan, h: int, w: int, seconds: float) -> dict[str, Any]:
    """The tile size, what the tiles' overlap costs (input pixels read per pixel of the image),
    the tiles resumed, and the input megapixels per second."""
    d: dict[str, Any] = {"seconds": round(seconds, 3), "mp_per_s": round(h * w / 1e6 / max(seconds, 1e-9), 2)}
    if plan.tile_side is not None:
        read = sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in plan.tiles)
        d |= {"tile": plan.tile_side, "overlap_overhead": round(read / (h * w), 3), "tiles_resumed": plan.resumed}
    return d


def scan(model: str | os.PathLike[str] | onnx.ModelProto | ScanModel, image: str | os.PathLike[str] | np.ndarray, *,
         top: int | None = 5, threshold: float | None = None, softmax: bool = False, tile: int | None = None,
         preprocess: Preprocess | None = None, provider: str = "cpu", max_memory: int | None = None,
         progress: Progress | None = None, level: int | None = None, mpp: float | None = None,
         skip_background: bool = False, nms: float | None = None) -> ScanResult:
    """Run a converted model on one input of any size; return its score maps and best cells.

    ``image``: an image file (preprocessed as the model's metadata says, or as ``preprocess``), a
    TIFF, Zarr or whole-slide image (``level``, or the level nearest ``mpp`` micrometres per pixel,
    by default the model's training resolution), a ``.npy`` file, or an array of model values
    (H x W, H x W x C or C x H x W). ``top``: keep the best cells (None: all); ``threshold``: keep
    every cell whose best score is at least this. ``tile``: run in tiles of about this many pixels
    a side (the stitched map equals one pass). ``skip_background``: never run tiles of glass.
    ``nms``: leave out cells whose box overlaps a better listed cell's by more than this IoU.
    """
    sm = model if isinstance(model, ScanModel) else ScanModel.load(model)
    opts = ScanOptions(top=top, threshold=threshold, softmax=softmax, tile=tile, max_memory=max_memory,
                       provider=provider, skip_background=skip_background, nms=nms)
    from .sources import read_options

    source = open_input(image, sm, read_options(sm, preprocess, level, mpp, max_memory))
    return scan_source(Runner(sm, provider), sm, source, opts, progress)


__all__ = ["Progress", "ReadOptions", "ScanOptions", "scan", "scan_source"]
