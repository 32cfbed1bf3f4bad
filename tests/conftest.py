"""Shared fixtures; shared helpers are in helpers.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision exports, made once per session (``tv_export``) and shared by the tests that read them."""
    return tmp_path_factory.mktemp("torchvision_exports")


@pytest.fixture(scope="session")
def tier_table() -> Any:
    """Rows of the realistic-scale tiers (error and bound per model); written as JSON to the file
    ONNXFCN_TIER_JSON names, if set, at the end of the session (numbers for a closing note)."""
    import json
    import os

    rows: list[dict[str, Any]] = []
    yield rows
    target = os.environ.get("ONNXFCN_TIER_JSON")
    if target and rows:
        Path(target).write_text(json.dumps(rows, indent=1))


@pytest.fixture
def tmp_model(tmp_path: Path):
    def save(model: onnx.ModelProto, name: str = "model.onnx") -> Path:
        p = tmp_path / name
        onnx.save(model, p)
        return p

    return save
