"""The pictures scan draws over the input, at a size that fits (its longer side at most
``max_side``, drawn on the input's thumbnail: never more of the input than that takes).

- ``map``: one class's score map. Cell (i, j)'s value sits at the centre of its window and is
  interpolated bilinearly between centres; beyond the outermost centres (half a stride out) no
  cell is centred, so the picture is dimmed there. A viridis colour bar, the class in the title,
  red boxes on the listed cells of that class.
- ``classes``: every cell's best class, in distinct colours (nearest cell centre) as strong as
  the model is sure of it (a uniform guess leaves the input as it is), a legend of the classes
  that appear, and the listed cells boxed and labelled in their class's colour: the view a scene
  of several classes needs (with ``--nms``, one box per object).

Cells that were not computed (background skipped) are left uncoloured.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import OnnxFcnError

# viridis at 0, 1/4, 1/2, 3/4 and 1 (matplotlib's colour map), interpolated linearly
_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)
# Distinct colours for classes (matplotlib's tab10, then tab20's light ones)
_PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
                     [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207], [174, 199, 232],
                     [255, 187, 120], [152, 223, 138], [255, 152, 150], [197, 176, 213], [196, 156, 148],
                     [247, 182, 210], [199, 199, 199], [219, 219, 141], [158, 218, 229]], dtype=np.float32)
_ALPHA = 0.55
VIEWS = ("map", "classes")


def _viridis(v: np.ndarray) -> np.ndarray:
    t = np.clip(v, 0.0, 1.0) * (len(_ANCHORS) - 1)
    i = np.minimum(t.astype(np.int64), len(_ANCHORS) - 2)
    f = (t - i)[..., None]
    return _ANCHORS[i] * (1 - f) + _ANCHORS[i + 1] * f


_LEVELS = 256  # the colour map as a table: a lookup per display pixel, not an interpolation
_TABLE = _viridis(np.linspace(0.0, 1.0, _LEVELS, dtype=np.float32)).astype(np.float32)


def colours(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB float32 (viridis, in 256 steps)."""
    return _TABLE[np.rint(np.clip(np.nan_to_num(v), 0.0, 1.0) * (_LEVELS - 1)).astype(np.intp)]


def class_colour(k: int) -> tuple[int, int, int]:
    c = _PALETTE[k % len(_PALETTE)]
    return int(c[0]), int(c[1]), int(c[2])


def _axis(centres: np.ndarray, stride: int, n_px: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per display pixel: the two cells to blend, the weight of the second, and whether a cell is near."""
    pos = (np.arange(n_px) + 0.5) / scale  # display pixel centre, in input pixels
    t = np.clip((pos - centres[0]) / stride, 0, len(centres) - 1)
    i0 = np.floor(t).astype(np.int64)
    i1 = np.minimum(i0 + 1, len(centres) - 1)
    inside = (pos >= centres[0] - stride / 2) & (pos < centres[-1] + stride / 2)
    return i0, i1, (t - i0).astype(np.float32), inside


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _base(result: Any, display_scale: float, max_side: int) -> tuple[np.ndarray, float]:
    """The input as the picture's background (float32 RGB) and display pixels per input pixel."""
    from PIL import Image

    h, w = result.size
    scale = min(display_scale, max_side / max(h, w))
    dh, dw = max(1, round(h * scale)), max(1, round(w * scale))
    thumb, _ = result.source.thumbnail(max(dh, dw) if scale < 1 else max(h, w))
    pil = Image.fromarray(thumb)
    if pil.size != (dw, dh):
        pil = pil.resize((dw, dh), Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR)
    return np.asarray(pil, dtype=np.float32), scale


def _canvas(picture: np.ndarray, side_w: int, title_h: int) -> tuple[Any, Any]:
    from PIL import Image, ImageDraw

    dh, dw = picture.shape[:2]
    canvas = Image.new("RGB", (dw + side_w, dh + title_h), (255, 255, 255))
    canvas.paste(Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)), (0, title_h))
    return canvas, ImageDraw.Draw(canvas)


def _heat(result: Any, k: int, base: np.ndarray, scale: float) -> Any:
    m = result.model
    dh, dw = base.shape[:2]
    cmap = result.class_map(k)
    finite = cmap[np.isfinite(cmap)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    span = hi - lo if hi > lo else 1.0
    gh, gw = cmap.shape
    r0, r1, rf, rin = _axis(m.centres(0, gh), m.stride[0], dh, scale)
    c0, c1, cf, cin = _axis(m.centres(1, gw), m.stride[1], dw, scale)
    rows = cmap[r0] * (1 - rf)[:, None] + cmap[r1] * rf[:, None]  # dh x gw
    values = rows[:, c0] * (1 - cf)[None, :] + rows[:, c1] * cf[None, :]  # dh x dw
    inside = (rin[:, None] & cin[None, :])[..., None]
    computed = np.isfinite(values)[..., None]
    over = base * (1 - _ALPHA) + colours((np.nan_to_num(values, nan=lo) - lo) / span) * _ALPHA
    picture = np.where(inside & computed, over, np.where(inside, base, base * 0.45))
    del values, over
    font = _font(14 if dw >= 256 else 10)
    bar_w, title_h = 72, 24
    canvas, draw = _canvas(picture, bar_w, title_h)
    for cell in result.cells:  # the listed cells of this class, outlined
        if cell.cls == k:
            x0, y0, x1, y1 = (v * scale for v in cell.box)
            draw.rectangle([x0, y0 + title_h, x1 - 1, y1 - 1 + title_h], outline=(255, 64, 64), width=2)
    name = result.label(k)
    what = f"class {k}" + (f" '{name}'" if name is not None else "")
    score = "softmax" if result.softmax else "score"
    draw.text((4, 4), f"{what}: {score} map, {gh}x{gw} cells, stride {m.stride[0]}x{m.stride[1]}", fill=(0, 0, 0),
              font=font)
    from PIL import Image

    bar_h = max(dh - 20, 10)  # the colour bar, highest at the top
    ramp = colours(np.linspace(1, 0, bar_h, dtype=np.float32))[:, None, :].repeat(14, axis=1)
    canvas.paste(Image.fromarray(ramp.astype(np.uint8)), (dw + 8, title_h + 10))
    for frac in (0.0, 0.5, 1.0):
        y = title_h + 10 + round((1 - frac) * (bar_h - 1))
        draw.line([dw + 22, y, dw + 26, y], fill=(0, 0, 0))
        draw.text((dw + 28, y - 6), f"{lo + frac * (hi - lo):.3g}", fill=(0, 0, 0), font=font)
    return canvas


def _nearest(centres: np.ndarray, stride: int, n_px: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per display pixel: the nearest cell, and whether it lies within half a stride of its centre."""
    pos = (np.arange(n_px) + 0.5) / scale
    i = np.clip(np.round((pos - centres[0]) / stride).astype(np.int64), 0, len(centres) - 1)
    return i, np.abs(pos - centres[i]) <= stride / 2


def _classes(result: Any, base: np.ndarray, scale: float) -> Any:
    m = result.model
    dh, dw = base.shape[:2]
    best = result.best_class
    gh, gw = best.shape
    ri, rin = _nearest(m.centres(0, gh), m.stride[0], dh, scale)
    ci, cin = _nearest(m.centres(1, gw), m.stride[1], dw, scale)
    cls = best[ri][:, ci]  # dh x dw
    sure = np.ones(best.shape, np.float32) if result.confidence is None else np.nan_to_num(result.confidence)
    alpha = (_ALPHA * sure[ri][:, ci])[..., None]
    colour = np.where((cls >= 0)[..., None], _PALETTE[np.maximum(cls, 0) % len(_PALETTE)], 0)
    inside = (rin[:, None] & cin[None, :] & (cls >= 0))[..., None]
    picture = np.where(inside, base * (1 - alpha) + colour * alpha, base)
    present = [int(k) for k in np.unique(best) if k >= 0]
    font = _font(14 if dw >= 256 else 10)
    legend_w, title_h, line_h = 150, 24, 18
    canvas, draw = _canvas(picture, legend_w, title_h)
    draw.text((4, 4), f"best class of each cell, {gh}x{gw} cells, stride {m.stride[0]}x{m.stride[1]}", fill=(0, 0, 0),
              font=font)
    for n, k in enumerate(present[: max(1, (dh - 8) // line_h)]):
        y = title_h + 6 + n * line_h
        draw.rectangle([dw + 8, y, dw + 22, y + 12], fill=class_colour(k))
        name = result.label(k)
        draw.text((dw + 28, y - 1), f"{k}" + (f" {name}" if name is not None and name != str(k) else ""),
                  fill=(0, 0, 0), font=font)
    for cell in result.cells:  # the listed cells, boxed and labelled in their class's colour
        x0, y0, x1, y1 = (v * scale for v in cell.box)
        draw.rectangle([x0, y0 + title_h, x1 - 1, y1 - 1 + title_h], outline=class_colour(cell.cls), width=2)
        text = cell.label if cell.label is not None else str(cell.cls)
        draw.text((x0 + 2, y0 + title_h + 1), text, fill=(255, 255, 255), font=font, stroke_width=1,
                  stroke_fill=(0, 0, 0))
    return canvas


def render(result: Any, k: int, display_scale: float = 1.0, picture: str = "map", max_side: int = 2048) -> Any:
    """The picture of ``result`` (a ``scan.ScanResult``; not imported here: scan imports this
    module) as a PIL image: ``picture`` "map" (class ``k``) or "classes"."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise OnnxFcnError("pictures need Pillow: pip install pillow (onnxfcn depends on it: reinstall onnxfcn)") from None
    if not display_scale > 0:
        raise OnnxFcnError("--display-scale must be positive")
    if picture not in VIEWS:
        raise OnnxFcnError(f"--picture {picture!r}: one of {', '.join(VIEWS)}")
    if max_side < 16:
        raise OnnxFcnError("--picture-size must be at least 16 pixels")
    assert result.source is not None
    base, scale = _base(result, display_scale, max_side)
    return _heat(result, k, base, scale) if picture == "map" else _classes(result, base, scale)
