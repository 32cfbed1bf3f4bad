"""``python -m onnxfcn``: the same CLI as the ``onnxfcn`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
