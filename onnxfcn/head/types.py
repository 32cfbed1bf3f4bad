"""What the analysis says about a model: the image input, each tensor's state and layout, the heads."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import onnx

from ..graph import GraphIndex


class TensorState(enum.Enum):
    """What a tensor is, by forward propagation from the image input."""

    CONST = "const"  # depends on no graph input (weights, shape constants)
    SHAPE = "shape"  # computed from tensor shapes only (the x.view(x.size(0), -1) subgraph)
    SPATIAL = "spatial"  # an image-like map whose height and width follow the input size
    POOLED = "pooled"  # a map pooled to 1x1 over the whole feature map (global pooling)
    FLAT = "flat"  # a per-sample vector, N x D (after Flatten, Reshape or a keepdims=0 reduction)
    TOKENS = "tokens"  # a map's H x W positions on one axis (attention inside the trunk); see tokens.py


# Layout of a spatial tensor: the axis positions of (N, C, H, W) in the actual tensor.
Layout = tuple[int, int, int, int]
NCHW_AXES: Layout = (0, 1, 2, 3)
NHWC_AXES: Layout = (0, 3, 1, 2)


def perm_to(layout: Layout, target: Layout) -> list[int]:
    """Transpose perm taking a tensor in ``layout`` to ``target`` (both as N,C,H,W positions)."""
    perm = [0, 0, 0, 0]
    for canon in range(4):
        perm[target[canon]] = layout[canon]
    return perm


@dataclass(frozen=True)
class ImageInput:
    """The image input: its name, layout ("NCHW" or "NHWC") and reference (export-time) size."""

    name: str
    layout: str
    batch: int | str | None
    channels: int
    height: int
    width: int

    def shape_at(self, batch: int, height: int, width: int) -> list[int]:
        if self.layout == "NCHW":
            return [batch, self.channels, height, width]
        return [batch, height, width, self.channels]

    @property
    def axes(self) -> Layout:
        return NCHW_AXES if self.layout == "NCHW" else NHWC_AXES


@dataclass(frozen=True)
class Tokens:
    """A map whose H x W positions lie on one axis (two in an attention matrix)."""

    axes: tuple[int, ...]  # where the token axes are in this tensor
    batch: int | None  # where the batch axis is (None: merged with another, or lost)
    source: str  # the map the tokens were made from
    hw: tuple[int, int]  # its height and width at the reference size
    mixing: str | None = None  # the first node that mixes positions (attention): every cell sees them all
    mixing_kind: str = "attention"  # or "statistics" (a group norm's over all positions)
    inner: int = 1  # channels merged inside the token axis with the positions (a group norm's C/G)
    blocked: tuple[str, str] | None = None  # (node, reason): the first op the tool cannot generalize

    @property
    def count(self) -> int:
        return self.hw[0] * self.hw[1]


@dataclass
class TensorInfo:
    state: TensorState
    layout: Layout | None = None  # SPATIAL and POOLED
    tokens: Tokens | None = None  # TOKENS


@dataclass
class Head:
    """One dense head: the nodes after a feature map, up to one or more graph outputs."""

    nodes: list[onnx.NodeProto]
    features: list[str]  # SPATIAL tensors the head reads (usually one)
    outputs: list[str]


@dataclass
class Analysis:
    index: GraphIndex
    image: ImageInput
    info: dict[str, TensorInfo]
    heads: list[Head]
    spellings: list[tuple[str, str, str]] = field(default_factory=list)  # ops written as ops (spellings.py)

    def layout(self, name: str) -> Layout:
        lay = self.info[name].layout
        assert lay is not None, name
        return lay

    def state(self, name: str) -> TensorState | None:
        info = self.info.get(name)
        return info.state if info is not None else None
