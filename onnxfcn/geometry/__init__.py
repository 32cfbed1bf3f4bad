"""Geometry of the trunk: total stride, offset, receptive field, output grid and exactness.

- ``grid.py``: ``Geometry``, what one cell means in input pixels, and the output grid;
- ``walk.py``: the walk from the image input to the feature map, merges and global pools;
- ``steps.py``: one step per kind of node (kernel, resize, pad, refusals) in a table, ``STEPS``;
- ``lattice.py``: the input sizes a model runs at.

A converted model is *exact* (every cell equals the original classifier on its crop) only if
nothing inside a window sees beyond it: no zero padding, no partial ceil-mode windows, no global
pooling in the trunk.
"""

from __future__ import annotations

from .grid import WHOLE_IMAGE, Geometry
from .lattice import (
    ANY_SIZE,
    Lattice,
    check_on_lattice,
    lattice_text,
    next_on_lattice,
    on_lattice,
    parse_lattice,
    parse_sizes,
    sizes_text,
)
from .walk import plan_geometry

__all__ = ["ANY_SIZE", "WHOLE_IMAGE", "Geometry", "Lattice", "check_on_lattice", "lattice_text", "next_on_lattice",
           "on_lattice", "parse_lattice", "parse_sizes", "plan_geometry", "sizes_text"]
