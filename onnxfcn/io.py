"""Loading and saving models: clear errors for bad files, atomic writes, external data.

The input file is only ever read. Outputs are written to a temporary file in the target folder
and renamed into place, so a failure never leaves a half-written model behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import load_external_data_for_model

from .errors import ModelLoadError

# Protobuf cannot serialize a message of 2 GiB or more; such models must use external data.
_PROTO_LIMIT = 2**31 - 1


def load_model(source: str | os.PathLike[str] | onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Load a model from a path (with its external data) or copy a ModelProto.

    Returns the model and whether its weights were stored as external data. A given ModelProto
    is copied, so that the caller's object is never modified.
    """
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        return model, has_external_data(model)
    path = Path(source)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
        external = has_external_data(model)
        if external:
            load_external_data_for_model(model, str(path.parent))
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"{path}: not a readable ONNX model (truncated or another format): {first}") from exc
    if not model.graph.node:
        raise ModelLoadError(f"{path}: not an ONNX model, or an empty one (no graph nodes)")
    return model, external


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def model_nbytes(model: onnx.ModelProto) -> int:
    """Serialized size, estimated from dims: ByteSize() or reading raw_data copies every weight."""
    from .graph import tensor_nbytes

    total = sum(n.ByteSize() for n in model.graph.node)
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            total += tensor_nbytes(t) + 16 * len(t.dims) + len(t.name) + 16
    return total


def needs_external_data(model: onnx.ModelProto) -> bool:
    return has_external_data(model) or model_nbytes(model) > _PROTO_LIMIT - 2**24


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str], external_data: bool | None = None) -> list[Path]:
    """Write ``model`` to ``path`` atomically; returns the files written.

    With external data (forced, or needed because the model is over 2 GB, or because it came
    with external data) the weights go to ``<name>.data`` next to the model.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: output folder does not exist")
    use_external = needs_external_data(model) if external_data is None else external_data
    data_name = path.name + ".data"
    tmp_model = tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    tmp_model.close()
    written: list[Path] = []
    tmp_data: Path | None = None
    try:
        if use_external:
            had_location = {t.name for t in model.graph.initializer if t.HasField("data_location")}
            # The location stored in the model must be the final data file name. Save into a
            # private temporary folder, then move both files into place, data first.
            with tempfile.TemporaryDirectory(dir=folder, prefix=f".{path.name}.") as tmpdir:
                staged = Path(tmpdir) / path.name
                onnx.save_model(
                    model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024,
                )
                # save_model moved the weights out of ``model``; read them back so the caller's
                # object is unchanged.
                load_external_data_for_model(model, tmpdir)
                for t in model.graph.initializer:
                    if t.name not in had_location:
                        t.ClearField("data_location")
                tmp_data = Path(tmpdir) / data_name
                os.replace(tmp_data, folder / data_name)
                written.append(folder / data_name)
                tmp_data = folder / data_name
                os.replace(staged, tmp_model.name)
        else:
            onnx.save_model(model, tmp_model.name)
        os.replace(tmp_model.name, path)
        written.insert(0, path)
        return written
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_model.name)
        if tmp_data is not None and path not in written:
            with contextlib.suppress(OSError):
                os.unlink(tmp_data)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
