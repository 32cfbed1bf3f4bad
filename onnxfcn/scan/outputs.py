"""Writing a result: NAME.png, NAME.scores.npy and NAME.json, each whole or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io import atomic_path, commit, temp_beside, write_text_atomic
from ..jsonout import dumps

if TYPE_CHECKING:
    from .result import ScanResult


class ScoresFile:
    """A float32 K x out_h x out_w .npy beside ``path``, filled tile by tile. Each write maps the
    file, fills one block and unmaps it, so resident memory stays a tile's, not the map's."""

    def __init__(self, path: Path, shape: tuple[int, int, int]) -> None:
        self.tmp = temp_beside(path)
        self.shape = shape
        np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=shape).flush()

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        arr = np.load(self.tmp, mmap_mode="r+", allow_pickle=False)
        arr[key] = value
        del arr  # unmapped: the kernel writes the pages back (a flush here would sync the whole file)

    def read(self) -> np.ndarray:
        """The whole map, mapped read-only (its pages load only where read)."""
        return np.load(self.tmp, mmap_mode="r", allow_pickle=False)


def write_result(result: ScanResult, out_dir: Path, cls: str | int | None = None, display_scale: float = 1.0,
                 png: bool = True, scores_tmp: str | None = None) -> list[Path]:
    """DIR/NAME.png, DIR/NAME.scores.npy and DIR/NAME.json, each written whole or not at all;
    the JSON last, so that a JSON present means the input's files are complete."""
    base = out_dir / result.name
    written = []
    data = result.to_dict()
    if png:
        k = result.save_png(base.with_name(base.name + ".png"), cls, display_scale)
        data["picture"] = {"file": base.name + ".png", "class": k, "label": result.label(k)}
        written.append(base.with_name(base.name + ".png"))
    npy = base.with_name(base.name + ".scores.npy")
    if scores_tmp is not None:  # a ScoresFile, already filled tile by tile
        commit(scores_tmp, npy)
    else:
        with atomic_path(npy) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(result.scores, dtype=np.float32))
    written.append(npy)
    js = base.with_name(base.name + ".json")
    write_text_atomic(js, dumps(data) + "\n")
    written.append(js)
    return written
