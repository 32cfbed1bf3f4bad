"""Sizes and amounts written as text, as the command line takes them: ``HxW`` sizes, byte counts
(``8G``), comma-separated floats, scales (``1/255``). Each refuses a bad text with one line."""

from __future__ import annotations

from .errors import OnnxFcnError


def parse_size(text: str, option: str = "--size", example: str = "384x320") -> tuple[int, int]:
    """'384x320', '384,320' or '384' (the same on both axes); also --output-stride's '16x32'."""
    parts = text.strip().lower().replace("×", "x").replace(",", "x").split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise OnnxFcnError(f"{option} {text!r}: expected HxW (e.g. {example}), or one number for both") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0:
        raise OnnxFcnError(f"{option} {text!r}: expected two positive values HxW, e.g. {example}")
    return values[0], values[1]


def parse_bytes(text: str, option: str = "--max-memory") -> int:
    """'8G', '512M', '1.5GiB', '100000' -> bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t)
    except ValueError:
        raise OnnxFcnError(f"{option} {text!r}: expected a size such as 8G or 512M") from None
    if not value > 0 or value == float("inf"):
        raise OnnxFcnError(f"{option} {text!r}: must be positive")
    return int(value * scale)


def human_bytes(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    """'0.485,0.456,0.406' -> a tuple; None stays None."""
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise OnnxFcnError(f"{option} {text!r}: expected comma-separated numbers, e.g. 0.485,0.456,0.406") from None
    return vals


def parse_scale(text: str | None, option: str = "--scale") -> float | None:
    """'0.00392', '1/255' or None."""
    if text is None:
        return None
    try:
        if "/" in text:
            num, den = text.split("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise OnnxFcnError(f"{option} {text!r}: expected a number such as 0.0039 or 1/255") from None
