"""The model a benchmark runs on: the user's file, or torchvision VGG16 exported into ``folder``."""

from __future__ import annotations

import sys
from pathlib import Path


def model_or_vgg16(path: Path | None, folder: Path) -> Path:
    if path is not None:
        return path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tv_export import export  # needs the test extra (torch, torchvision)

    return export("vgg16", "legacy", 17, folder)
