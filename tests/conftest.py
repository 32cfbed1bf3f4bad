"""Shared fixtures and numeric helpers: onnxruntime runs and crop-by-crop comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def run(model: onnx.ModelProto, x: np.ndarray, name: str | None = None) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {name or sess.get_inputs()[0].name: x})


def heights_that_run(model: onnx.ModelProto, heights: range, width: int) -> list[int]:
    """The input heights (NCHW, 3 channels, batch 1) at which onnxruntime runs ``model``."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ran = []
    for n in heights:
        try:
            sess.run(None, {sess.get_inputs()[0].name: rand([1, 3, n, width])})
            ran.append(n)
        except Exception:  # onnxruntime's error types vary
            pass
    return ran


def rand(shape: list[int], seed: int = 1, dtype: Any = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def assert_close(got: np.ndarray, want: np.ndarray, rel: float = 1e-5) -> float:
    """max|got - want| <= rel * max|want|, the bound the issue sets for fp32. Returns the ratio."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = float(np.abs(want).max()) or 1.0
    err = float(np.abs(got - want).max())
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} * {scale:.3g}"
    return err / scale


def cells_vs_crops(original: onnx.ModelProto, converted: onnx.ModelProto, x: np.ndarray, window: int,
                   stride: int, layout: str = "NCHW") -> tuple[np.ndarray, np.ndarray]:
    """(converted cells, original on each crop), both cells x batch x K, for the first output."""
    y = run(converted, x)[0]
    gh, gw = y.shape[2], y.shape[3]
    cells, crops = [], []
    for i in range(gh):
        for j in range(gw):
            if layout == "NCHW":
                crop = x[:, :, i * stride:i * stride + window, j * stride:j * stride + window]
            else:
                crop = x[:, i * stride:i * stride + window, j * stride:j * stride + window, :]
            if crop.shape[2 if layout == "NCHW" else 1] < window or crop.shape[3 if layout == "NCHW" else 2] < window:
                continue
            outs = [run(original, crop[n:n + 1])[0] for n in range(x.shape[0])]
            crops.append(np.concatenate(outs, axis=0).reshape(x.shape[0], -1))
            cells.append(y[:, :, i, j].reshape(x.shape[0], -1))
    return np.stack(cells), np.stack(crops)


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
