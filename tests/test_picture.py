"""The picture: the map sits on the windows' centres (not stretched over the image), with a colour bar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from builders import flatten_gemm
from PIL import Image

from onnxfcn import convert
from onnxfcn.scan import ScanModel, ScanResult
from onnxfcn.scan.picture import _ALPHA, _axis, colours, render
from onnxfcn.scan.sources import ArraySource


def test_colours_are_viridis_at_the_ends() -> None:
    assert colours(np.array([0.0])).tolist() == [[68, 1, 84]]
    assert colours(np.array([1.0])).tolist() == [[253, 231, 37]]
    assert colours(np.array([-3.0, 7.0])).tolist() == [[68, 1, 84], [253, 231, 37]]  # clipped


def test_axis_blends_between_centres_and_stops_half_a_stride_out() -> None:
    centres = np.array([4.0, 6.0, 8.0])
    i0, i1, f, inside = _axis(centres, 2, 12, 1.0)
    pos = np.arange(12) + 0.5
    assert inside.tolist() == [bool(3 <= p < 9) for p in pos]
    t = np.clip((pos - 4) / 2, 0, 2)
    np.testing.assert_allclose(i0 + f, t)  # the fractional cell index of every pixel
    assert (i1 - i0 <= 1).all() and i1.max() == 2


def test_render_places_each_value_at_its_cell_centre(tmp_path: Path) -> None:
    conv, _ = convert(flatten_gemm(k=3), self_check=False)
    onnx.save(conv, tmp_path / "m.onnx")
    sm = ScanModel.load(tmp_path / "m.onnx")  # window 18, stride 2
    h, w = 40, 50
    gh, gw = sm.grid(h, w)
    ramp = np.tile(np.arange(gh, dtype=np.float32)[:, None], (1, gw))  # value = row index
    scores = np.stack([ramp, -ramp, 0 * ramp])
    src = ArraySource("zeros", np.zeros((h, w, 3), np.float32), "HWC", (h, w))
    r = ScanResult(name="zeros", size=(h, w), grid=(gh, gw), model=sm, scores=scores, best=ramp,
                   best_class=np.zeros((gh, gw), np.int32), class_max=scores.reshape(3, -1).max(1), cells=[], tiles=1,
                   tiles_exact=True, softmax=False, seconds=0.0, source=src)
    scale = 2.0
    img = np.asarray(render(r, 0, scale), dtype=np.float32)
    pic = img[24:24 + round(h * scale), :round(w * scale)]
    # The display shows zeros as grey 0: inside the map the pixel is exactly alpha * colour(value).
    pos_y = (np.arange(pic.shape[0]) + 0.5) / scale
    pos_x = (np.arange(pic.shape[1]) + 0.5) / scale
    c0y, c0x = sm.centres(0, gh)[0], sm.centres(1, gw)[0]
    assert c0y == 9.0 and c0x == 9.0
    inside_y = (pos_y >= c0y - 1) & (pos_y < c0y + 2 * (gh - 1) + 1)
    inside_x = (pos_x >= c0x - 1) & (pos_x < c0x + 2 * (gw - 1) + 1)
    want_value = np.clip((pos_y - c0y) / 2, 0, gh - 1) / (gh - 1)  # the ramp, normalised by its range
    col = int(np.flatnonzero(inside_x)[3])
    for y in range(pic.shape[0]):
        expected = colours(np.array([want_value[y]]))[0] * _ALPHA if inside_y[y] else np.zeros(3)
        assert np.abs(pic[y, col] - expected).max() < 1.001, (y, pic[y, col], expected)  # uint8 truncation
    assert (pic[:, ~inside_x] == 0).all()  # outside: no map (zeros dimmed stay black)


def test_png_size_follows_the_display_scale(tmp_path: Path) -> None:
    from onnxfcn import scan

    conv, _ = convert(flatten_gemm(k=3), self_check=False)
    onnx.save(conv, tmp_path / "m.onnx")
    r = scan(tmp_path / "m.onnx", np.zeros((30, 40, 3), np.float32))
    for s, want in ((1.0, (40 + 72, 30 + 24)), (0.5, (20 + 72, 15 + 24)), (3.0, (120 + 72, 90 + 24))):
        r.save_png(tmp_path / "p.png", display_scale=s)
        assert Image.open(tmp_path / "p.png").size == want
