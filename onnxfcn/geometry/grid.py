"""``Geometry``: what one cell of the converted model means, in input pixels."""

from __future__ import annotations

from dataclasses import dataclass

from .lattice import ANY_SIZE, Lattice, SizeFn, check_on_lattice, lattice_text, next_on_lattice, on_lattice

WHOLE_IMAGE = "sees the whole image"


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """What one cell of the converted model means, in input pixels."""

    window: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    receptive_field: tuple[int, int]
    feature_window: tuple[int, int]  # cells of the feature map one output cell reads
    mode: str
    exact: bool
    reasons: tuple[str, ...]
    size_h: SizeFn  # input height -> the feature map's
    size_w: SizeFn
    # Output stride below the network's: the feature window's cells lie this far apart.
    feature_dilation: tuple[int, int] = (1, 1)
    # Where cell (0, 0)'s receptive field begins (negative: it reaches into the zero padding);
    # cell (i, j)'s is shifted by (i, j) * stride. Tiling keeps a cell only where this lies inside.
    receptive_field_start: tuple[int, int] = (0, 0)
    # A global pool inside the trunk: every cell depends on the whole image, not only its field.
    global_context: bool = False
    # Branches that merge maps whose sizes agree only at some input sizes (Inception v2, DLA):
    # the sizes the model runs at, per axis.
    lattice: tuple[Lattice, Lattice] = (ANY_SIZE, ANY_SIZE)

    def on_lattice(self, height: int, width: int) -> bool:
        return on_lattice(height, self.lattice[0]) and on_lattice(width, self.lattice[1])

    def check_size(self, height: int, width: int, what: str = "size") -> None:
        """Refuse, with one line, a size the model does not run at."""
        check_on_lattice(height, width, self.lattice, what)

    def next_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest size at least ``height`` x ``width`` that the model runs at."""
        return next_on_lattice(height, self.lattice[0]), next_on_lattice(width, self.lattice[1])

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """The feature map's size for an input of ``height`` x ``width``."""
        return self.size_h(height), self.size_w(width)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Output cells for an input of ``height`` x ``width`` (<= 0: too small)."""
        (kh, kw), (dh, dw) = self.feature_window, self.feature_dilation
        return (self.size_h(height) - (kh - 1) * dh, self.size_w(width) - (kw - 1) * dw)

    def min_size(self) -> tuple[int, int]:
        """Smallest input height and width (that the model runs at) that give at least one cell."""
        out = []
        for axis, ref in ((0, self.window[0]), (1, self.window[1])):
            n, best = ref, ref
            while n > 1 and self._axis_cells(axis, n - 1) >= 1:
                n -= 1
                if on_lattice(n, self.lattice[axis]):
                    best = n
            out.append(best)
        return out[0], out[1]

    def _axis_cells(self, axis: int, n: int) -> int:
        return self.grid(n, self.window[1])[0] if axis == 0 else self.grid(self.window[0], n)[1]

    def formula(self, axis: int) -> str:
        """The output grid as ``floor((X - a) / s) + 1``, read off the exact size function."""
        sym = "H" if axis == 0 else "W"
        s = self.stride[axis]
        lo = self.min_size()[axis]
        # cells(X) = floor((X - lo) / s) + 1 holds for stride-aligned trunks; check it on a range.
        lat = self.lattice[axis]
        ok = all(self._axis_cells(axis, x) == (x - lo) // s + 1 for x in range(lo, lo + 4 * max(s, lat[0]) + 1)
                 if on_lattice(x, lat))
        if ok:
            return f"floor(({sym} - {lo}) / {s}) + 1"
        return f"cells({sym}) (irregular; {sym}={self.window[axis]} gives {self._axis_cells(axis, self.window[axis])})"

    def below_min(self) -> str:
        """What the converted model does on an input smaller than ``min_size``."""
        mh, mw = self.min_size()
        return (f"inputs under {mh}x{mw} fit no window: onnxruntime raises a runtime error (the window pool "
                "is emitted so that it never divides by zero; no size crashes the process)")

    def summary(self, height: int | None = None, width: int | None = None) -> dict[str, object]:
        """Everything above as JSON-ready values; with ``height`` and ``width``, the grid there."""
        d: dict[str, object] = {
            "window": list(self.window), "stride": list(self.stride), "offset": list(self.offset),
            "receptive_field": list(self.receptive_field), "feature_window": list(self.feature_window),
            "feature_dilation": list(self.feature_dilation),
            "receptive_field_start": list(self.receptive_field_start), "global_context": self.global_context,
            "sizes": [lattice_text(self.lattice[0]), lattice_text(self.lattice[1])],
            "mode": self.mode, "exact": self.exact, "reasons": list(self.reasons),
            "grid_formula": [self.formula(0), self.formula(1)], "min_size": list(self.min_size()),
            "below_min": self.below_min(),
        }
        if height and width:
            cells = [max(c, 0) for c in self.grid(height, width)]
            grid_at: dict[str, object] = {"input": [height, width], "cells": cells}
            if min(cells) == 0:
                grid_at["note"] = self.below_min()
            d["grid_at"] = grid_at
        return d
