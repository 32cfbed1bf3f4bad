"""``convert``: load, analyse, rewrite, make dynamic, check, and describe what happened."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from .errors import SelfCheckError
from .geometry import Geometry
from .graph import GraphIndex, skeleton
from .head import ImageInput
from .io import dependency_files, load_model, model_nbytes
from .plan import metadata, plan_conversion, set_metadata
from .rewrite import Change, apply
from .runtime import probe_shapes
from .shapes import make_dynamic
from .verify import self_check as run_self_check
from .verify import subject_from_plan

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


@dataclass
class ConversionReport:
    """What ``convert`` did: the rewrite, the geometry, the self-check and before/after stats."""

    image: ImageInput
    mode: str
    geometry: Geometry
    changes: list[Change]
    features: list[str]
    before: ModelStats
    after: ModelStats
    seconds: float = 0.0
    self_check: list[dict[str, Any]] = field(default_factory=list)
    external_data: bool = False
    input_files: list[str] = field(default_factory=list)  # what the input reads: never overwritten

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": {"name": self.image.name, "layout": self.image.layout,
                      "reference_size": [self.image.height, self.image.width]},
            "mode": self.mode,
            "geometry": self.geometry.summary(),
            "changes": [c.__dict__ for c in self.changes],
            "features": self.features,
            "before": self.before.__dict__,
            "after": self.after.__dict__,
            "seconds": round(self.seconds, 3),
            "self_check": self.self_check,
        }


def convert(
    model_or_path: str | os.PathLike[str] | onnx.ModelProto,
    *,
    mode: str = "window",
    input_name: str | None = None,
    size: tuple[int, int] | None = None,
    self_check: bool = True,
    seed: int = 0,
    max_memory: int | None = None,
) -> tuple[onnx.ModelProto, ConversionReport]:
    """Rewrite a classifier's dense head into convolutions; return the new model and a report.

    ``mode="window"`` (default) makes each output cell the classifier applied to one
    reference-size window; ``mode="dense"`` drops a global pool so each feature cell is scored
    on its own. The input model is never modified. With ``self_check`` the result is run on
    onnxruntime at the reference size (compared with the original) and at two larger sizes; a
    self-check whose estimated memory exceeds what is available (or ``max_memory`` bytes) is
    refused before it runs.
    """
    t0 = time.perf_counter()
    model, external = load_model(model_or_path)
    input_files: list[str] = []
    if not isinstance(model_or_path, onnx.ModelProto):
        input_files = sorted(str(p) for p in (dependency_files(model_or_path) if external
                                              else {Path(model_or_path).resolve()}))
    before = ModelStats.of(model)
    # The self-check runs the original too: from its file when there is one (no copy in memory).
    original: onnx.ModelProto | str = "" if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    if self_check and not original:
        original = onnx.ModelProto()
        original.CopyFrom(model)
    planned = plan_conversion(model, mode=mode, input_name=input_name, size=size)
    analysis, plan, trunk, geo, mode = planned.analysis, planned.plan, planned.trunk, planned.geometry, planned.mode
    subject = subject_from_plan(planned, [o.name for o in model.graph.output]) if self_check else None
    apply(model, analysis, plan, trunk.replacements, trunk.initializers)
    ref_index = GraphIndex(model, {analysis.image.name: analysis.image.shape_at(1, analysis.image.height,
                                                                                  analysis.image.width)},
                           probe_shapes)
    channels: dict[str, int | None] = {}
    for name, m in plan.outputs.items():
        shape = ref_index.shape(name)
        dim = shape[m.layout[1]] if shape and m.layout is not None else None
        channels[name] = dim if isinstance(dim, int) else None
    make_dynamic(model, analysis.image, plan.outputs, channels)
    set_metadata(model, metadata(geo, list(dict.fromkeys(plan.sources))))
    try:
        # The checker on the skeleton (weights as typed inputs) checks the graph without
        # serializing the weights; the tests run it on whole models too.
        onnx.checker.check_model(skeleton(model, {}, keep_output_shapes=True), full_check=True)
    except Exception as exc:  # the checker raises several types
        raise SelfCheckError(f"converted model fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
    report = ConversionReport(
        image=analysis.image, mode=mode, geometry=geo, changes=trunk.changes + plan.changes,
        features=sorted(set(plan.features)), before=before, after=ModelStats.of(model), external_data=external,
        input_files=input_files,
    )
    if subject is not None:
        report.self_check = run_self_check(original, model, subject, seed=seed, max_memory=max_memory)
    report.seconds = time.perf_counter() - t0
    log.info("converted in %.2fs: %d changes", report.seconds, len(plan.changes))
    return model, report
