"""The sessions the checks run, and their inputs: every onnxruntime failure becomes the project's
error (``runtime.project_error``), a model onnxruntime cannot load a failed "load" check."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import InvalidConversionError, OnnxFcnError, ResourceError, SelfCheckError
from ..head import ImageInput
from ..io import save_model
from ..runtime import (
    failure_note,
    file_session,
    first_line,
    light_session,
    make_session,
    onnxruntime_errors,
    run_batched,
)
from .compare import CheckResult


def random_input(image: ImageInput, batch: int, height: int, width: int, seed: int,
                 dtype: np.dtype[Any] = np.dtype(np.float32)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    try:
        return rng.standard_normal(image.shape_at(batch, height, width)).astype(dtype)
    except MemoryError as exc:
        raise ResourceError(f"out of memory at {height}x{width} (batch {batch}): {first_line(exc)}") from exc


def input_dtype(model: onnx.ModelProto, name: str) -> np.dtype[Any]:
    """The element type of input ``name`` (float32 where the model gives none)."""
    for vi in model.graph.input:
        if vi.name == name:
            elem = vi.type.tensor_type.elem_type
            try:
                return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
            except (KeyError, ValueError, TypeError):
                raise InvalidConversionError(f"input '{name}' has element type {elem}, which is not a tensor type "
                                             "numpy and onnxruntime know") from None
    return np.dtype(np.float32)


def run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], where: str,
        error: type[OnnxFcnError] = SelfCheckError) -> list[np.ndarray]:
    """The converted model on ``feeds``; a failure is ``error`` (or running out of memory)."""
    with onnxruntime_errors(where, f"converted model fails at {where}", error):
        return sess.run(None, feeds)


def session(model: onnx.ModelProto | str | os.PathLike[str], provider: str, what: str,
            pin: dict[str, int] | None = None, error: type[OnnxFcnError] = SelfCheckError, optimize: bool = True,
            light: bool = False, outputs: dict[str, int] | None = None) -> ort.InferenceSession:
    """A session whose failure to load is one line: ``error`` naming ``what``, or a ResourceError.
    ``model`` a proto: ``light``, its weights used in place (``light_session``), else serialized;
    a path: its weights mapped from the file (``file_session``). ``outputs``: added to the graph's."""
    with onnxruntime_errors(f"loading {what}", f"onnxruntime cannot load {what}", error):
        if not isinstance(model, onnx.ModelProto):
            return file_session(model, provider, pin, optimize, outputs)
        if light:
            return light_session(model, provider, pin, outputs)
        assert outputs is None, "extra outputs need a light session or a file"
        return make_session(model, provider, pin, optimize)


def batched(sess: ort.InferenceSession, name: str, x: np.ndarray, where: str, **kw: Any) -> list[np.ndarray]:
    """The original model on ``x``, batch by batch (``runtime.run_batched``)."""
    with onnxruntime_errors(where, f"the original model fails at {where}"):
        return run_batched(sess, name, x, **kw)


def converted_session(path: Path, provider: str, tag: str, outputs: dict[str, int],
                      pin: dict[str, int] | None = None) -> tuple[ort.InferenceSession | None, CheckResult]:
    """A session of the converted model, or a failed "load" check: a model onnxruntime cannot load
    is a wrong conversion (exit 1), running out of memory is a ResourceError."""
    try:
        return file_session(path, provider, pin, outputs=outputs), CheckResult(name="load" + tag, passed=True,
                                                                                exact=True)
    except Exception as exc:  # onnxruntime raises several types
        note = failure_note(exc, "loading the converted model")
        return None, CheckResult(name="load" + tag, passed=False, exact=True,
                                 note=f"onnxruntime cannot load the converted model: {note}")


@contextlib.contextmanager
def on_disk(model: onnx.ModelProto, source: str | os.PathLike[str] | onnx.ModelProto) -> Iterator[Path]:
    """The file ``model`` was loaded from, or (given a proto) a temporary copy written for
    onnxruntime, external data and all: ``file_session`` then maps its weights from there."""
    if not isinstance(source, onnx.ModelProto):
        yield Path(source)
        return
    with tempfile.TemporaryDirectory(prefix="onnxfcn-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_model(model, path)
        yield path
