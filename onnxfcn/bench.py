"""``bench``: one pass of the converted model against the original on every window it replaces.

Both run in this process, one after the other, on the same provider and the same random image:
the converted model once at the given size, the original on each of the windows its cells stand
for (cut at offset + (i, j) * stride, batched), and both at the reference size. Times are medians
over repeats after one warm-up run. Multiply-accumulates come from the graphs (``macs``), so
``efficiency`` = speedup / MAC ratio says how much of the arithmetic saving the runtime turns into
time. Peak memory is the process's resident peak during each phase (Linux: reset between phases
through /proc/self/clear_refs; elsewhere not reported).
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from .errors import InvalidConversionError, OnnxFcnError
from .geometry import check_on_lattice, next_on_lattice
from .head import ImageInput, find_image_input
from .io import load_model
from .macs import count_macs
from .metadata import ConversionMetadata
from .runtime import check_memory, make_session, onnxruntime_errors, resolve_providers, run_batched
from .windows import corners, crop, fits

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
_MIN_SECONDS = 0.5  # a phase's timed runs last at least this long (fast runs are noisy)...
_MAX_RUNS = 200  # ...up to this many


@dataclass
class Timing:
    """One phase: seconds per repeat, and the process's peak resident memory while it ran and
    its resident memory when it began (the phase's own share is the difference)."""

    seconds: list[float]
    peak_rss: int | None = None
    start_rss: int | None = None

    @property
    def added_rss(self) -> int | None:
        if self.peak_rss is None or self.start_rss is None:
            return None
        return max(0, self.peak_rss - self.start_rss)  # the peak is reset to the resident size at the start

    @property
    def median(self) -> float:
        return float(statistics.median(self.seconds))

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "seconds": self.seconds, "peak_rss": self.peak_rss,
                "start_rss": self.start_rss, "added_rss": self.added_rss}


@dataclass
class BenchReport:
    size: tuple[int, int]
    window: tuple[int, int]
    stride: tuple[int, int]
    grid: tuple[int, int]
    provider: str
    repeats: int
    converted: Timing  # one pass at ``size``
    original_windows: Timing  # the original on every window, batched
    converted_reference: Timing
    original_reference: Timing
    converted_macs: int
    original_macs: int  # per window
    notes: list[str] = field(default_factory=list)

    @property
    def windows(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def speedup(self) -> float:
        return self.original_windows.median / self.converted.median

    @property
    def mac_ratio(self) -> float:
        return self.original_macs * self.windows / self.converted_macs if self.converted_macs else float("nan")

    @property
    def efficiency(self) -> float:
        return self.speedup / self.mac_ratio

    @property
    def reference_latency_ratio(self) -> float:
        return self.converted_reference.median / self.original_reference.median

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": list(self.size), "window": list(self.window), "stride": list(self.stride),
            "grid": list(self.grid), "windows": self.windows, "provider": self.provider, "repeats": self.repeats,
            "speedup": self.speedup, "mac_ratio": self.mac_ratio, "efficiency": self.efficiency,
            "reference_latency_ratio": self.reference_latency_ratio,
            "converted_macs": self.converted_macs, "original_macs_per_window": self.original_macs,
            "converted": self.converted.to_dict(), "original_windows": self.original_windows.to_dict(),
            "converted_reference": self.converted_reference.to_dict(),
            "original_reference": self.original_reference.to_dict(), "notes": self.notes,
        }


def _reset_peak() -> bool:
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set size (Linux >= 4.0)
        return True
    except OSError:
        return False


def _status(key: str) -> int | None:
    """VmHWM (peak) or VmRSS (now), in bytes."""
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def windows(image: ImageInput, x: np.ndarray, grid: tuple[int, int], window: tuple[int, int],
            stride: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
    """The windows of ``x`` (batch 1) that the converted model's cells stand for, stacked on the
    batch axis in row-major cell order. Windows that reach past the image are not cut."""
    hax, wax = (2, 3) if image.layout == "NCHW" else (1, 2)
    size = (x.shape[hax], x.shape[wax])
    crops = [crop(x, image.layout, top, left, *window) for _, _, top, left in corners(grid, stride, offset)
             if fits(top, left, window, size)]
    return np.concatenate(crops, axis=0) if crops else x[:0]


def bench(original: str | os.PathLike[str] | onnx.ModelProto, converted: str | os.PathLike[str] | onnx.ModelProto,
          *, size: tuple[int, int] | None = None, repeats: int = 5, batch: int = 16, provider: str = "cpu",
          seed: int = 0, progress: Progress | None = None) -> BenchReport:
    """Time one pass of ``converted`` at ``size`` against ``original`` on every window it replaces
    (default size: the window plus five of the network's strides, 384x384 for a 224, stride-32
    classifier)."""
    if repeats < 1 or batch < 1:
        raise OnnxFcnError("repeats and batch must be at least 1")
    (prov,) = resolve_providers(provider)[-1:]
    orig, _ = load_model(original)
    conv, _ = load_model(converted)
    # Sessions read a file from its path (no serialized copy in this process); a model in memory
    # is serialized once per session.
    orig_src: onnx.ModelProto | str = orig if isinstance(original, onnx.ModelProto) else str(original)
    conv_src: onnx.ModelProto | str = conv if isinstance(converted, onnx.ModelProto) else str(converted)
    meta = ConversionMetadata.read(conv)
    if meta is None:
        raise InvalidConversionError("the second model has no onnxfcn metadata: is it a model converted by onnxfcn?")
    window, stride, dil, lattice = meta.window, meta.stride, meta.feature_dilation, meta.sizes
    offset = meta.offset if meta.mode == "window" else (0, 0)
    image = find_image_input(orig, None, window)
    h, w = size or (next_on_lattice(window[0] + 5 * stride[0] * dil[0], lattice[0]),
                    next_on_lattice(window[1] + 5 * stride[1] * dil[1], lattice[1]))
    check_on_lattice(h, w, lattice, "--size")
    if h < window[0] or w < window[1]:
        raise OnnxFcnError(f"no window fits {h}x{w}: the windows are {window[0]}x{window[1]}; use a larger --size")
    check_memory(conv, image.name, image.shape_at(1, h, w), f"bench at {h}x{w}", remedy="use a smaller --size")
    notes = []
    if meta.mode == "dense":
        notes.append("dense mode: a cell scores one feature position; the original still runs on the windows at "
                     "the stride")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(image.shape_at(1, h, w)).astype(np.float32)
    x_ref = rng.standard_normal(image.shape_at(1, *window)).astype(np.float32)
    total = 4  # progress counts the phases
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    def phase(model: onnx.ModelProto | str, feed: np.ndarray, chunk: int) -> tuple[Timing, list[np.ndarray]]:
        reset = _reset_peak()
        start = _status("VmRSS") if reset else None
        sess = make_session(model, prov)
        outs: list[np.ndarray] = []
        times: list[float] = []
        runs = repeats + 1
        k = 0
        while k < runs:  # the first run warms up; runs of a few ms repeat for half a second at least
            t = time.perf_counter()
            with onnxruntime_errors(f"{feed.shape[-2]}x{feed.shape[-1]}", f"onnxruntime fails on input {list(feed.shape)}"):
                outs = run_batched(sess, image.name, feed, chunk=chunk)
            took = time.perf_counter() - t
            if k:
                times.append(took)
            else:
                runs = min(_MAX_RUNS, max(runs, 1 + math.ceil(_MIN_SECONDS / max(took, 1e-6))))
            k += 1
        tick()
        peak = _status("VmHWM") if reset else None
        del sess
        return Timing(times, peak, start), outs

    conv_t, conv_out = phase(conv_src, x, 1)
    y = conv_out[0]
    grid_axes = (2, 3) if y.ndim == 4 else (1, 2)
    grid = (int(y.shape[grid_axes[0]]), int(y.shape[grid_axes[1]]))
    crops = windows(image, x, grid, window, stride, offset)
    if len(crops) < grid[0] * grid[1]:
        notes.append(f"{grid[0] * grid[1] - len(crops)} cells reach past the image: their windows are not cut, "
                     "the original runs on the other ones")
    if not len(crops):
        raise OnnxFcnError(f"no whole window fits {h}x{w}: use a larger --size")
    orig_t, _ = phase(orig_src, crops, batch)
    if len(crops) < grid[0] * grid[1]:  # per window, as if every cell had one
        orig_t = Timing([t * grid[0] * grid[1] / len(crops) for t in orig_t.seconds], orig_t.peak_rss,
                        orig_t.start_rss)
    conv_ref, _ = phase(conv_src, x_ref, 1)
    orig_ref, _ = phase(orig_src, x_ref, 1)
    conv_macs = count_macs(conv, image.name, image.shape_at(1, h, w))
    orig_macs = count_macs(orig, image.name, image.shape_at(1, *window))
    report = BenchReport((h, w), window, stride, grid, prov, repeats, conv_t, orig_t, conv_ref, orig_ref,
                         conv_macs, orig_macs, notes)
    note = overhead_note(report)
    if note:
        report.notes.append(note)
    return report


# Efficiency this far above 1 is not arithmetic: the original's runs pay more per MAC than one pass.
_OVERHEAD_EFFICIENCY = 1.5


def overhead_note(r: BenchReport) -> str:
    """Why an efficiency well above 1 (tiny models) says more about per-call cost than arithmetic."""
    if not r.efficiency > _OVERHEAD_EFFICIENCY:
        return ""
    rate_orig = r.original_macs * r.windows / r.original_windows.median / 1e9
    rate_conv = r.converted_macs / r.converted.median / 1e9
    return (f"efficiency {r.efficiency:.2f} is above 1: the original's window runs do {rate_orig:.3g} GMAC/s, the one "
            f"pass {rate_conv:.3g} GMAC/s. At {r.original_macs / 1e6:.3g} M MACs a window, onnxruntime's cost per run "
            "and per op, not the arithmetic, dominates the original's time, so the speedup exceeds the MAC ratio; on "
            "models of realistic size efficiency stays near or below 1")
