"""Tiles: stride-aligned regions of the input that overlap by what a cell depends on.

Cell i reads the input rows ``field_start + i * stride`` to ``+ receptive_field`` (the window
itself for exact models). A tile keeps only the cells whose field lies inside it, or crosses only
the image's own border; those see the same pixels and the same zero padding as in one pass, so
the stitched map equals the untiled one up to float rounding. A global pool inside the trunk
(squeeze-excitation) sees the whole image: there tiles change the result, and the report says so.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from ..errors import OnnxFcnError, ResourceError
from ..runtime import available_memory
from ..units import human_bytes
from .model import ScanModel

log = logging.getLogger(__name__)

# Auto-tiling: the untiled run may take this share of the memory available...
MEMORY_SHARE = 0.5
# ... and at most this for an input read from its file a tile at a time (a slide, a TIFF).
LAZY_BUDGET = 768 * 2**20


@dataclass(frozen=True)
class Tile:
    """Input rows y0:y1, columns x0:x1; it gives the image's cells rows i0:i1, columns j0:j1."""

    y0: int
    y1: int
    x0: int
    x1: int
    i0: int
    i1: int
    j0: int
    j1: int
    last_row: bool = False  # holds the image's last row of cells (and reaches its bottom edge)
    last_col: bool = False


def axis_tiles(n: int, cells: int, s: int, start: int, span: int, tile: int,
               period: int = 1) -> list[tuple[int, int, int, int]]:
    """Split one axis: (input a, b, cells c0, c1) with a a multiple of the stride, and every kept
    cell's field [start + c*s, + span) inside [a, b) or crossing only the image's own edge.
    ``period``: the model runs only at sizes n + k * period (its size lattice)."""
    per = max(1, (tile - span) // s + 1)
    out = []
    for c0 in range(0, cells, per):
        c1 = min(cells, c0 + per)
        out.append((*axis_span(n, cells, s, start, span, c0, c1, period), c0, c1))
    return out


def axis_span(n: int, cells: int, s: int, start: int, span: int, c0: int, c1: int, period: int = 1) -> tuple[int, int]:
    """The input a:b that cells c0:c1 of one axis are run on (``axis_tiles``' rules)."""
    q = math.lcm(s, period)
    lo, hi = start + c0 * s, start + (c1 - 1) * s + span
    a = 0 if lo <= 0 else lo // q * q
    if hi >= n or c1 == cells:  # the last cells' tile reaches the edge, where a cell more would show
        return a, n
    # A length congruent to the image's modulo the stride (and the lattice's period): SAME padding,
    # whose amount depends on the size, then pads the tile as it pads the image, and a model that
    # runs only at some sizes runs at the tile's.
    return a, min(n, hi + (n - hi) % q)


def crop_tile(model: ScanModel, height: int, width: int, i0: int, i1: int, j0: int, j1: int) -> Tile:
    """The tile that runs cells i0:i1 by j0:j1 only (a tile shrunk to its foreground's cells)."""
    gh, gw = model.grid(height, width)
    (fy, fx), (sy, sx), (ry, rx) = model.field_start, model.stride, model.receptive_field
    y0, y1 = axis_span(height, gh, sy, fy, ry, i0, i1, model.lattice[0][0])
    x0, x1 = axis_span(width, gw, sx, fx, rx, j0, j1, model.lattice[1][0])
    return Tile(y0, y1, x0, x1, i0, i1, j0, j1, i1 == gh, j1 == gw)


def plan_tiles(model: ScanModel, height: int, width: int, tile: int) -> list[Tile]:
    """Stride-aligned tiles of about ``tile`` x ``tile`` input pixels covering every cell once."""
    gh, gw = model.grid(height, width)
    spans = model.receptive_field
    if tile < max(spans):
        raise OnnxFcnError(f"--tile {tile} is smaller than what one cell depends on ({spans[0]}x{spans[1]} px: "
                           f"the {'window' if model.exact else 'receptive field'}); use at least {max(spans)}")
    rows = axis_tiles(height, gh, model.stride[0], model.field_start[0], spans[0], tile, model.lattice[0][0])
    cols = axis_tiles(width, gw, model.stride[1], model.field_start[1], spans[1], tile, model.lattice[1][0])
    return [Tile(a, b, c, d, i0, i1, j0, j1, i1 == gh, j1 == gw) for a, b, i0, i1 in rows for c, d, j0, j1 in cols]


def choose_tile(model: ScanModel, height: int, width: int, tile: int | None, max_memory: int | None,
                lazy: bool = False) -> int | None:
    """``tile``; else None when one pass fits the budget, or the largest square tile that does.
    The budget is half of ``max_memory`` or of the memory available; for an input read lazily
    from its file (TIFF, Zarr, a slide, a .npy) at most the model's weights and ``LAZY_BUDGET``
    more, so that memory follows the tile, not the image, however much is free."""
    if tile is not None:
        return tile
    limit = int((max_memory if max_memory is not None else available_memory()) * MEMORY_SHARE)
    if lazy and max_memory is None:
        limit = min(limit, model.weight_bytes + LAZY_BUDGET)
    need = model.estimate(height, width)
    if need <= limit:
        return None
    span = max(model.receptive_field)
    side = max(height, width)
    while side > span and model.estimate(min(side, height), min(side, width)) > limit:
        side = max(span, side * 3 // 4)
    if model.estimate(min(side, height), min(side, width)) > limit:
        raise ResourceError(f"even one {side}x{side} tile needs about {human_bytes(model.estimate(side, side))}, "
                            f"more than the {human_bytes(limit)} a tile may take (half of --max-memory or of what is "
                            "available)")
    log.info("one pass at %dx%d needs about %s; tiles of %d px", height, width, human_bytes(need), side)
    return side
