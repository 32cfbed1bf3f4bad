"""What every reader shares: where the scanned pixels lie (pyramid level, physical pixel size,
georeference), choosing a level, matching an image's channels to the model's, a cache of decoded
file tiles so that overlapping scan tiles decode each of the file's tiles once, and the fields and
reading of a file with levels (``LevelledSource``)."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import OnnxFcnError
from ...preprocess import Preprocess


@dataclass(frozen=True)
class GeoRef:
    """A GeoTIFF's georeference, for the scanned level: the model coordinates of pixel (0, 0)'s
    outer corner and the size of one pixel (x right, y up: row r lies at origin_y - r * pixel_y),
    and the GeoKey directory with its parameters, copied as they are to what scan writes."""

    origin: tuple[float, float]
    pixel: tuple[float, float]
    keys: tuple[int, ...] = ()
    doubles: tuple[float, ...] = ()
    ascii: str = ""

    def scaled(self, factor: float) -> GeoRef:
        """The same georeference for pixels ``factor`` times larger (a coarser level)."""
        return GeoRef(self.origin, (self.pixel[0] * factor, self.pixel[1] * factor), self.keys, self.doubles, self.ascii)


@dataclass(frozen=True)
class Placement:
    """Where the scanned pixels lie in the file: the pyramid level read, level-0 pixels per
    scanned pixel, micrometres per scanned pixel (microscopy) and a georeference (GeoTIFF)."""

    level: int = 0
    levels: int = 1
    downsample: float = 1.0
    mpp: float | None = None
    georef: GeoRef | None = None

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {"level": self.level, "levels": self.levels, "downsample": self.downsample}
        if self.mpp is not None:
            d["mpp"] = self.mpp
        return d


@dataclass(frozen=True)
class Level:
    """One level of a pyramid: its size, and level-0 pixels per pixel."""

    height: int
    width: int
    downsample: float


def choose_level(levels: Sequence[Level], level: int | None, mpp: float | None, mpp0: float | None,
                 name: str) -> int:
    """``level`` (checked), or the level nearest to ``mpp`` micrometres per pixel (on a log scale)
    given level 0's ``mpp0``, or level 0."""
    if level is not None:
        if not 0 <= level < len(levels):
            raise OnnxFcnError(f"{name}: --level {level}: the file has levels 0..{len(levels) - 1}")
        return level
    if mpp is None:
        return 0
    if mpp0 is None:
        raise OnnxFcnError(f"{name}: --mpp {mpp:g}: the file states no pixel size; choose a level with --level")
    return min(range(len(levels)), key=lambda k: abs(math.log(mpp0 * levels[k].downsample / mpp)))


def to_channels(pixels: np.ndarray, channels: int, name: str) -> np.ndarray:
    """H x W x C pixels as the model's ``channels``: grey from RGB (Pillow's "L" weights), RGB
    from grey, the alpha band dropped; any other count must equal the model's."""
    c = pixels.shape[2]
    if c == channels:
        return pixels
    if channels == 1 and c in (3, 4):
        rgb = pixels[..., :3].astype(np.uint32)
        grey = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
        return grey.astype(pixels.dtype)[..., None]
    if channels == 3 and c == 4:
        return pixels[..., :3]
    if channels == 3 and c == 1:
        return np.repeat(pixels, 3, axis=2)
    raise OnnxFcnError(f"{name}: the image has {c} channels; the model reads {channels}")


def as_display(pixels: np.ndarray) -> np.ndarray:
    """Pixels as H x W x 3 uint8 for a picture (other dtypes stretched between their 1st and 99th percentile)."""
    x = pixels[..., :3] if pixels.shape[2] >= 3 else pixels[..., :1]
    if x.dtype != np.uint8:
        lo, hi = (float(v) for v in np.percentile(x, [1, 99]))
        hi = hi if hi > lo else lo + 1.0
        x = np.clip((x.astype(np.float32) - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else np.ascontiguousarray(x)


def fit_scale(height: int, width: int, max_side: int) -> float:
    """The scale that fits the longer side in ``max_side`` (never above 1)."""
    return min(1.0, max_side / max(height, width, 1))


# A picture or a mask is read from a level down to this share of the size wanted, then scaled up
# a little: a picture of 2048 px comes from a 2000 px level, never from the next one up (4000).
THUMB_LEVEL_SHARE = 0.75


def thumbnail_level(levels: Sequence[Level], level: int, want: float) -> tuple[int, int]:
    """For a picture whose longer side is ``want`` pixels of a scan of ``level``: the smallest
    level (never finer than ``level``) at least ``THUMB_LEVEL_SHARE`` of that, and the step of a
    strided read of it where no level is small enough."""
    base = levels[level].downsample
    k = max((k for k, lv in enumerate(levels)
             if lv.downsample >= base and max(lv.height, lv.width) >= THUMB_LEVEL_SHARE * want),
            key=lambda k: levels[k].downsample, default=level)
    return k, max(1, int(max(levels[k].height, levels[k].width) / max(want, 1)))


def resized(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """An H x W x C uint8 picture resized to h x w (bilinear)."""
    from PIL import Image

    if img.shape[:2] == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize((max(w, 1), max(h, 1)), Image.Resampling.BILINEAR))


class TileCache:
    """Decoded tiles of a tiled file, least recently used first out, up to ``budget`` bytes.
    ``decode(ty0, ty1, tx0, tx1)`` gives the pixels of file tiles ty0..ty1-1 by tx0..tx1-1 of
    ``tile`` = (th, tw) pixels (shorter at the edges), in one read (zarr decodes them in parallel). A region is assembled from its tiles, each decoded once while it stays in the
    cache: the scan's tiles overlap by a receptive field, the file's tiles do not."""

    def __init__(self, shape: tuple[int, int, int], tile: tuple[int, int], dtype: np.dtype,
                 decode: Callable[[int, int, int, int], np.ndarray], budget: int = 256 * 2**20) -> None:
        self.shape, self.tile, self.dtype, self.decode, self.budget = shape, tile, dtype, decode, budget
        self._tiles: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.decoded = 0  # how many file tiles were decoded (tests, and the report)

    def _fill(self, keys: list[tuple[int, int]]) -> None:
        """Decode the tiles ``keys`` not in the cache: each row's run of missing tiles in one read."""
        with self._lock:
            missing = sorted(k for k in keys if k not in self._tiles)
        runs: list[tuple[int, int, int]] = []  # (row, first column, last column + 1)
        for ty, tx in missing:
            if runs and runs[-1][0] == ty and runs[-1][2] == tx:
                runs[-1] = (ty, runs[-1][1], tx + 1)
            else:
                runs.append((ty, tx, tx + 1))
        th, tw = self.tile
        for ty, tx0, tx1 in runs:
            box = self.decode(ty, ty + 1, tx0, tx1)
            with self._lock:
                for tx in range(tx0, tx1):
                    block = np.array(box[:, (tx - tx0) * tw:(tx - tx0 + 1) * tw])
                    self.decoded += 1
                    self._tiles[ty, tx] = block
                    self._bytes += block.nbytes
        with self._lock:
            wanted = set(keys)
            for key in list(self._tiles):  # least recently used first; never one this region needs
                if self._bytes <= self.budget:
                    break
                if key not in wanted:
                    self._bytes -= self._tiles.pop(key).nbytes

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        th, tw = self.tile
        keys = [(ty, tx) for ty in range(y0 // th, (y1 - 1) // th + 1) for tx in range(x0 // tw, (x1 - 1) // tw + 1)]
        self._fill(keys)
        out = np.empty((y1 - y0, x1 - x0, self.shape[2]), dtype=self.dtype)
        with self._lock:
            for ty, tx in keys:
                block = self._tiles[ty, tx]
                self._tiles.move_to_end((ty, tx))
                ay, ax = ty * th, tx * tw
                sy0, sy1 = max(y0, ay), min(y1, ay + block.shape[0])
                sx0, sx1 = max(x0, ax), min(x1, ax + block.shape[1])
                out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = block[sy0 - ay:sy1 - ay, sx0 - ax:sx1 - ax]
        return out


@dataclass(kw_only=True)
class LevelledSource:
    """One level of a file with levels (TIFF, Zarr, a slide), read a region at a time: what its
    readers share. A reader adds ``pixels`` (the raw region) and ``thumbnail``. Picklable: the open
    file is left behind (``_open``), and a Dask worker that receives the source opens it itself."""

    name: str
    path: str
    level: int
    channels: int  # the model's
    preprocess: Preprocess
    height: int
    width: int
    placement: Placement
    levels: list[Level]
    _open: dict[Any, Any] = field(default_factory=dict, repr=False)
    lazy = True  # read from its file a region at a time

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_open"} | {"_open": {}}

    def pixels(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        raise NotImplementedError

    def read(self, y0: int, y1: int, x0: int, x1: int, chw: bool = False) -> np.ndarray:
        return self.preprocess.apply(to_channels(self.pixels(y0, y1, x0, x1), self.channels, self.name), chw)
