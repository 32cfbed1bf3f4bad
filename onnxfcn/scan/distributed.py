"""Scan on Dask: one task per file for many inputs, one task per tile for a huge image.

Optional (``pip install 'onnxfcn[scale]'``). ``--workers N`` starts a local cluster of N worker
processes; ``--scheduler ADDRESS`` uses a running ``dask.distributed`` cluster, whose workers
must see the model and input paths. Each worker process loads the model once and keeps the
session for every later task. The tiles are those of the serial run (``tiles.plan_tiles``), so
the stitched result is the same. An input file (TIFF, Zarr, a slide, a ``.npy``) is opened by
each worker, which reads its own regions and writes its cells into the one Zarr store; only an
array passed from Python travels, as the overlapping tile regions of a ``dask.array``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OnnxFcnError
from ..preprocess import Preprocess
from .driver import ScanOptions, masked, run_tile, scan_source
from .model import ScanModel
from .outputs.zarr import ScoresZarr
from .result import ScanResult
from .runner import Runner
from .sources import ArraySource, ReadOptions, Source, open_input
from .tiles import Tile

log = logging.getLogger(__name__)

# In each worker process: the sessions it has loaded, by model, and how many loads it did.
_RUNNERS: dict[tuple[str, str], Runner] = {}
LOADS = {"count": 0}


def _key(model: ScanModel) -> str:
    src = model.source
    return src if isinstance(src, str) else hashlib.sha256(src).hexdigest()


def worker_runner(model: ScanModel, provider: str) -> Runner:
    """This process's session of ``model``, loaded on first use."""
    key = (_key(model), provider)
    if key not in _RUNNERS:
        _RUNNERS[key] = Runner(model, provider)
        LOADS["count"] += 1
        log.info("worker loaded the model (%d loads in this process)", LOADS["count"])
    return _RUNNERS[key]


def worker_loads() -> int:
    """How many times this process loaded a model (run on workers by the tests)."""
    return LOADS["count"]


@contextmanager
def client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A Dask client: a local cluster of ``workers`` processes, or the cluster at ``scheduler``."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise OnnxFcnError("--workers and --scheduler need Dask: pip install 'onnxfcn[scale]'") from None
    if scheduler is not None:
        try:
            c = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise OnnxFcnError(f"--scheduler {scheduler}: cannot connect: {exc}") from None
        try:
            yield c
        finally:
            c.close()
        return
    quiet = logging.getLogger().getEffectiveLevel() > logging.INFO
    previous = logging.getLogger("distributed").level
    if quiet:  # the scheduler runs in this process and logs every start and stop
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
    try:
        with LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=True, dashboard_address=":0",
                          silence_logs=logging.ERROR if quiet else logging.INFO) as cluster, Client(cluster) as c:
            yield c
    finally:
        logging.getLogger("distributed").setLevel(previous)


def _broadcast(c: Any, model: ScanModel) -> Any:
    """The model on every worker, under a key of this call's own. Scattered by content hash, a
    second scan of the same model shares the first one's key, and the first call's future, released
    when it is done, can take the data from under the second's tasks ("lost dependencies": seen
    in two of fourteen runs of the test that scans two batches)."""
    return c.scatter(model, broadcast=True, hash=False)


def _scan_file(model: ScanModel, path: str, opts: ScanOptions, read: ReadOptions | Preprocess | None) -> ScanResult:
    runner = worker_runner(model, opts.provider)
    return scan_source(runner, model, open_input(path, model, read), opts)


def scan_files(c: Any, model: ScanModel, files: Sequence[Path], opts: ScanOptions,
               read: ReadOptions | Preprocess | None) -> Iterator[ScanResult]:
    """One task per file, results in the files' order."""
    shared = _broadcast(c, model)
    futures = [c.submit(_scan_file, shared, str(f), opts, read, pure=False) for f in files]
    for fut in futures:
        yield fut.result()


def _tile_region(model: ScanModel, provider: str, region: np.ndarray, preprocess: Preprocess | None, t: Tile,
                 foreground: np.ndarray | None) -> np.ndarray:
    x = preprocess.apply(region) if preprocess is not None else np.asarray(region, dtype=np.float32)
    return masked(worker_runner(model, provider).run_region(x, t), foreground)


def _tile_file(model: ScanModel, provider: str, source: Source, t: Tile, foreground: np.ndarray | None,
               store: ScoresZarr | None) -> np.ndarray | None:
    return run_tile(worker_runner(model, provider), source, t, foreground, store)


def scan_tiled(c: Any, model: ScanModel, source: Source, opts: ScanOptions, progress: Any = None,
               store_for: Any = None) -> ScanResult:
    """One image, one task per tile; the tiles and the stitching are the serial run's. A file is
    opened by each worker, which reads its own regions and writes its cells into the store; an
    array in memory travels as the overlapping regions of a ``dask.array``."""
    import dask
    import dask.array as da
    from dask.distributed import as_completed

    shared = _broadcast(c, model)

    def run(work: list[tuple[Tile, np.ndarray | None]], store: ScoresZarr | None) -> Iterator[tuple[Tile, np.ndarray | None]]:
        if not work:
            return
        if not isinstance(source, ArraySource) or source.path is not None:  # workers read their own regions
            futures = [c.submit(_tile_file, shared, opts.provider, source, t, fg, store, pure=False) for t, fg in work]
        else:
            assert source.array is not None
            a = source.array
            data = a[:, :, None] if source.order == "HW" else (np.moveaxis(a, 0, -1) if source.order == "CHW" else a)
            side = max(t.y1 - t.y0 for t, _ in work)
            image = da.from_array(data, chunks=(side, side, data.shape[2]))
            futures = c.compute([dask.delayed(_tile_region)(shared, opts.provider, image[t.y0:t.y1, t.x0:t.x1], None,
                                                            t, fg) for t, fg in work])
        index = {f.key: t for f, (t, _) in zip(futures, work)}
        for fut, block in as_completed(futures, with_results=True):
            yield index[fut.key], block

    # Tiles even where one pass would fit: the point is to spread them.
    if opts.tile is None:
        raise OnnxFcnError("a single input on Dask runs in tiles: give --tile N")
    return scan_source(None, model, source, opts, progress, store_for, run)
