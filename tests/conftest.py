"""Shared fixtures; shared helpers are in helpers.py."""

from __future__ import annotations

import importlib.util
import os
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest
from tv_export import Exports, cache_folder

from onnxfcn.runtime import release_free_memory


@pytest.fixture(scope="session")
def exports() -> Iterator[Exports]:
    """torchvision and timm exports, made in a child process and cached on disk across runs
    (``tv_export.Exports``)."""
    for package in ("torch", "torchvision", "timm", "onnxscript"):  # found, not imported: the child imports them
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"exports need {package} (the test extra)")
    made = Exports(cache_folder())
    yield made
    made.close()


@pytest.fixture(scope="session")
def attention_export(exports: Exports) -> Any:
    """``get(name, exporter, dynamic)``: a trunk with attention (``attention_models.py``), exported
    in the export process and cached beside the torchvision exports."""
    from attention_models import export_attention, file_name

    def get(name: str, exporter: str, dynamic: bool) -> Path:
        path = exports.folder / file_name(name, exporter, dynamic)
        return path if path.exists() else exports._run(export_attention, name, exporter, dynamic)

    return get


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


# The heavy tiers: each has its marker (pyproject.toml); any of them is also "heavy", so that
# ``python -m pytest -m "not heavy"`` runs the fast tier alone.
HEAVY = {"torchvision", "timm", "keras", "zoo", "interop", "dask", "fuzz", "big", "attention", "exporters", "browser"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HEAVY & {m.name for m in item.iter_markers()}:
            item.add_marker(pytest.mark.heavy)


@pytest.fixture(autouse=True)
def _give_back_memory() -> Iterator[None]:
    """After each test, the C heap's free memory goes back to the system (glibc's malloc_trim): the
    large tests (a 2.4 GB model, VGG) otherwise leave it held, and the next one's peak stacks on it."""
    yield
    release_free_memory()


# ONNXFCN_TEST_RSS=1: at the end, the tests that raised this process's peak resident memory, and by how much.
_RSS: list[tuple[float, str]] = []


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    if os.environ.get("ONNXFCN_TEST_RSS"):
        _RSS.append((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, nodeid))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RSS:
        return
    raised, peak = [], 0.0
    for mb, nodeid in _RSS:
        if mb > peak:
            raised.append((mb - peak, mb, nodeid))
            peak = mb
    terminalreporter.write_line(f"peak RSS of the test process: {peak:.0f} MB; the tests that raised it most:")
    for added, mb, nodeid in sorted(raised, reverse=True)[:10]:
        terminalreporter.write_line(f"  +{added:6.0f} MB -> {mb:6.0f} MB  {nodeid}")
