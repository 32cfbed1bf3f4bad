"""Scores of a tiled scan in a Zarr array, K x out_h x out_w float32, one chunk per tile.

The array is written under a hidden partial name beside its final one (``.NAME.scores.zarr.partial``),
one tile at a time, by this process or by Dask workers; cells never written read as NaN (the
background that was skipped). After a tile's chunk is written an empty marker records it
(``done/I_J``): a scan killed at any moment leaves every recorded tile whole, and ``--resume``
runs only the others. The options the partial array was made with are stored beside it and must
match to resume. When the scan is complete the array is renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import OnnxFcnError

log = logging.getLogger(__name__)
_SIGNATURE = "onnxfcn-scan.json"


def _zarr() -> Any:
    try:
        import zarr
    except ImportError:
        raise OnnxFcnError("tiled scans write their scores with zarr: pip install zarr") from None
    return zarr


@dataclass
class ScoresZarr:
    """Where a tiled scan's scores go. Picklable: a Dask worker that receives it writes its own
    tiles' chunks and markers."""

    final: Path
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    _array: Any = field(default=None, repr=False)

    @property
    def partial(self) -> Path:
        return self.final.with_name(f".{self.final.name}.partial")

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_array"} | {"_array": None}

    @classmethod
    def create(cls, final: Path, shape: tuple[int, int, int], chunks: tuple[int, int, int],
               signature: dict[str, Any], attrs: dict[str, Any], resume: bool) -> ScoresZarr:
        """A new partial array, or (``resume``) the partial one a killed scan with the same
        ``signature`` left."""
        store = cls(final, shape, chunks)
        part = store.partial
        if part.exists():
            found = store._signature()
            if resume and found == json.loads(json.dumps(signature)):
                log.info("resuming %s: %d tiles already done", part, len(store.done()))
                return store
            if resume:
                raise OnnxFcnError(f"--resume: {part} was made by a scan with other inputs or options; remove it "
                                   "to start again")
            shutil.rmtree(part)
        elif resume:
            log.info("--resume: no partial scan at %s; starting from the first tile", part)
        zarr = _zarr()
        arr = zarr.create_array(str(part), shape=shape, chunks=chunks, dtype="float32", fill_value=np.nan,
                                compressors=None, dimension_names=("class", "y", "x"), zarr_format=3)
        arr.attrs.update(attrs)
        (part / "done").mkdir()
        tmp = part / f".{_SIGNATURE}.tmp"
        tmp.write_text(json.dumps(signature))
        os.replace(tmp, part / _SIGNATURE)  # last: a partial array without it is not resumable
        return store

    def _signature(self) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = json.loads((self.partial / _SIGNATURE).read_text())
            return found
        except (OSError, ValueError):
            return None

    def _open(self) -> Any:
        if self._array is None:
            self._array = _zarr().open_array(str(self.partial), mode="r+")
        return self._array

    def done(self) -> set[tuple[int, int]]:
        """The tiles (their first cell, i0 and j0) whose chunks are written."""
        folder = self.partial / "done"
        return {tuple(int(v) for v in f.name.split("_")) for f in folder.iterdir()} if folder.is_dir() else set()  # type: ignore[misc]

    def write(self, i0: int, j0: int, block: np.ndarray) -> None:
        """A tile's cells (K x rows x columns, from cell (i0, j0)), then its marker."""
        self._open()[:, i0:i0 + block.shape[1], j0:j0 + block.shape[2]] = block
        (self.partial / "done" / f"{i0}_{j0}").touch()

    def read(self) -> Any:
        """The array, for reading (chunks load where read): the partial one, or once committed the final one."""
        return _zarr().open_array(str(self.partial if self.partial.exists() else self.final), mode="r")

    def commit(self) -> Path:
        """The complete array renamed into place (a previous one replaced), markers dropped."""
        shutil.rmtree(self.partial / "done", ignore_errors=True)
        (self.partial / _SIGNATURE).unlink(missing_ok=True)
        old = self.final.with_name(f".{self.final.name}.old")
        if self.final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.final, old)
        os.replace(self.partial, self.final)
        shutil.rmtree(old, ignore_errors=True)
        return self.final

    def discard_if_empty(self) -> None:
        """After a failure: a partial array with no tile done is removed (nothing to resume)."""
        if self.partial.exists() and not self.done():
            shutil.rmtree(self.partial, ignore_errors=True)
