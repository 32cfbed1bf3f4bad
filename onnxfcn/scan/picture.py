"""The picture scan draws: one class's score map over the input, with a colour bar and the label.

The map is placed where its cells are: cell (i, j)'s value sits at the centre of its window and
is interpolated bilinearly between centres. Beyond the outermost centres (half a stride out) no
cell is centred, so the picture is dimmed there instead of stretching the map over the image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import OnnxFcnError

# viridis at 0, 1/4, 1/2, 3/4 and 1 (matplotlib's colour map), interpolated linearly
_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)
_ALPHA = 0.55


def colours(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB float32 (viridis)."""
    t = np.clip(v, 0.0, 1.0) * (len(_ANCHORS) - 1)
    i = np.minimum(t.astype(np.int64), len(_ANCHORS) - 2)
    f = (t - i)[..., None]
    return _ANCHORS[i] * (1 - f) + _ANCHORS[i + 1] * f


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


def render(result: Any, k: int, display_scale: float = 1.0) -> Any:
    """One class's map over the input, as a PIL image (needs Pillow). ``result``: a
    ``scan.ScanResult`` (not imported here: scan imports this module)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        raise OnnxFcnError("pictures need Pillow: pip install pillow (onnxfcn depends on it: reinstall onnxfcn)") from None
    if not display_scale > 0:
        raise OnnxFcnError("--display-scale must be positive")
    assert result.source is not None
    m = result.model
    base = result.source.display()
    h, w = base.shape[:2]
    dh, dw = max(1, round(h * display_scale)), max(1, round(w * display_scale))
    pil = Image.fromarray(base)
    if (dh, dw) != (h, w):
        pil = pil.resize((dw, dh), Image.Resampling.NEAREST if display_scale >= 1 else Image.Resampling.BILINEAR)
    picture = np.asarray(pil, dtype=np.float32)

    cmap = result.class_map(k)
    lo, hi = float(cmap.min()), float(cmap.max())
    span = hi - lo if hi > lo else 1.0
    gh, gw = cmap.shape
    r0, r1, rf, rin = _axis(m.centres(0, gh), m.stride[0], dh, display_scale)
    c0, c1, cf, cin = _axis(m.centres(1, gw), m.stride[1], dw, display_scale)
    rows = cmap[r0] * (1 - rf)[:, None] + cmap[r1] * rf[:, None]  # dh x gw
    values = rows[:, c0] * (1 - cf)[None, :] + rows[:, c1] * cf[None, :]  # dh x dw
    inside = (rin[:, None] & cin[None, :])[..., None]
    over = picture * (1 - _ALPHA) + colours((values - lo) / span) * _ALPHA
    picture = np.where(inside, over, picture * 0.45)
    del values, over

    font = _font(14 if dw >= 256 else 10)
    bar_w, title_h = 72, 24
    canvas = Image.new("RGB", (dw + bar_w, dh + title_h), (255, 255, 255))
    canvas.paste(Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)), (0, title_h))
    draw = ImageDraw.Draw(canvas)
    for cell in result.cells:  # the listed cells of this class, outlined
        if cell.cls == k:
            x0, y0, x1, y1 = (v * display_scale for v in cell.box)
            draw.rectangle([x0, y0 + title_h, x1 - 1, y1 - 1 + title_h], outline=(255, 64, 64), width=2)
    name = result.label(k)
    what = f"class {k}" + (f" '{name}'" if name is not None else "")
    score = "softmax" if result.softmax else "score"
    draw.text((4, 4), f"{what}: {score} map, {gh}x{gw} cells, stride {m.stride[0]}x{m.stride[1]}",
              fill=(0, 0, 0), font=font)
    # The colour bar, highest at the top.
    bar_h = max(dh - 20, 10)
    ramp = colours(np.linspace(1, 0, bar_h, dtype=np.float32))[:, None, :].repeat(14, axis=1)
    canvas.paste(Image.fromarray(ramp.astype(np.uint8)), (dw + 8, title_h + 10))
    for frac in (0.0, 0.5, 1.0):
        y = title_h + 10 + round((1 - frac) * (bar_h - 1))
        draw.line([dw + 22, y, dw + 26, y], fill=(0, 0, 0))
        draw.text((dw + 28, y - 6), f"{lo + frac * (hi - lo):.3g}", fill=(0, 0, 0), font=font)
    return canvas
