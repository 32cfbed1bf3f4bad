"""``inspect``: a dry run. What convert would find, change and refuse, and what the result means."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import onnx

from . import pipeline
from .deploy import deploy_shapes
from .errors import AlreadyConvolutionalError, OnnxFcnError
from .graph import node_label
from .matcher import HeadRefusedError
from .shapes import input_dims


@dataclass
class InspectReport:
    """Everything ``convert`` would do, without doing it. Truthy when the model would convert."""

    input: dict[str, Any] | None = None
    heads: list[dict[str, Any]] = field(default_factory=list)
    changes: list[dict[str, str]] = field(default_factory=list)
    blockers: list[dict[str, str | None]] = field(default_factory=list)
    geometry: dict[str, Any] | None = None
    deploy: dict[str, Any] | None = None  # shapes for other runtimes (deploy.deploy_shapes)
    already_convolutional: bool = False
    mode: str = "window"

    @property
    def convertible(self) -> bool:
        return not self.blockers and not self.already_convolutional

    def __bool__(self) -> bool:
        return self.convertible

    def to_dict(self) -> dict[str, Any]:
        return {"convertible": self.convertible, **self.__dict__}


def inspect(model_or_path: str | os.PathLike[str] | onnx.ModelProto, *, mode: str = "window",
            input_name: str | None = None, size: tuple[int, int] | None = None,
            at: tuple[int, int] | None = None, output_stride: int | tuple[int, int] | None = None,
            opt_size: tuple[int, int] | None = None, max_size: tuple[int, int] | None = None) -> InspectReport:
    """Plan the conversion exactly as ``convert`` does, and stop; ``at``: an input size for the grid;
    ``opt_size`` and ``max_size``: the deploy profile's optimum and maximum."""
    report = InspectReport(mode=mode)
    stride = (output_stride, output_stride) if isinstance(output_stride, int) else output_stride
    state = pipeline.ConversionState(model_or_path, pipeline.Options(mode=mode, input_name=input_name, size=size,
                                                                     self_check=False, output_stride=stride))
    try:
        pipeline.resume(state, stop_after="plan")
    except AlreadyConvolutionalError as exc:
        report.already_convolutional = True
        report.blockers.append({"node": exc.node, "reason": exc.reason})
    except HeadRefusedError as exc:  # every head node no rule can take, each with its reason
        report.blockers.extend({"node": b.node, "reason": f"{b.op}: {b.reason}"} for b in exc.blockers)
    except OnnxFcnError as exc:
        if "load" not in state.done:
            raise  # a file that does not load is an error, not a blocker
        report.blockers.append({"node": exc.node, "reason": exc.reason})
    if state.analysis is None:
        return report
    img = state.analysis.image
    report.input = {"name": img.name, "layout": img.layout, "reference_size": [img.height, img.width],
                    "channels": img.channels}
    for head in state.analysis.heads:
        report.heads.append({
            "features": head.features, "outputs": head.outputs,
            "nodes": [f"{n.op_type} {node_label(n)}" for n in head.nodes],
        })
    if state.planned is None:
        return report
    planned = state.planned
    geo = planned.geometry
    report.mode = planned.mode
    # convert's order
    report.changes = [c.__dict__ for c in planned.trunk.changes + planned.plan.changes + planned.stride_changes]
    if at is not None:
        geo.check_size(*at, what="--at")
    h, w = at or geo.next_size(img.height + 2 * geo.stride[0], img.width + 2 * geo.stride[1])
    report.geometry = geo.summary(h, w)
    report.deploy = deploy_shapes(img, geo, input_dims(state.model, img), opt_size, max_size)
    return report
