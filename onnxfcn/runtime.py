"""onnxruntime sessions: providers, loading models of any size, batched runs, readable errors."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .errors import OnnxFcnError, ResourceError
from .graph import Shape, skeleton, tensor_nbytes
from .io import load_model, needs_external_data, save_model
from .units import human_bytes
from .wire import FIXED_SIZE_TYPES, copy_fields

Progress = Callable[[int, int], None]
log = logging.getLogger(__name__)


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in available_providers()


def resolve_providers(provider: str) -> list[str]:
    """'cpu' | 'cuda' | 'auto' -> the providers to check on, CPU always first."""
    if provider not in ("cpu", "cuda", "auto"):
        raise OnnxFcnError(f"provider must be cpu, cuda or auto, not {provider!r}")
    if provider == "cuda" and not cuda_available():
        raise OnnxFcnError("CUDA provider asked for, but onnxruntime has no CUDAExecutionProvider "
                           f"(available: {', '.join(available_providers())}; install onnxruntime-gpu)")
    if provider == "cpu" or not cuda_available():
        return ["cpu"]
    return ["cpu", "cuda"]


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable), or the physical size where that is unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 2**62


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_memory() -> None:
    """Hand memory that is free but still held by the C allocator back to the system (glibc's
    ``malloc_trim``; nothing elsewhere). Runs of different input sizes (scan's tiles) otherwise
    fragment its heap, and the peak grows with the number of runs rather than their size."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def estimate_memory(model: onnx.ModelProto, input_name: str, shape: list[int]) -> int:
    """Bytes a run at ``shape`` needs, roughly: the weights, the input and the two largest
    activations (onnxruntime frees and reuses the others), from shape inference at that size."""
    from onnx import helper, shape_inference

    weights = sum(tensor_nbytes(t) for t in model.graph.initializer)
    elem = next((vi.type.tensor_type.elem_type for vi in model.graph.input if vi.name == input_name), 1)
    itemsize = helper.tensor_dtype_to_np_dtype(elem).itemsize if elem else 4
    input_bytes = math.prod(int(d) for d in shape) * itemsize
    sizes = [input_bytes]
    try:
        inferred = shape_inference.infer_shapes(skeleton(model, {input_name: shape}), strict_mode=False)
        for vi in inferred.graph.value_info:
            dims = vi.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims) and vi.type.tensor_type.elem_type:
                size = math.prod(int(d.dim_value) for d in dims)
                sizes.append(size * helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).itemsize)
    except Exception:  # no shapes to be had: the input alone, with the weights
        pass
    top = sorted(sizes)[-2:]
    return weights + input_bytes + 2 * sum(top)


def check_memory(model: onnx.ModelProto, input_name: str, shape: list[int], where: str,
                 max_memory: int | None = None, remedy: str = "use a smaller size or batch") -> None:
    """Refuse, before running, a size and batch whose estimate exceeds the memory available (or
    ``max_memory``). ``remedy``: what the caller can change, besides the limit."""
    need = estimate_memory(model, input_name, shape)
    limit = max_memory if max_memory is not None else available_memory()
    if need > limit:
        limit_text = "allowed by --max-memory" if max_memory is not None else "available"
        raise_it = "raise --max-memory" if max_memory is not None else "pass --max-memory to raise the limit"
        raise ResourceError(
            f"{where} needs about {human_bytes(need)} (weights, input and the largest activations), more than "
            f"the {human_bytes(limit)} {limit_text}; {remedy}, or {raise_it}")


PROBE_LIMIT_BYTES = 256 * 2**20


def probe_shapes(model: onnx.ModelProto, input_shapes: dict[str, Sequence[int]],
                 names: dict[str, int]) -> dict[str, tuple[Shape, int]]:
    """Shapes (and element types) that ONNX inference left open (Slice ends computed from Shape, a
    com.microsoft op's output), read off one onnxruntime run with zero inputs. ``names``: tensor ->
    dtype (0: unknown). A graph.ShapeProbe."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    if any(vi.name not in input_shapes for vi in inputs):
        return {}
    if any(int(d) < 0 for vi in inputs for d in input_shapes[vi.name]):
        return {}
    nbytes = sum(math.prod(int(d) for d in input_shapes[vi.name]) * 8 for vi in inputs)
    if nbytes > PROBE_LIMIT_BYTES:  # a huge declared input: leave the shapes unknown, allocate nothing
        return {}
    try:
        feeds = {vi.name: np.zeros(list(input_shapes[vi.name]),
                                   dtype=onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
                 for vi in inputs}
    except (KeyError, ValueError, TypeError, MemoryError):  # a type numpy lacks, or no memory: shapes unknown
        return {}
    try:
        # An output whose type inference could not give (a com.microsoft op's) goes untyped (0).
        values = light_session(model, outputs=names, keep_outputs=False).run(None, feeds)
    except Exception:  # leave them unknown; the analysis names what it needs
        return {}
    return {n: (tuple(int(d) for d in np.asarray(v).shape), onnx.helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype))
            for n, v in zip(names, values)}


# Initializers at least this large are handed to onnxruntime in place (``light_session``); the
# small ones (shapes, axes: what onnxruntime reads while it builds a session) stay in the model.
SHARED_MIN_BYTES = 64 * 1024
_SHAREABLE = FIXED_SIZE_TYPES - {onnx.TensorProto.BFLOAT16}  # numpy has no bfloat16
_STUB = "onnxfcn-weights.stub"


def split_weights(model: onnx.ModelProto, outputs: dict[str, int] | None = None, keep_outputs: bool = True,
                  min_bytes: int = SHARED_MIN_BYTES) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``model`` without its large weights, and those weights as numpy arrays (one copy each,
    read from the proto). In the light model each large initializer is a stub: name, type, dims
    and an external-data reference to an empty file, which onnxruntime never reads because
    ``light_session`` hands it the array instead. ``outputs`` (name -> element type, 0: left
    untyped) are added to the graph's outputs (``keep_outputs``) or replace them, with the
    graph's value_info, which may contradict what the run finds (a probe's reason to run)."""
    light = onnx.ModelProto()
    copy_fields(model, light, "graph")
    copy_fields(model.graph, light.graph, "initializer")
    arrays: dict[str, np.ndarray] = {}
    for t in model.graph.initializer:
        if (t.data_type in _SHAREABLE and t.HasField("raw_data") and tensor_nbytes(t) >= min_bytes
                and t.data_location != onnx.TensorProto.EXTERNAL):
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).newbyteorder("<")
            arrays[t.name] = np.frombuffer(t.raw_data, dtype=dtype).reshape(tuple(t.dims))
            stub = light.graph.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims,
                                                data_location=onnx.TensorProto.EXTERNAL)
            for key, value in (("location", _STUB), ("offset", "0"), ("length", str(arrays[t.name].nbytes))):
                stub.external_data.add(key=key, value=value)
        else:
            light.graph.initializer.append(t)
    _set_outputs(light, outputs, keep_outputs)
    return light, arrays


def light_session(model: onnx.ModelProto, provider: str = "cpu", pin: dict[str, int] | None = None,
                  outputs: dict[str, int] | None = None, keep_outputs: bool = True) -> ort.InferenceSession:
    """A session of ``model`` that uses its large weights in place instead of copying them.

    onnxruntime copies every initializer it reads from serialized bytes or a file, and prepacks
    the dense ones (another copy): serializing a VGG16 for it and loading it cost three seconds
    and 1.1 GB. Here the weights are read once into numpy arrays and given to the session through
    ``SessionOptions.add_initializer``, which uses them where they lie; prepacking is off, so the
    session holds no copy. Graph optimizations are off too: some of them (the layout transforms,
    fusions, constant folding) read a weight from the model rather than the value given, find
    the stub, and fail. What fails here gets a session of the whole model instead. For the few
    runs of a check. ``outputs``: see ``split_weights``."""
    light, arrays = split_weights(model, outputs, keep_outputs)
    opts = _light_options(pin)
    values = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in arrays.items()}
    for name, value in values.items():
        opts.add_initializer(name, value)
    try:
        with tempfile.TemporaryDirectory(prefix="onnxfcn-") as tmp:
            # onnxruntime checks that an external-data file exists before it takes the given
            # value; the stub is empty, so anything that reads it fails rather than reads zeros
            open(os.path.join(tmp, _STUB), "wb").close()
            path = os.path.join(tmp, "model.onnx")
            with open(path, "wb") as f:
                f.write(light.SerializeToString())
            sess = _start(path, opts, provider)
    except Exception as exc:  # onnxruntime raises several types: a real fault shows again below
        if is_out_of_memory(exc) or isinstance(exc, OnnxFcnError):
            raise
        log.debug("session of the whole model: %s", first_line(exc))
        del values, arrays, light
        whole = onnx.ModelProto()
        whole.CopyFrom(model)
        _set_outputs(whole, outputs, keep_outputs)
        return _start_model(whole, _light_options(pin), provider)  # the same kernels as a light session's
    sess._onnxfcn_weights = (arrays, values)  # must outlive the session
    return sess


def _light_options(pin: dict[str, int] | None) -> ort.SessionOptions:
    opts = _options(pin, optimize=False, arena=True)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.add_session_config_entry("session.disable_prepacking", "1")
    return opts


def file_session(path: str | os.PathLike[str], provider: str = "cpu", pin: dict[str, int] | None = None,
                 optimize: bool = True, outputs: dict[str, int] | None = None) -> ort.InferenceSession:
    """A session of the model file at ``path``, ``outputs`` added, that onnxruntime builds without
    parsing the weights out of the model.

    The graph is read without its weights (``load_model(weights=False)``): each large weight is an
    external-data reference to its own bytes in the file (external data stays where it is), which
    onnxruntime maps instead of copying. A VGG16's session starts in 0.04 s instead of 1.5 s, and
    an extra output needs no second copy of the model on disk. Prepacking is off, so the dense
    weights stay where they lie too: a crop runs about 4 % slower, less than the time saved for
    the runs of a check. Should onnxruntime refuse the light model (one without the option that
    locates the file), the session is built the ordinary way, from the whole model."""
    path = Path(path)
    light, _ = load_model(path, weights=False)
    if outputs:
        _add_outputs(light, outputs)
    opts = _options(pin, optimize, arena=True)
    opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
    opts.add_session_config_entry("session.disable_prepacking", "1")
    try:
        return _start(light.SerializeToString(), opts, provider)
    except Exception as exc:  # onnxruntime raises several types: a real fault shows again below
        if is_out_of_memory(exc):
            raise
        log.debug("session of %s the ordinary way: %s", path, first_line(exc))
    if not outputs:
        return make_session(str(path), provider, pin, optimize)
    whole, _ = load_model(path)
    _add_outputs(whole, outputs)
    return make_session(whole, provider, pin, optimize)


def _set_outputs(model: onnx.ModelProto, outputs: dict[str, int] | None, keep_outputs: bool) -> None:
    """``outputs`` added to the graph's (``keep_outputs``) or in their place, with the value_info
    that may contradict what a run finds; None: the graph's as they are."""
    if outputs is None:
        return
    if not keep_outputs:
        del model.graph.output[:]
        del model.graph.value_info[:]
    _add_outputs(model, outputs)


def _add_outputs(model: onnx.ModelProto, outputs: dict[str, int]) -> None:
    """Append graph outputs (name -> element type, 0: left untyped for onnxruntime to fill in)."""
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, dt, None) if dt else onnx.ValueInfoProto(name=n)
                              for n, dt in outputs.items() if n not in have)


def session_weights(sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    """The arrays a ``light_session`` uses as its large weights (read-only); {} for other sessions."""
    weights = getattr(sess, "_onnxfcn_weights", None)
    return dict(weights[0]) if weights is not None else {}


def _options(pin: dict[str, int] | None, optimize: bool, arena: bool) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # failures surface as exceptions; no console noise
    opts.enable_cpu_mem_arena = arena
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    for dim, value in (pin or {}).items():
        opts.add_free_dimension_override_by_name(dim, value)
    return opts


def _start(model: str | bytes, opts: ort.SessionOptions, provider: str) -> ort.InferenceSession:
    if provider == "cuda":
        # TF32 would make CUDA convolutions differ from fp32 by ~1e-3: off for strict checks.
        providers: list[Any] = [("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    sess = ort.InferenceSession(model, opts, providers=providers)
    if provider == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        # onnxruntime lists CUDA whenever onnxruntime-gpu is installed, and falls back to the CPU
        # when the CUDA libraries fail to load: a "cuda" check would then be a second CPU run.
        raise OnnxFcnError("CUDA provider asked for, but onnxruntime could not start it (CUDA or cuDNN "
                           "libraries missing or not matching onnxruntime-gpu); the session runs on "
                           f"{', '.join(sess.get_providers())}")
    return sess


def make_session(model: onnx.ModelProto | str | bytes, provider: str = "cpu",
                 pin: dict[str, int] | None = None, optimize: bool = True, arena: bool = True) -> ort.InferenceSession:
    """A session on ``provider`` (``model``: a proto, a path or serialized bytes). ``pin`` fixes
    named free dims: at the reference size the converted model then gets the same kernels as the
    original (with symbolic H and W, onnxruntime's layout optimizations pick other grouped-
    convolution kernels, whose rounding differs). ``optimize=False``: basic graph optimizations
    only (no layout transforms, which cost more than two seconds on a VGG16 for a few runs).
    ``arena=False``: no CPU memory arena, which grows with every new input shape and never
    shrinks (scan's tiles of several sizes would otherwise hold the sum of their peaks)."""
    return _start_model(model, _options(pin, optimize, arena), provider)


def _start_model(model: onnx.ModelProto | str | bytes, opts: ort.SessionOptions, provider: str) -> ort.InferenceSession:
    if isinstance(model, (str, bytes)):
        return _start(model, opts, provider)
    if needs_external_data(model):
        with tempfile.TemporaryDirectory(prefix="onnxfcn-") as tmp:
            path = os.path.join(tmp, "model.onnx")
            save_model(model, path, external_data=True)
            return _start(path, opts, provider)
    return _start(model.SerializeToString(), opts, provider)


def node_from_error(exc: BaseException) -> str | None:
    m = re.search(r"Name:'([^']*)'", str(exc))
    return m.group(1) if m else None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_OOM_MARKS = ("failed to allocate memory", "bad_alloc", "out of memory", "cudaerrormemoryallocation",
              "cuda_error_out_of_memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed")


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in _OOM_MARKS)


def resource_error(exc: BaseException, where: str) -> ResourceError | None:
    """A ResourceError when ``exc`` is an allocation failure: never to be reported as a mismatch."""
    if not is_out_of_memory(exc):
        return None
    return ResourceError(f"out of memory at {where}: {first_line(exc)}")


def project_error(exc: BaseException, where: str, message: str,
                  error: type[OnnxFcnError] = OnnxFcnError) -> OnnxFcnError:
    """The project's error for an onnxruntime failure (onnxruntime raises several types): a
    ResourceError when it ran out of memory at ``where``, else ``error`` saying ``message`` and
    onnxruntime's first line, naming the node onnxruntime names. Project errors pass as they are."""
    if isinstance(exc, OnnxFcnError):
        return exc
    oom = resource_error(exc, where)
    if oom is not None:
        return oom
    return error(f"{message}: {first_line(exc)}", node_from_error(exc))


@contextlib.contextmanager
def onnxruntime_errors(where: str, message: str, error: type[OnnxFcnError] = OnnxFcnError) -> Iterator[None]:
    """Whatever onnxruntime raises inside becomes ``project_error``'s error."""
    try:
        yield
    except OnnxFcnError:
        raise
    except Exception as exc:  # onnxruntime raises several types
        raise project_error(exc, where, message, error) from exc


def failure_note(exc: BaseException, where: str) -> str:
    """For a check that fails rather than raises: onnxruntime's first line. Running out of memory
    still raises (a ResourceError is never reported as a mismatch)."""
    oom = resource_error(exc, where)
    if oom is not None:
        raise oom from exc
    return first_line(exc)


def run_batched(sess: ort.InferenceSession, input_name: str, x: np.ndarray, chunk: int | None = None,
                progress: Progress | None = None, extra: dict[str, np.ndarray] | None = None,
                alongside: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """Run ``sess`` on ``x`` in chunks along the batch axis (``extra``: feeds every run shares;
    ``alongside``: feeds chunked with ``x``, same batch).

    Exporters often bake batch 1 into a Reshape even when the input's batch dim is symbolic; if
    a chunk fails, the rest runs one sample at a time.
    """
    dim0 = next((i.shape[0] for i in sess.get_inputs() if i.name == input_name), None)
    size = 1 if dim0 == 1 else max(1, chunk or len(x))
    parts: list[list[np.ndarray]] = []
    k = 0
    while k < len(x):
        n = min(size, len(x) - k)
        try:
            side = {name: np.ascontiguousarray(a[k:k + n]) for name, a in (alongside or {}).items()}
            outs = sess.run(None, {input_name: x[k:k + n], **side, **(extra or {})})
            # A baked batch of 1 can also run silently and return one sample (dynamo's as_strided).
            ok = all(o.ndim and o.shape[0] == n for o in outs)
        except Exception as exc:  # onnxruntime raises several types
            if size == 1 or is_out_of_memory(exc):
                raise
            ok = False
        if not ok:
            if size == 1:
                raise OnnxFcnError("the original model returns a batch size other than its input's")
            size = 1
            continue
        parts.append(outs)
        k += size
        if progress is not None:
            progress(min(k, len(x)), len(x))
    return [np.concatenate([p[j] for p in parts], axis=0) for j in range(len(parts[0]))]


def symbolic_shapes(model: onnx.ModelProto) -> int:
    """Write the shapes of the tensors that elementwise ops merge as expressions of the named input
    dims (onnxruntime's symbolic shape inference, run on the weightless skeleton); return how many.

    Without them onnxruntime sees unrelated unknown dims on the two inputs of a residual Add and
    does not fuse it into the convolution before it in its NCHWc layout: MobileNetV3-Large with
    dynamic H and W ran 13 % slower than with them (benchmarks/bench_reference.py). A model the
    inference cannot follow keeps no intermediate shapes (as before) and loses nothing else."""
    try:
        SymbolicShapeInference = _symbolic_inference()
    except ImportError as exc:  # sympy missing (a dependency, but one an environment may lack): no shapes
        log.info("symbolic shape inference unavailable (%s); intermediate shapes left out", exc)
        return 0
    # Its steps, not ``infer_shapes``: that saves the model it could not finish as
    # ``sym_shape_infer_temp.onnx`` (and a .data file) in the working directory before raising.
    try:
        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess rank, verbose
        inference._preprocess(skeleton(model, {}))
        complete = False
        while inference.run_:
            complete = inference._infer_impl()
        inference._update_output_from_vi()
        inferred = inference.out_mp_
    except Exception as exc:  # an op it does not know, a dim it cannot merge: no intermediate shapes
        log.info("symbolic shape inference failed (%s: %s); intermediate shapes left out", type(exc).__name__, exc)
        return 0
    if not complete:
        log.info("symbolic shape inference left some shapes open; intermediate shapes left out")
        return 0
    known = {vi.name for vi in model.graph.input} | {t.name for t in model.graph.initializer} | \
        {o.name for o in model.graph.output}
    # Only what the fusion needs (the operands of elementwise ops that merge two tensors): shapes of
    # every tensor would make a model of computed weights (the light zoo's) 70 % larger.
    merged = {i for n in model.graph.node if n.op_type in _MERGING and len(n.input) > 1 for i in n.input}
    symbols = {d.dim_param for vi in model.graph.input for d in vi.type.tensor_type.shape.dim if d.dim_param}
    found = [vi for vi in inferred.graph.value_info
             if vi.name in merged and vi.name not in known and _of_inputs(vi, symbols)]
    del model.graph.value_info[:]
    model.graph.value_info.extend(found)
    return len(found)


def _symbolic_inference() -> Any:
    """onnxruntime's ``SymbolicShapeInference``, loaded from its file: importing it as
    ``onnxruntime.tools.symbolic_shape_infer`` runs that package's ``__init__``, which imports
    PyTorch wherever it is installed (seconds, and hundreds of MB in this process)."""
    import importlib.util
    import sys

    name = "onnxfcn._ort_symbolic_shape_infer"
    if name not in sys.modules:
        path = Path(ort.__file__).parent / "tools" / "symbolic_shape_infer.py"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"onnxruntime's symbolic shape inference not found at {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # raises ImportError without sympy: then nothing is cached
        sys.modules[name] = module
    return sys.modules[name].SymbolicShapeInference


_FUNCTIONS = {"floor", "ceil", "min", "max", "Min", "Max", "Mod"}
_MERGING = {"Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "PRelu", "Where"}


def _of_inputs(vi: onnx.ValueInfoProto, symbols: set[str]) -> bool:
    """A shape whose every dim is a number or an expression of the input's named dims. Where the
    inference could not follow an op (a com.microsoft one), it names dims after the node
    (``QLinearConv_1_o0__d0``): tract then fails to unify them with its own, so those are left out."""
    if not vi.type.tensor_type.HasField("shape"):
        return False
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            continue
        if not d.dim_param or not set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", d.dim_param)) <= symbols | _FUNCTIONS:
            return False
    return True
