"""The model a benchmark runs on: the user's file, or a torchvision model exported into ``folder``.

The export runs in a child process. A benchmark that measures other processes' peak memory must
stay small itself: a child's ``ru_maxrss`` starts from its parent's resident size at the fork (the
kernel keeps the high-water mark across ``exec``), so a parent holding torch and a VGG16 would
raise the floor of every measured child to its own size.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"


def exported(arch: str, folder: Path) -> Path:
    """torchvision ``arch`` with realistic-scale random weights, legacy exporter, opset 17 (needs the test extra)."""
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); from tv_export import export; "
            f"print(export({arch!r}, 'legacy', 17, __import__('pathlib').Path({str(folder)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


def model_or_vgg16(path: Path | None, folder: Path) -> Path:
    return path if path is not None else exported("vgg16", folder)
