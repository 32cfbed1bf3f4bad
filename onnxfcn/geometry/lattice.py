"""Size lattices: the input sizes a model runs at, per axis.

Branches that merge maps whose sizes agree only at some input sizes (the light zoo's Inception
v2, timm's DLA34 and HRNet) run only where they agree: sizes ``n`` with ``n % period`` in a set of
residues. ``(1, (0,))`` is every size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..errors import InvalidConversionError, OnnxFcnError

# (period, residues): n is on the lattice when n % period is one of the residues.
Lattice = tuple[int, tuple[int, ...]]
ANY_SIZE: Lattice = (1, (0,))
SizeFn = Callable[[int], int]


def on_lattice(n: int, lattice: Lattice) -> bool:
    return n % lattice[0] in lattice[1]


def next_on_lattice(n: int, lattice: Lattice) -> int:
    """The smallest size at least ``n`` on the lattice."""
    return next(m for m in range(n, n + lattice[0]) if on_lattice(m, lattice))


def check_on_lattice(height: int, width: int, lattice: tuple[Lattice, Lattice], what: str = "size") -> None:
    """Refuse, with one line, a size off the lattice, naming the next size on it."""
    if on_lattice(height, lattice[0]) and on_lattice(width, lattice[1]):
        return
    nh, nw = next_on_lattice(height, lattice[0]), next_on_lattice(width, lattice[1])
    raise OnnxFcnError(f"{what} {height}x{width} is not a size the model runs at (H = {lattice_text(lattice[0])}, "
                       f"W = {lattice_text(lattice[1])}: at other sizes merged branches' sizes differ or space-to-depth blocks "
                       f"do not divide the map, and onnxruntime fails); the next size that is: {nh}x{nw}")


def lattice_text(lattice: Lattice) -> str:
    """'any', '32k+7' or '32k+{7,8}'."""
    period, residues = lattice
    if period == 1:
        return "any"
    return f"{period}k+{residues[0]}" if len(residues) == 1 else f"{period}k+{{{','.join(map(str, residues))}}}"


def parse_lattice(text: str) -> Lattice:
    """The inverse of ``lattice_text``."""
    if text == "any":
        return ANY_SIZE
    try:
        period_text, rest = text.split("k+", 1)
        period = int(period_text)
        residues = tuple(sorted(int(r) for r in rest.strip("{}").split(",")))
    except ValueError:
        raise OnnxFcnError(f"{text!r} is not a size lattice such as 32k+7") from None
    if period < 1 or not residues or any(not 0 <= r < period for r in residues):
        raise OnnxFcnError(f"{text!r} is not a size lattice such as 32k+7")
    return period, residues


def sizes_text(lattice: tuple[Lattice, Lattice]) -> str:
    """Both axes' lattices: 'any', '32k+7' (both axes), or '32k+7 x 32k+3' (H x W)."""
    h, w = (lattice_text(lat) for lat in lattice)
    return h if h == w else f"{h} x {w}"


def parse_sizes(text: str) -> tuple[Lattice, Lattice]:
    """The inverse of ``sizes_text`` (the metadata's ``onnxfcn.sizes``)."""
    try:
        parts = [parse_lattice(p.strip()) for p in text.split(" x ")]
    except OnnxFcnError:
        raise InvalidConversionError(f"metadata onnxfcn.sizes is {text!r}, not 'any', '32k+7' or '32k+7 x 32k+3'") from None
    if len(parts) not in (1, 2):
        raise InvalidConversionError(f"metadata onnxfcn.sizes is {text!r}, not 'any', '32k+7' or '32k+7 x 32k+3'")
    return parts[0], parts[-1]


def meet(a: Lattice, b: Lattice) -> Lattice:
    """The sizes on both lattices."""
    period = math.lcm(a[0], b[0])
    return period, tuple(r for r in range(period) if on_lattice(r, a) and on_lattice(r, b))


def agreeing(mine: SizeFn, theirs: SizeFn, period: int, ref: int) -> Lattice:
    """The sizes at which two merged branches have the same size: residues modulo ``period`` (the
    stride at the merge, after which the sizes repeat) that agree at every probed size."""
    bad: set[int] = set()
    for n in range(max(1, ref - 2 * period), ref + 4 * period):
        a, b = mine(n), theirs(n)
        if (a >= 1 or b >= 1) and a != b:
            bad.add(n % period)
    return period, tuple(r for r in range(period) if r not in bad)


def divisible(size: SizeFn, b: int, period: int, ref: int) -> Lattice:
    """The input sizes at which a map of ``size(n)`` cells divides into blocks of ``b`` (residues
    modulo ``period``, after which that repeats, that hold at every probed size)."""
    return agreeing(size, lambda n: size(n) // b * b, period, ref)  # the map and its whole blocks
