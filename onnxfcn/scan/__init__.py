"""``scan``: run a converted model on images of any size and say where the classes are.

The converted model's metadata says what a cell means: cell (i, j) scores the window at
``offset + (i, j) * stride`` of size ``window`` (dense mode: the cell's receptive field).

- ``model.py``: ``ScanModel``, the converted model as scan needs it;
- ``sources/``: the readers, one module per format;
- ``tiles.py``: stride-aligned tiles that overlap by the receptive field;
- ``runner.py``: the onnxruntime session, run on regions;
- ``driver.py``: ``scan`` and ``scan_source``, one pass or tile by tile;
- ``result.py``: ``ScanResult`` and the best cells;
- ``outputs.py``: the files a scan writes; ``picture.py``: the picture;
- ``distributed.py``: the same on Dask.
"""

from __future__ import annotations

from .driver import ScanOptions, scan, scan_source
from .model import ScanModel
from .result import Cell, ScanResult
from .sources import open_input

__all__ = ["Cell", "ScanModel", "ScanOptions", "ScanResult", "open_input", "scan", "scan_source"]
