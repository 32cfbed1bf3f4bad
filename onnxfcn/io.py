"""Loading and saving models: clear errors for bad files, atomic writes, external data.

The input file is only ever read. Outputs are written to a temporary file in the target folder
and renamed into place, so a failure never leaves a half-written model behind.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import load_external_data_for_model

from .errors import ModelLoadError
from .graph import skeleton, tensor_nbytes
from .wire import PIECE_MIN_BYTES, WireMismatch, copy_fields, initializer_data, without_data, write_model

log = logging.getLogger(__name__)

# Protobuf cannot serialize a message of 2 GiB or more; such models must use external data.
_PROTO_LIMIT = 2**31 - 1


def load_model(source: str | os.PathLike[str] | onnx.ModelProto, weights: bool = True) -> tuple[onnx.ModelProto, bool]:
    """Load a model from a path (with its external data) or copy a ModelProto.

    Returns the model and whether its weights were stored as external data. A given ModelProto
    is copied, so that the caller's object is never modified. ``weights=False`` (a protobuf file):
    the graph without reading its large weights; each becomes an external-data reference to its
    own bytes in the file, and external data stays where it is (for what reads the graph only, or
    hands the file to onnxruntime: verify's converted model).
    """
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        if not model.graph.node:
            raise ModelLoadError("the model has no graph nodes")
        validate_model(model, "the model")
        return model, has_external_data(model)
    path = Path(source)
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, not an .onnx file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    fmt = onnx.serialization.registry.get_format_from_file_extension(path.suffix) or "protobuf"
    lengths: list[int | None] | None = None
    cuts: dict[int, tuple[str, int, int]] = {}
    try:
        if fmt == "protobuf" and not weights:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                small, cuts = without_data(mapped)
            model = onnx.load_model_from_string(small)
        else:
            data = path.read_bytes()
            model = onnx.load_model_from_string(data, format=fmt)
            if fmt == "protobuf":  # the data lengths, off the encoding: asking the proto copies every weight out
                lengths = [None if d is None else d[2] for d in initializer_data(data)]
            del data
    except (DecodeError, RuntimeError, ValueError, OSError, TypeError, WireMismatch) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"{path}: not a readable ONNX model (truncated or another format): {first}") from exc
    external = has_external_data(model)
    if external:
        check_external_data(model, path)
        if weights:
            try:
                load_external_data_for_model(model, str(path.parent))
            except (OSError, ValueError, RuntimeError) as exc:
                raise ModelLoadError(f"{path}: cannot read its external data: {str(exc).splitlines()[0]}") from exc
    _refer_to_file(model, cuts, path)
    if not model.graph.node:
        raise ModelLoadError(f"{path}: not an ONNX model, or an empty one (no graph nodes)")
    validate_model(model, str(path), lengths)
    return model, external


def _refer_to_file(model: onnx.ModelProto, cuts: dict[int, tuple[str, int, int]], path: Path) -> None:
    """Make each initializer whose data was left in the file an external-data reference to it."""
    inits = model.graph.initializer
    for k, (name, offset, length) in cuts.items():
        t = inits[k]
        if t.name != name or t.HasField("raw_data") or t.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelLoadError(f"{path}: initializer {k} is not what its encoding said")  # cannot happen
        if t.data_type and length != tensor_nbytes(t):
            raise ModelLoadError(f"{path}: tensor '{t.name}': {length} bytes of data for dims {list(t.dims)} "
                                 f"({tensor_nbytes(t)} bytes)")
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", path.name), ("offset", str(offset)), ("length", str(length))):
            t.external_data.add(key=key, value=value)


_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def validate_model(model: onnx.ModelProto, label: str, data_lengths: list[int | None] | None = None) -> None:
    """Refuse a malformed model with one line before any analysis reads it: tensors of unknown
    type or with data that does not fill their dims, and nodes that break their op's schema
    (wrong attribute types, missing inputs), as onnx's checker sees them on the weightless graph.
    ``data_lengths``: the raw_data length of each top-level initializer, from the file's encoding
    (``wire.initializer_data``); where the count does not match, the tensors are asked."""
    if data_lengths is not None and len(data_lengths) != len(model.graph.initializer):
        data_lengths = None
    for k, t in enumerate(_all_tensors(model)):  # the top-level initializers first, in order
        where = f"{label}: tensor '{t.name}'"
        if t.data_type not in onnx.TensorProto.DataType.values() or t.data_type == onnx.TensorProto.UNDEFINED:
            raise ModelLoadError(f"{where} has unknown data type {t.data_type}")
        if any(d < 0 for d in t.dims):
            raise ModelLoadError(f"{where} has negative dims {list(t.dims)}")
        if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type == onnx.TensorProto.STRING:
            continue
        try:
            np_type = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        except (KeyError, ValueError):
            raise ModelLoadError(f"{where} has data type {t.data_type}, which numpy cannot hold") from None
        n = 1
        for d in t.dims:
            n *= d
        if t.HasField("raw_data"):
            want = n * np_type.itemsize
            if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
                want = (n + 1) // 2
            have = data_lengths[k] if data_lengths is not None and k < len(data_lengths) else None
            if have is None:
                have = len(t.raw_data)
            if have != want:
                raise ModelLoadError(f"{where}: {have} bytes of data for dims {list(t.dims)} ({want} bytes)")
        else:
            have = sum(len(getattr(t, f)) for f in _TYPED_FIELDS)
            per = 2 if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
            if have and have != per * n:
                raise ModelLoadError(f"{where}: {have} values for dims {list(t.dims)} ({per * n} values)")
    if not model.graph.output:
        raise ModelLoadError(f"{label}: the graph has no outputs")
    g = model.graph
    names = [x for n in g.node for x in (n.name, n.op_type, n.domain, *n.input, *n.output)]
    names += [v.name for v in (*g.input, *g.output, *g.value_info)] + [t.name for t in g.initializer]
    names += [g.name, model.producer_name, model.domain, *(x for p in model.metadata_props for x in (p.key, p.value))]
    # protobuf hands back bytes, not str, for a string field that is not UTF-8
    bad = next((x for x in names if not isinstance(x, str)), None)
    if bad is not None:
        raise ModelLoadError(f"{label}: a name in the graph is not UTF-8 text ({bytes(bad)[:40]!r})")
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim if d.HasField("dim_value")]
        if any(d < 0 for d in dims):
            raise ModelLoadError(f"{label}: graph {'input' if vi in model.graph.input else 'output'} '{vi.name}' "
                                 f"has a negative dim")
    for node in model.graph.node:
        for a in node.attribute:
            for raw in ([a.s] if a.type == onnx.AttributeProto.STRING else
                        list(a.strings) if a.type == onnx.AttributeProto.STRINGS else []):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise ModelLoadError(f"{label}: node '{node.name or node.op_type}': attribute '{a.name}' is "
                                         "not UTF-8 text") from None
    skel = skeleton(model, {}, keep_output_shapes=True)
    for vi in (*skel.graph.input, *skel.graph.output):
        if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape"):
            vi.type.tensor_type.shape.SetInParent()  # a missing shape is no reason to refuse a model
    try:
        onnx.checker.check_model(skel)
    except Exception as exc:  # the checker raises several types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{label}: not a valid ONNX model: {first[:300]}") from None


def _all_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Initializers and tensors in node attributes (Constant nodes), subgraphs included."""
    out: list[onnx.TensorProto] = []

    def graph(g: onnx.GraphProto) -> None:
        out.extend(g.initializer)
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    out.append(a.t)
                elif a.type == onnx.AttributeProto.TENSORS:
                    out.extend(a.tensors)
                elif a.type == onnx.AttributeProto.GRAPH:
                    graph(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        graph(sg)

    graph(model.graph)
    return out


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model))


def external_files(model: onnx.ModelProto, folder: Path) -> set[Path]:
    """The files a model's external data lives in."""
    files = set()
    for t in _all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in t.external_data}.get("location")
            if loc:
                files.add((folder / loc).resolve())
    return files


def check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Refuse external data outside the model's folder, behind links, or past the end of its file,
    before onnx or onnxruntime reads anything."""
    folder = path.resolve().parent
    for t in _all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        where = f"{path}: tensor '{t.name}' external data"
        if not loc or os.path.isabs(loc) or ".." in Path(loc).parts:
            raise ModelLoadError(f"{where}: location {loc!r} is not a file inside the model's folder")
        file = folder / loc
        if file.is_symlink() or any(p.is_symlink() for p in file.parents if folder in p.parents):
            raise ModelLoadError(f"{where}: {loc!r} is a symbolic link; refused")
        if not file.resolve().is_relative_to(folder) or not file.is_file():
            raise ModelLoadError(f"{where}: {loc!r} is not a file inside the model's folder")
        st = file.stat()
        if st.st_nlink > 1:
            raise ModelLoadError(f"{where}: {loc!r} has {st.st_nlink} hard links; refused")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else st.st_size - offset
        except ValueError:
            raise ModelLoadError(f"{where}: offset or length is not an integer") from None
        if offset < 0 or length < 0 or offset + length > st.st_size:
            raise ModelLoadError(f"{where}: bytes {offset}..{offset + length} lie past the end of {loc!r} "
                                 f"({st.st_size} bytes)")
        if t.data_type not in onnx.TensorProto.DataType.values():
            raise ModelLoadError(f"{path}: tensor '{t.name}' has unknown data type {t.data_type}")
        if t.data_type and length != tensor_nbytes(t):
            raise ModelLoadError(f"{where}: {length} bytes for a tensor of {tensor_nbytes(t)} bytes")


def model_nbytes(model: onnx.ModelProto) -> int:
    """Serialized size, estimated from dims: ByteSize() or reading raw_data copies every weight."""
    total = sum(n.ByteSize() for n in model.graph.node)
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            total += tensor_nbytes(t) + 16 * len(t.dims) + len(t.name) + 16
    return total


def needs_external_data(model: onnx.ModelProto) -> bool:
    return has_external_data(model) or model_nbytes(model) > _PROTO_LIMIT - 2**24


def check_output_path(path: str | os.PathLike[str], protect: set[Path] | None = None, what: str = "output") -> Path:
    """Fail before any work if ``path`` cannot be written, or is a file the input depends on."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: {what} folder does not exist")
    if path.is_dir():
        raise ModelLoadError(f"{path}: {what} path is a directory")
    if not os.access(folder, os.W_OK):
        raise ModelLoadError(f"{folder}: {what} folder is not writable")
    if len(path.name.encode()) > 255:
        raise ModelLoadError(f"{path.name[:40]}...: {what} file name is longer than 255 bytes")
    if path.exists() and protect and path.resolve() in protect:
        raise ModelLoadError(f"{path}: the input depends on this file; the input is never overwritten")
    return path


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _data_name(path: Path, protect: set[Path]) -> str:
    """A data file name next to ``path`` that no existing file has: ``NAME.data``, else ``NAME.N.data``."""
    folder = path.parent
    candidates = [f"{path.name}.data"] + [f"{path.name}.{k}.data" for k in range(1, 1000)]
    for name in candidates:
        target = (folder / name)
        if not target.exists() and target.resolve() not in protect:
            return name
    raise ModelLoadError(f"{folder}: no free name for the data file of {path.name}")


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str], external_data: bool | None = None,
               protect: set[Path] | None = None) -> list[Path]:
    """Write ``model`` to ``path`` atomically; returns the files written.

    With external data (forced, or needed because the model is over 2 GB, or because it came with
    external data) the weights go to a data file next to the model. The pair is switched in one
    step: the data goes to a name no existing file has (``NAME.data``, or ``NAME.1.data`` while
    the previous ``NAME.data`` is still in use), the model is renamed into place last, and only
    then is the previous model's data file removed. A failure at any point leaves the previous
    pair whole. ``protect``: files the input depends on, never written or removed.
    """
    protect = {p.resolve() for p in (protect or set())}
    path = check_output_path(path, protect)
    with signals_deferred():
        return _save_model(model, path, external_data, protect)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then act as they would have.

    A signal whose handler raises (the CLI's SIGTERM handler, Python's KeyboardInterrupt) could
    otherwise land between creating a temporary file and the code that removes it, or inside that
    code, and leave the temporary behind. Writing is short next to what precedes it; the signal is
    delivered as soon as the files are in place or gone. Only the main thread can set handlers:
    elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])


def _save_model(model: onnx.ModelProto, path: Path, external_data: bool | None, protect: set[Path]) -> list[Path]:
    folder = path.parent if str(path.parent) else Path(".")
    use_external = needs_external_data(model) if external_data is None else external_data
    mode = _umask_mode()
    fd, tmp_model = tempfile.mkstemp(dir=folder, prefix=".onnxfcn-", suffix=".tmp")
    os.close(fd)
    written: list[Path] = []
    new_data: Path | None = None
    old_data = _previous_data_files(path) - protect
    try:
        if use_external:
            data_name = _data_name(path, protect)
            # The location stored in the model is the final data file name: the data is written
            # to a private temporary name first, then moved to its fresh name, the model last.
            fd, tmp_data = tempfile.mkstemp(dir=folder, prefix=".onnxfcn-", suffix=".data.tmp")
            os.close(fd)
            new_data = Path(tmp_data)
            if _write_external(model, tmp_model, tmp_data, data_name):
                os.chmod(tmp_data, mode)
                os.replace(tmp_data, folder / data_name)
                new_data = folder / data_name
                written.append(new_data)
            else:  # no file at all when every tensor is under the threshold
                os.unlink(tmp_data)
                new_data = None
        else:
            _write_proto(model, tmp_model)
        os.chmod(tmp_model, mode)
        os.replace(tmp_model, path)
        written.insert(0, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_model)
        if new_data is not None:
            with contextlib.suppress(OSError):
                os.unlink(new_data)
        raise
    for old in old_data:  # the previous model's data file, now that nothing refers to it
        if new_data is None or old != new_data.resolve():
            with contextlib.suppress(OSError):
                old.unlink()
    return written


_EXTERNAL_MIN_BYTES = 1024  # as onnx.save_model's size_threshold: smaller tensors stay in the model
_ALIGN = 64 * 1024  # large tensors start at multiples of this (the page and allocation granularity)


def _write_external(model: onnx.ModelProto, model_path: str, data_path: str, location: str) -> bool:
    """``model`` written to ``model_path`` with each initializer of at least 1 KB in ``data_path``
    (referred to as ``location``), each tensor's bytes read once and written straight to the file;
    ``model`` itself is not changed. Returns whether any tensor went to the data file."""
    light = onnx.ModelProto()
    copy_fields(model, light, "graph")
    copy_fields(model.graph, light.graph, "initializer")
    moved = False
    with open(data_path, "wb") as f:
        for t in model.graph.initializer:
            if not (t.HasField("raw_data") and t.data_location != onnx.TensorProto.EXTERNAL
                    and tensor_nbytes(t) >= _EXTERNAL_MIN_BYTES):
                light.graph.initializer.append(t)
                continue
            if tensor_nbytes(t) >= PIECE_MIN_BYTES and f.tell() % _ALIGN:
                f.write(b"\0" * (_ALIGN - f.tell() % _ALIGN))
            header = light.graph.initializer.add()
            copy_fields(t, header, "raw_data")
            offset = f.tell()
            raw = t.raw_data
            f.write(raw)
            del raw
            header.data_location = onnx.TensorProto.EXTERNAL
            del header.external_data[:]
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(f.tell() - offset))):
                header.external_data.add(key=key, value=value)
            moved = True
    _write_proto(light, model_path)
    return moved


def _write_proto(model: onnx.ModelProto, path: str) -> None:
    """``onnx.save_model``'s bytes, written in pieces (``wire.write_model``): a third of the time,
    and no second copy of the model in memory. Where the pieces cannot be trusted, protobuf's own."""
    with open(path, "wb") as f:
        try:
            write_model(model, f)
            return
        except WireMismatch as exc:
            log.debug("writing through protobuf: %s", exc)
            f.seek(0)
            f.truncate()
    onnx.save_model(model, path)


def _previous_data_files(path: Path) -> set[Path]:
    """Data files the model now at ``path`` (if any) keeps its weights in, inside its folder."""
    if not path.is_file():
        return set()
    folder = path.resolve().parent
    ours = re.compile(re.escape(path.name) + r"(\.\d+)?\.data")  # only files named as save_model names them
    if not any(ours.fullmatch(f.name) for f in folder.iterdir()):
        return set()  # nothing to remove: the old model (often as large as its weights) is not read
    try:
        old = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a model we can read: leave every file alone
        return set()
    return {f for f in external_files(old, folder)
            if f.parent == folder and ours.fullmatch(f.name) and f.is_file() and not f.is_symlink()}


def dependency_files(path: str | os.PathLike[str]) -> set[Path]:
    """The model file and the external data files it reads."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable: load_model reports it
        return {path.resolve()}
    return {path.resolve()} | external_files(model, path.resolve().parent)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with signals_deferred():
        _write_text(Path(path), text)


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=".onnxfcn-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def temp_beside(path: str | os.PathLike[str]) -> str:
    """An empty temporary file in ``path``'s folder, to be moved onto ``path`` by ``commit``."""
    folder = Path(path).parent
    fd, tmp = tempfile.mkstemp(dir=folder if str(folder) else ".", prefix=".onnxfcn-", suffix=".tmp")
    os.close(fd)
    return tmp


def commit(tmp: str, path: str | os.PathLike[str]) -> None:
    """Move a finished temporary file onto ``path`` in one step, with the umask's permissions."""
    os.chmod(tmp, _umask_mode())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """A temporary path to write; on success it replaces ``path``, on failure it is removed."""
    tmp = temp_beside(path)
    try:
        with signals_deferred():
            yield tmp
            commit(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
