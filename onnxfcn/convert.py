"""``convert``: run the pipeline (``pipeline.py``) and describe what happened."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import onnx

from . import pipeline
from .deploy import deploy_shapes
from .errors import OnnxFcnError
from .geometry import Geometry
from .head import ImageInput
from .metadata import ConversionMetadata
from .pipeline import ModelStats
from .preprocess import Preprocess
from .rewrite import Change
from .shapes import class_count

log = logging.getLogger(__name__)

__all__ = ["ConversionReport", "ModelStats", "convert"]


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
    static: dict[str, Any] = field(default_factory=dict)  # --static: the fixed dims and their check
    deploy: dict[str, Any] = field(default_factory=dict)  # shapes for other runtimes (deploy.deploy_shapes)

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
            **({"static": self.static} if self.static else {}),
            "deploy": self.deploy,
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
    output_stride: int | tuple[int, int] | None = None,
    preprocess: Preprocess | None = None,
    labels: list[str] | None = None,
    mpp: float | None = None,
    static: tuple[int, int] | None = None,
    static_batch: int | None = None,
    opt_size: tuple[int, int] | None = None,
    max_size: tuple[int, int] | None = None,
) -> tuple[onnx.ModelProto, ConversionReport]:
    """Rewrite a classifier's dense head into convolutions; return the new model and a report.

    ``mode="window"`` (default) makes each output cell the classifier applied to one
    reference-size window; ``mode="dense"`` drops a global pool so each feature cell is scored
    on its own. The input model is never modified. With ``self_check`` the result is run on
    onnxruntime at the reference size (compared with the original) and at two larger sizes; a
    self-check whose estimated memory exceeds what is available (or ``max_memory`` bytes) is
    refused before it runs. ``output_stride`` (S, or (SH, SW)), a divisor of the network's own
    stride, gives a denser map in one pass: the stride is taken out of the last strided layers
    and every later kernel is dilated (a trous). ``preprocess`` and ``labels`` are stored in the
    metadata for ``scan`` (``preprocess.py``); labels must match the number of classes. ``mpp``: the
    micrometres per pixel the model was trained at, stored for scan, which reads a pyramid's
    nearest level by it. ``static`` (H, W): the result takes that input size only, every output dim
    written out (compilers, NPUs, static TensorRT engines); ``static_batch`` fixes the batch too.
    The report's ``deploy`` holds TensorRT, OpenVINO and onnxruntime shapes, with ``opt_size`` and
    ``max_size`` as the profile's optimum and maximum.
    """
    t0 = time.perf_counter()
    stride = (output_stride, output_stride) if isinstance(output_stride, int) else output_stride
    state = pipeline.run(model_or_path, pipeline.Options(mode=mode, input_name=input_name, size=size,
                                                         self_check=self_check, seed=seed, max_memory=max_memory,
                                                         output_stride=stride, static=static,
                                                         static_batch=static_batch))
    planned, model = state.plan, state.model
    if preprocess is not None:
        preprocess.check(planned.analysis.image.channels)
    if labels is not None:
        classes = class_count(model)
        if classes is not None and len(labels) != classes:
            raise OnnxFcnError(f"{len(labels)} labels for {classes} classes: give one label per class")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise OnnxFcnError(f"--mpp {mpp}: micrometres per pixel must be a positive number")
    if preprocess is not None or labels is not None or mpp is not None:
        meta = ConversionMetadata.read(model)
        assert meta is not None  # the pipeline wrote it
        meta.with_preprocess(preprocess, labels, mpp).write(model)
    report = ConversionReport(
        image=planned.analysis.image, mode=planned.mode, geometry=planned.geometry,
        changes=planned.trunk.changes + planned.plan.changes + planned.stride_changes, features=sorted(set(planned.plan.features)),
        before=state.before, after=ModelStats.of(model), external_data=state.external_data,
        input_files=state.input_files, self_check=state.self_check, static=state.static,
        deploy=deploy_shapes(planned.analysis.image, planned.geometry,
                             [d.dim_param or d.dim_value for vi in model.graph.input if vi.name == planned.analysis.image.name
                              for d in vi.type.tensor_type.shape.dim], opt_size, max_size, static_batch or 1, static),
    )
    report.seconds = time.perf_counter() - t0
    log.info("converted in %.2fs: %d changes", report.seconds, len(report.changes))
    return model, report
