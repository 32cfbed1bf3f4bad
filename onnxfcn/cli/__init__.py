"""The ``onnxfcn`` command line: convert, verify, inspect, bench, scan.

- ``app.py``: the Typer app, the shared flags (through typer's context), one-line errors, exit codes;
- ``params.py``: every option, declared once, with its parser;
- ``render.py``: what the commands print;
- one module per command, which imports the library only when it runs (``--help`` stays quick).

Exit codes: 0 success; 1 a numerical mismatch (verify, or convert's self-check); 2 bad input
(unreadable file, no image input, no convertible head, unsupported node, bad option);
3 the model is already fully convolutional (nothing written).
"""

from __future__ import annotations

import signal
from typing import Any

from . import bench, convert, inspect, scan, verify
from .app import app

__all__ = ["app", "bench", "convert", "inspect", "main", "scan", "verify"]


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM unwinds like Ctrl-C, so that temporary files are removed on the way out.
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    app()
