"""The one pipeline convert and inspect run: load -> analyse -> plan -> reference -> apply -> make dynamic -> check
-> make static (``--static`` only).

Each stage is a pass in the manner of onnx-ir's: it names the stages it requires, states what it
ensures, and reports whether it changed the model. ``inspect`` is this pipeline stopped after
``plan``, so the two cannot disagree; ``verify`` plans the original the same way (``plan``) to
check a converted file's metadata against it. Saving is the caller's: the API returns the model.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from .deploy import check_static_size, compare_static, fix_shapes, run_once, static_input
from .errors import OnnxFcnError, SelfCheckError
from .graph import GraphIndex, skeleton
from .head import Analysis
from .io import dependency_files, load_model, model_nbytes
from .metadata import ConversionMetadata
from .plan import Planned, analyse_model, check_mode, plan_analysis
from .rewrite import apply_plan
from .runtime import probe_shapes, symbolic_shapes
from .shapes import make_dynamic
from .verify.selfcheck import Reference, reference_outputs, self_check
from .verify.subject import Subject, subject_from_plan

log = logging.getLogger(__name__)


@dataclass
class ModelStats:
    nodes: int
    ops: dict[str, int]
    inputs: dict[str, list[Any]]
    outputs: dict[str, list[Any]]
    bytes: int

    @classmethod
    def of(cls, model: onnx.ModelProto) -> ModelStats:
        def dims(vi: onnx.ValueInfoProto) -> list[Any]:
            return [d.dim_param or d.dim_value or "?" for d in vi.type.tensor_type.shape.dim]

        inits = {t.name for t in model.graph.initializer}
        return cls(
            nodes=len(model.graph.node),
            ops=dict(Counter(n.op_type for n in model.graph.node)),
            inputs={i.name: dims(i) for i in model.graph.input if i.name not in inits},
            outputs={o.name: dims(o) for o in model.graph.output},
            bytes=model_nbytes(model),
        )


@dataclass(kw_only=True)
class Options:
    mode: str = "window"
    input_name: str | None = None
    size: tuple[int, int] | None = None
    self_check: bool = True
    seed: int = 0
    max_memory: int | None = None
    output_stride: tuple[int, int] | None = None  # None: the network's own
    static: tuple[int, int] | None = None  # convert --static: the input fixed at H x W
    static_batch: int | None = None  # and the batch (None: as the original's)


@dataclass
class ConversionState:
    """What the stages hand on to each other."""

    source: str | os.PathLike[str] | onnx.ModelProto
    options: Options
    model: onnx.ModelProto = field(default_factory=onnx.ModelProto)
    external_data: bool = False
    before: ModelStats = field(default_factory=lambda: ModelStats(0, {}, {}, {}, 0))
    input_files: list[str] = field(default_factory=list)  # what the input reads: never overwritten
    analysis: Analysis | None = None
    planned: Planned | None = None
    subject: Subject | None = None
    reference: Reference | None = None  # the original's outputs at the reference size, for the self-check
    self_check: list[dict[str, object]] = field(default_factory=list)
    static: dict[str, object] = field(default_factory=dict)  # the fixed dims and their check (--static)
    done: list[str] = field(default_factory=list)
    changed: dict[str, bool] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def plan(self) -> Planned:
        assert self.planned is not None, "the plan stage has not run"
        return self.planned


@dataclass(frozen=True)
class Stage:
    name: str
    requires: tuple[str, ...]
    ensures: str
    run: Callable[[ConversionState], bool]  # returns whether it changed the model


def _load(s: ConversionState) -> bool:
    s.model, s.external_data = load_model(s.source)
    s.before = ModelStats.of(s.model)
    if not isinstance(s.source, onnx.ModelProto):
        s.input_files = sorted(str(p) for p in (dependency_files(s.source) if s.external_data
                                                else {Path(s.source).resolve()}))
    return False


def _analyse(s: ConversionState) -> bool:
    o = s.options
    check_mode(o.mode)  # before the analysis, which costs
    s.analysis = analyse_model(s.model, o.input_name, o.size)
    return False


def _plan(s: ConversionState) -> bool:
    o = s.options
    assert s.analysis is not None
    s.planned = plan_analysis(s.analysis, o.mode, o.output_stride)
    _check_static_size(s)  # before any work on the model
    if o.self_check:  # read off the original head before the graph is rewritten in place
        s.subject = subject_from_plan(s.planned, [out.name for out in s.model.graph.output])
    return False


def _reference(s: ConversionState) -> bool:
    if s.subject is not None and s.subject.mode == "window":
        s.reference = reference_outputs(s.model, s.subject, seed=s.options.seed, max_memory=s.options.max_memory)
    return False


def _apply(s: ConversionState) -> bool:
    trunk = s.plan.trunk
    apply_plan(s.model, s.plan.plan, trunk.replacements, trunk.initializers, s.plan.stride_edits)
    return True


def _make_dynamic(s: ConversionState) -> bool:
    image, plan = s.plan.analysis.image, s.plan.plan
    index = GraphIndex(s.model, {image.name: image.shape_at(1, image.height, image.width)}, probe_shapes)
    channels: dict[str, int | None] = {}
    for name, m in plan.outputs.items():
        shape = index.shape(name)
        dim = shape[m.layout[1]] if shape and m.layout is not None else None
        channels[name] = dim if isinstance(dim, int) else None
    make_dynamic(s.model, image, plan.outputs, channels)
    log.info("symbolic shapes of %d intermediate tensors", symbolic_shapes(s.model))
    ConversionMetadata.of(s.plan.geometry, list(dict.fromkeys(plan.sources)), s.plan.analysis.image).write(s.model)
    return True


def _check_static_size(s: ConversionState) -> None:
    if s.options.static is not None:
        check_static_size(s.plan.geometry, *s.options.static)
    if s.options.static_batch is not None and s.options.static is None:
        raise OnnxFcnError("--static-batch fixes the batch of a --static model: give --static HxW too")
    if s.options.static_batch is not None and s.options.static_batch < 1:
        raise OnnxFcnError(f"--static-batch {s.options.static_batch}: the batch must be at least 1")


def _make_static(s: ConversionState) -> bool:
    o = s.options
    if o.static is None:
        return False
    image, geo = s.plan.analysis.image, s.plan.geometry
    x = static_input(s.model, image, *o.static, o.static_batch or 2, o.seed, o.max_memory) if o.self_check else None
    dynamic = run_once(s.model, image, x) if x is not None else None  # before the shapes are fixed
    shapes = fix_shapes(s.model, image, geo, *o.static, o.static_batch)
    meta = ConversionMetadata.read(s.model)
    assert meta is not None
    replace(meta, static=o.static).write(s.model)
    s.static = {"input": shapes.input, "outputs": shapes.outputs}
    if x is not None and dynamic is not None:
        s.static["check"] = compare_static(dynamic, s.model, image, x)
    return True


def _check(s: ConversionState) -> bool:
    try:
        # The checker on the skeleton (weights as typed inputs) checks the graph without
        # serializing the weights; the tests run it on whole models too.
        onnx.checker.check_model(skeleton(s.model, {}, keep_output_shapes=True), full_check=True)
    except Exception as exc:  # the checker raises several types
        raise SelfCheckError(f"converted model fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
    if s.subject is not None:
        s.self_check = self_check(s.model, s.subject, s.reference, seed=s.options.seed,
                                  max_memory=s.options.max_memory)
    return False


STAGES: tuple[Stage, ...] = (
    Stage("load", (), "a valid model in memory; the input file untouched", _load),
    Stage("analyse", ("load",), "the image input, its layout and reference size, and every head found", _analyse),
    Stage("plan", ("analyse",), "a rule for every head node, the geometry and exactness; the model unchanged",
          _plan),
    Stage("reference", ("plan",), "(self-check, window mode) the original's outputs on a random input at the "
          "reference size, run before the graph is rewritten in place", _reference),
    Stage("apply", ("reference",), "the heads are convolutions; no dead node or weight", _apply),
    Stage("make_dynamic", ("apply",), "named dynamic batch, H and W; the shapes of what elementwise ops merge as "
          "expressions of them (where onnxruntime's symbolic inference follows the graph); the geometry in the metadata",
          _make_dynamic),
    Stage("check", ("make_dynamic",), "the ONNX checker passes, and (self-check) onnxruntime agrees with the "
          "original at the reference size and runs at two larger sizes", _check),
    Stage("make_static", ("check",), "(--static) the input fixed at H x W, every output dim written from the grid; "
          "(self-check) equal to the dynamic model there, cell for cell", _make_static),
)


def run(source: str | os.PathLike[str] | onnx.ModelProto, options: Options, stop_after: str | None = None) -> ConversionState:
    """Run the stages in order (up to ``stop_after``), each after the stages it requires."""
    return resume(ConversionState(source, options), stop_after)


def resume(state: ConversionState, stop_after: str | None = None) -> ConversionState:
    """Run the stages ``state`` has not run yet. A stage that raises leaves ``state`` as the
    stages before it left it (inspect reads the heads off a model it cannot plan)."""
    if stop_after is not None and stop_after not in {st.name for st in STAGES}:
        raise OnnxFcnError(f"no stage named {stop_after!r}")
    for stage in STAGES:
        if stage.name in state.done:
            continue
        missing = [r for r in stage.requires if r not in state.done]
        if missing:  # a programming error: the stage list is out of order
            raise RuntimeError(f"stage {stage.name} requires {missing}")
        t0 = time.perf_counter()
        state.changed[stage.name] = stage.run(state)
        state.seconds[stage.name] = time.perf_counter() - t0
        state.done.append(stage.name)
        log.debug("%s: %s (%.2fs)", stage.name, stage.ensures, state.seconds[stage.name])
        if stage.name == stop_after:
            break
    return state
