"""What the geometry walk carries: each map's per-axis geometry, and the walk's own state."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..head import Analysis
from ..stride import Edit
from .lattice import ANY_SIZE, Lattice, SizeFn, meet, on_lattice


@dataclass
class AxisGeo:
    jump: int = 1
    start: int = 0
    rf: int = 1
    size: SizeFn = field(default=lambda n: n)
    dense: int = 1  # output stride: new cells per original cell (the dilation later kernels need)

    def copy(self) -> AxisGeo:
        return AxisGeo(self.jump, self.start, self.rf, self.size, self.dense)


@dataclass
class MapGeo:
    h: AxisGeo
    w: AxisGeo
    reasons: list[str]


@dataclass
class Walk:
    """What the walk carries from node to node."""

    analysis: Analysis
    target: tuple[int, int] | None  # the output stride, or None: the network's own
    maps: dict[str, MapGeo] = field(default_factory=dict)
    lattice: list[Lattice] = field(default_factory=lambda: [ANY_SIZE, ANY_SIZE])
    coarse: list[int] = field(default_factory=lambda: [1, 1])  # the coarsest stride of any map so far
    pooled_in_trunk: dict[str, str] = field(default_factory=dict)  # a global pool's output -> the pool
    edits: dict[str, Edit] = field(default_factory=dict)

    @property
    def ref(self) -> tuple[int, int]:
        """The reference input's height and width."""
        return self.analysis.image.height, self.analysis.image.width

    def narrow(self, ax: int, sizes: Lattice) -> bool:
        """Keep only the input sizes on ``sizes`` along axis ``ax`` (0: H, 1: W); False, changing
        nothing, where the reference size is not among them (the caller says why)."""
        met = meet(self.lattice[ax], sizes)
        if not on_lattice(self.ref[ax], met):
            return False
        self.lattice[ax] = met
        return True
