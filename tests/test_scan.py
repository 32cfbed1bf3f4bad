"""scan: cells and boxes against the original classifier on each crop, tiles against one pass,
inputs of every kind, the digits scene, outputs written whole, and the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import zarr
from builders import REF, flatten_gemm, realistic
from helpers import ROOT, run
from PIL import Image
from tv_export import Exports
from typer.testing import CliRunner

import onnxfcn
from onnxfcn import convert
from onnxfcn.cli import app
from onnxfcn.errors import InvalidConversionError, OnnxFcnError
from onnxfcn.preprocess import Preprocess
from onnxfcn.scan import ScanModel, ScanResult, scan
from onnxfcn.scan.result import select_cells
from onnxfcn.scan.runner import Runner
from onnxfcn.scan.tiles import axis_tiles, plan_tiles

runner = CliRunner()
MODELS = ROOT / "models"
DIGITS = MODELS / "digits_cnn.onnx"




@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "digits_fcn.onnx"
    res = runner.invoke(app, ["convert", str(DIGITS), "-o", str(out), "-q", "--labels", str(MODELS / "digits_labels.txt")])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def exact_rgb(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnx.ModelProto, Path]:
    """A padding-free 3-channel classifier (window 18, stride 2) at realistic scale, and its conversion."""
    model = realistic(flatten_gemm(k=7, seed=3))
    out = tmp_path_factory.mktemp("exact") / "m.fcn.onnx"
    conv, _ = convert(model)
    onnx.save(conv, out)
    return model, out


@pytest.fixture(scope="module")
def padded_rgb(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnx.ModelProto, Path]:
    model = realistic(flatten_gemm(k=7, seed=4, padded=True))
    out = tmp_path_factory.mktemp("padded") / "p.fcn.onnx"
    conv, _ = convert(model)
    onnx.save(conv, out)
    return model, out


def crop_scores(original: onnx.ModelProto, x_hwc: np.ndarray, box: list[int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    crop = x_hwc[y0:y1, x0:x1].transpose(2, 0, 1)[None]
    return run(original, np.ascontiguousarray(crop))[0][0]


# --------------------------------------------------------------------------------------------
# Cells and boxes


def test_every_listed_cell_is_the_classifier_on_its_box(exact_rgb: tuple[onnx.ModelProto, Path]) -> None:
    original, conv = exact_rgb
    x = np.random.default_rng(0).standard_normal((41, 53, 3)).astype(np.float32)
    r = scan(conv, x, top=None)
    assert r.grid == ((41 - 18) // 2 + 1, (53 - 18) // 2 + 1) and r.scores.shape == (7, *r.grid)
    assert len(r.cells) == r.grid[0] * r.grid[1]
    assert float(r.scores.std()) >= 2  # realistic magnitudes
    worst = 0.0
    for c in r.cells:
        assert c.box == [c.col * 2, c.row * 2, c.col * 2 + 18, c.row * 2 + 18]
        want = crop_scores(original, x, c.box)
        got = r.scores[:, c.row, c.col]
        worst = max(worst, float(np.abs(got - want).max()) / float(np.abs(want).max()))
        assert c.cls == int(np.argmax(want)) and c.score == pytest.approx(float(want.max()), rel=1e-5, abs=1e-5)
    assert worst <= 1e-5
    scores = [c.score for c in r.cells]
    assert scores == sorted(scores, reverse=True)


def test_top_and_threshold_select_cells(exact_rgb: tuple[onnx.ModelProto, Path]) -> None:
    _, conv = exact_rgb
    x = np.random.default_rng(1).standard_normal((30, 30, 3)).astype(np.float32)
    full = scan(conv, x, top=None)
    best = np.sort(full.best.ravel())[::-1]
    assert [c.score for c in scan(conv, x).cells] == pytest.approx(best[:5].tolist())
    t = float(best[3])
    above = scan(conv, x, threshold=t, top=None).cells
    assert len(above) == int((best >= t).sum()) and all(c.score >= t for c in above)
    assert len(scan(conv, x, threshold=float(best[-1]), top=2).cells) == 2
    assert scan(conv, x, threshold=float(best[0]) + 1, top=None).cells == []


def test_softmax_scores_are_probabilities(exact_rgb: tuple[onnx.ModelProto, Path]) -> None:
    _, conv = exact_rgb
    x = np.random.default_rng(2).standard_normal((24, 24, 3)).astype(np.float32)
    raw, soft = scan(conv, x, top=None), scan(conv, x, top=None, softmax=True)
    np.testing.assert_array_equal(raw.scores, soft.scores)  # the map stays the model's output
    e = np.exp(raw.scores - raw.scores.max(0))
    p = e / e.sum(0)
    np.testing.assert_allclose(soft.best, p.max(0), rtol=1e-6)
    np.testing.assert_array_equal(soft.best_class, raw.best_class)
    np.testing.assert_allclose(soft.class_map(3), p[3], rtol=1e-5)


def test_dense_mode_boxes_are_receptive_fields(tmp_path: Path) -> None:
    from builders import Builder, gemm, trunk

    b = Builder(13, seed=2)
    y = b.node("GlobalAveragePool", [trunk(b, padded=True)])
    y = gemm(b, b.node("Flatten", [y], axis=1), 8, 6)
    model = b.model([1, 3, REF, REF], [y], out_names=["scores"])
    conv, report = convert(model, mode="dense")
    path = tmp_path / "dense.onnx"
    onnx.save(conv, path)
    sm = ScanModel.load(path)
    geo = report.geometry
    assert sm.mode == "dense" and sm.receptive_field == geo.receptive_field
    x = np.zeros((40, 40, 3), np.float32)
    r = scan(sm, x, top=None)
    for c in r.cells[:10]:
        y0, x0 = (geo.receptive_field_start[0] + c.row * geo.stride[0], geo.receptive_field_start[1] + c.col * geo.stride[1])
        assert c.box == [max(x0, 0), max(y0, 0), min(x0 + geo.receptive_field[1], 40), min(y0 + geo.receptive_field[0], 40)]


# --------------------------------------------------------------------------------------------
# Inputs


def test_array_orders_give_the_same_scores(exact_rgb: tuple[onnx.ModelProto, Path], tmp_path: Path) -> None:
    _, conv = exact_rgb
    x = np.random.default_rng(3).standard_normal((26, 31, 3)).astype(np.float32)
    ref = scan(conv, x).scores
    np.save(tmp_path / "hwc.npy", x)
    np.save(tmp_path / "chw.npy", x.transpose(2, 0, 1))
    for item in (x.transpose(2, 0, 1), tmp_path / "hwc.npy", tmp_path / "chw.npy"):
        np.testing.assert_array_equal(scan(conv, item).scores, ref)


def test_bad_arrays_are_refused(exact_rgb: tuple[onnx.ModelProto, Path], tmp_path: Path) -> None:
    _, conv = exact_rgb
    cases: dict[str, Any] = {
        "2-D array is one channel": np.zeros((30, 30), np.float32),
        "ambiguous": np.zeros((3, 30, 3), np.float32),
        "is not H x W": np.zeros((1, 3, 30, 30), np.float32),
        "smaller than the model's 18x18 window": np.zeros((17, 40, 3), np.float32),
    }
    for message, arr in cases.items():
        with pytest.raises(OnnxFcnError, match=message):
            scan(conv, arr)
    bad = np.zeros((20, 20, 3), np.float32)
    bad[3, 3, 1] = np.nan
    with pytest.raises(OnnxFcnError, match="NaN"):
        scan(conv, bad)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(OnnxFcnError, match="not an image"):
        scan(conv, tmp_path / "x.txt")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(OnnxFcnError, match="not a readable image"):
        scan(conv, tmp_path / "broken.png")


def test_image_files_are_preprocessed_as_the_metadata_says(tmp_path: Path) -> None:
    model = realistic(flatten_gemm(k=5, seed=6))
    pre = Preprocess(1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bgr")
    conv, _ = convert(model, preprocess=pre)
    path = tmp_path / "m.onnx"
    onnx.save(conv, path)
    px = np.random.default_rng(4).integers(0, 256, (30, 34, 3), dtype=np.uint8)
    Image.fromarray(px).save(tmp_path / "img.png")
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    want = (px[..., ::-1].astype(np.float64) / 255 - mean) / std  # by hand: BGR, scale, mean, std
    got = scan(path, tmp_path / "img.png", top=None)
    np.testing.assert_allclose(got.scores, scan(path, want.astype(np.float32), top=None).scores, rtol=1e-5, atol=1e-5)
    # An override replaces the stored value.
    plain = scan(path, tmp_path / "img.png", preprocess=Preprocess())
    np.testing.assert_allclose(plain.scores, scan(path, (px / 255).astype(np.float32)).scores, rtol=1e-5, atol=1e-5)


def test_nhwc_model(tmp_path: Path) -> None:
    from patterns import nhwc_keras

    model = nhwc_keras()
    conv, _ = convert(model)
    path = tmp_path / "nhwc.onnx"
    onnx.save(conv, path)
    sm = ScanModel.load(path)
    assert sm.layout == "NHWC" and sm.channels == 3
    x = np.random.default_rng(7).standard_normal((30, 26, 3)).astype(np.float32)
    r = scan(sm, x, top=None)
    want = run(conv, x[None])[0][0]  # N x h x w x K or N x K x h x w, as the model returns it
    k, h, w = sm.axes
    np.testing.assert_array_equal(r.scores, want.transpose(k - 1, h - 1, w - 1))
    c = r.cells[0]
    np.testing.assert_allclose(r.scores[:, c.row, c.col], run(model, x[None, c.box[1]:c.box[3], c.box[0]:c.box[2]])[0][0],
                               rtol=1e-5, atol=1e-6)


def test_model_not_converted_is_refused() -> None:
    with pytest.raises(InvalidConversionError, match="written by onnxfcn convert"):
        ScanModel.load(DIGITS)


# --------------------------------------------------------------------------------------------
# Tiles


def test_axis_tiles_cover_every_cell_once_with_its_whole_field() -> None:
    for n, s, start, span, tile in [(100, 2, 0, 8, 20), (101, 2, 0, 8, 9), (333, 4, -5, 23, 40), (900, 32, -217, 627, 64)]:
        # fields may start before the image (padding) and end past it, as a padded model's do
        cells = (n - span - 2 * start) // s + 1
        tiles = axis_tiles(n, cells, s, start, span, max(tile, span))
        kept = [c for _, _, c0, c1 in tiles for c in range(c0, c1)]
        assert kept == list(range(cells))
        for a, b, c0, c1 in tiles:
            assert a % s == 0 and 0 <= a < b <= n and ((b - a) % s == n % s or b == n)
            for c in range(c0, c1):
                lo, hi = start + c * s, start + c * s + span
                assert (lo >= a or a == 0) and (hi <= b or b == n)


@pytest.mark.parametrize("size, tile", [((60, 75), 18), ((60, 75), 25), ((97, 41), 31), ((64, 64), 64)])
def test_tiles_equal_one_pass_exact_model(exact_rgb: tuple[onnx.ModelProto, Path], size: tuple[int, int],
                                          tile: int) -> None:
    _, conv = exact_rgb
    x = np.random.default_rng(8).standard_normal((*size, 3)).astype(np.float32)
    one = scan(conv, x, top=None)
    tiled = scan(conv, x, top=None, tile=tile)
    assert tiled.tiles == len(plan_tiles(ScanModel.load(conv), *size, tile)) and tiled.tiles_exact
    if tile < 64:
        assert tiled.tiles > 1
    scale = float(np.abs(one.scores).max())
    assert float(np.abs(tiled.scores - one.scores).max()) <= 1e-5 * scale
    np.testing.assert_allclose(tiled.best, one.best, rtol=0, atol=1e-5 * scale)


def test_tiles_equal_one_pass_padded_model(padded_rgb: tuple[onnx.ModelProto, Path]) -> None:
    _, conv = padded_rgb
    sm = ScanModel.load(conv)
    assert not sm.exact and sm.receptive_field[0] > sm.window[0] and sm.field_start[0] < 0
    x = np.random.default_rng(9).standard_normal((90, 77, 3)).astype(np.float32)
    one = scan(sm, x, top=None)
    tiled = scan(sm, x, top=None, tile=sm.receptive_field[0] + 6)
    assert tiled.tiles > 4
    scale = float(np.abs(one.scores).max())
    assert float(np.abs(tiled.scores - one.scores).max()) <= 1e-5 * scale
    # Control: tiles overlapping only by the window (not the field) do see their own zero
    # padding at tile borders, and differ: the overlap rule is what makes them equal.
    naive = _naive_tiles(sm, x, 40)
    assert float(np.abs(naive - one.scores).max()) > 1e-3 * scale


def _naive_tiles(sm: ScanModel, x: np.ndarray, side: int) -> np.ndarray:
    from onnxfcn.scan.runner import Runner

    r = Runner(sm)
    gh, gw = sm.grid(*x.shape[:2])
    out = np.zeros((7, gh, gw), np.float32)
    s, win = sm.stride[0], sm.window[0]
    per = (side - win) // s + 1
    for i0 in range(0, gh, per):
        for j0 in range(0, gw, per):
            i1, j1 = min(gh, i0 + per), min(gw, j0 + per)
            y = r.run(x[i0 * s:(i1 - 1) * s + win, j0 * s:(j1 - 1) * s + win])
            out[:, i0:i1, j0:j1] = y[:, :i1 - i0, :j1 - j0]
    return out


def test_files_from_before_the_field_start_key_still_tile_right(padded_rgb: tuple[onnx.ModelProto, Path],
                                                               tmp_path: Path) -> None:
    """Without onnxfcn.receptive_field_start, tiles overlap by a margin that holds any field."""
    _, conv = padded_rgb
    model = onnx.load(conv)
    kept = [p for p in model.metadata_props if p.key not in ("onnxfcn.receptive_field_start", "onnxfcn.global_context")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, tmp_path / "old.onnx")
    new, old = ScanModel.load(conv), ScanModel.load(tmp_path / "old.onnx")
    lo_new, lo_old = new.field_start[0], old.field_start[0]
    assert lo_old <= lo_new and lo_old + old.receptive_field[0] >= lo_new + new.receptive_field[0]
    x = np.random.default_rng(15).standard_normal((90, 80, 3)).astype(np.float32)
    one = scan(old, x, top=None)
    tiled = scan(old, x, top=None, tile=old.receptive_field[0] + 4)
    assert tiled.tiles > 1
    np.testing.assert_allclose(tiled.scores, one.scores, rtol=0, atol=1e-5 * float(np.abs(one.scores).max()))


@pytest.mark.parametrize("wrong", [(-1, 0), (0, -1), (1, 0)])
def test_a_wrong_grid_is_never_stitched_silently(padded_rgb: tuple[onnx.ModelProto, Path],
                                                 wrong: tuple[int, int]) -> None:
    """If the grid shape inference gave were off by a cell, the tiles would drop or invent a row:
    the edge tiles' own outputs catch it."""
    _, conv = padded_rgb
    sm = ScanModel.load(conv)
    gh, gw = sm.grid(70, 64)
    sm._grids[70, 64] = (gh + wrong[0], gw + wrong[1])
    with pytest.raises(OnnxFcnError, match="not the one its shapes give"):
        scan(sm, np.zeros((70, 64, 3), np.float32), tile=sm.receptive_field[0] + 2)


def test_tile_smaller_than_the_field_is_refused(padded_rgb: tuple[onnx.ModelProto, Path]) -> None:
    _, conv = padded_rgb
    with pytest.raises(OnnxFcnError, match="smaller than what one cell depends on"):
        scan(conv, np.zeros((60, 60, 3), np.float32), tile=20)


def test_scan_tiles_by_itself_when_one_pass_would_not_fit(exact_rgb: tuple[onnx.ModelProto, Path]) -> None:
    _, conv = exact_rgb
    sm = ScanModel.load(conv)
    x = np.random.default_rng(10).standard_normal((120, 130, 3)).astype(np.float32)
    one = scan(sm, x, top=None)
    limit = 2 * sm.estimate(60, 60)  # scan may take half of it: about a 60x60 tile
    auto = scan(sm, x, top=None, max_memory=limit)
    assert auto.tiles > 1
    np.testing.assert_allclose(auto.scores, one.scores, rtol=0, atol=1e-5 * float(np.abs(one.scores).max()))


# --------------------------------------------------------------------------------------------
# The digits scene


def test_digits_scene_finds_every_digit(digits: Path, tmp_path: Path) -> None:
    """Each held-out digit's own cell (its box is the digit's) has the digit's class, and equals
    the original classifier on that crop."""
    scene = json.loads((MODELS / "digits_scene.json").read_text())
    res = runner.invoke(app, ["scan", str(digits), str(MODELS / "digits_scene.png"), "--out", str(tmp_path),
                              "--top", "5", "--display-scale", "4"])
    assert res.exit_code == 0, res.output
    scores = np.load(tmp_path / "digits_scene.scores.npy")
    report = json.loads((tmp_path / "digits_scene.json").read_text())
    assert report["size"] == scene["size"] and report["stride"] == [2, 2] and report["window"] == [8, 8]
    assert scores.shape == (10, *report["grid"])
    px = np.asarray(Image.open(MODELS / "digits_scene.png"), dtype=np.float32) / 255
    original = onnx.load(DIGITS)
    sm = ScanModel.load(digits)
    for d in scene["digits"]:
        x0, y0, x1, y1 = d["box"]
        i, j = y0 // 2, x0 // 2
        assert sm.box(i, j, *scene["size"]) == d["box"]
        cell = scores[:, i, j]
        assert int(np.argmax(cell)) == d["label"], (d, cell)
        want = run(original, px[None, None, y0:y1, x0:x1])[0][0]
        np.testing.assert_allclose(cell, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    for c in report["cells"]:  # every listed cell: its box, class, label and score agree with the map
        assert c["box"] == sm.box(c["row"], c["col"], *scene["size"])
        assert c["class"] == int(np.argmax(scores[:, c["row"], c["col"]])) and c["label"] == str(c["class"])
        assert c["score"] == pytest.approx(float(scores[:, c["row"], c["col"]].max()))
    img = Image.open(tmp_path / "digits_scene.png")
    assert img.size[0] > 92 * 4 and img.size[1] > 48 * 4  # the input at 4x, with the bar and the title
    assert report["picture"]["class"] == int(np.argmax(scores.reshape(10, -1).max(1)))


# --------------------------------------------------------------------------------------------
# The command line and its files


def test_cli_folder_writes_three_files_per_input(exact_rgb: tuple[onnx.ModelProto, Path], tmp_path: Path) -> None:
    _, conv = exact_rgb
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(11)
    np.save(folder / "a.npy", rng.standard_normal((30, 40, 3)).astype(np.float32))
    Image.fromarray(rng.integers(0, 256, (25, 22, 3), dtype=np.uint8)).save(folder / "b.png")
    (folder / "notes.txt").write_text("skipped")
    out = tmp_path / "out"
    res = runner.invoke(app, ["scan", str(conv), str(folder), "--out", str(out), "--top", "3"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png", "a.scores.npy", "b.json", "b.png", "b.scores.npy"]
    a = json.loads((out / "a.json").read_text())
    assert a["grid"] == [7, 12] and len(a["cells"]) == 3 and a["tiles"] == 1
    assert np.load(out / "a.scores.npy").dtype == np.float32


@pytest.mark.parametrize("args, message", [
    (["--tile", "5"], "smaller than what one cell depends on"),
    (["--class", "nine"], "class 'nine'"),
    (["--class", "7"], "class 7: the model has classes 0..6"),
    (["--display-scale", "0"], "--display-scale must be positive"),
    (["--workers", "2", "--scheduler", "tcp://x:1"], "not both"),
    (["--mean", "1,2"], "mean has 2 values"),
    (["--labels", "L3"], "3 labels for 7 classes"),
])
def test_cli_bad_options_one_line_exit_2(exact_rgb: tuple[onnx.ModelProto, Path], tmp_path: Path,
                                         args: list[str], message: str) -> None:
    _, conv = exact_rgb
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "L3").write_text("a\nb\nc\n")
    args = [str(tmp_path / "L3") if a == "L3" else a for a in args]
    res = runner.invoke(app, ["scan", str(conv), str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1


def test_cli_unconverted_model_and_missing_input(tmp_path: Path) -> None:
    res = runner.invoke(app, ["scan", str(DIGITS), str(MODELS / "digits_scene.png"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "written by onnxfcn convert" in res.output
    res = runner.invoke(app, ["scan", str(DIGITS), str(tmp_path / "none.png"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "no such file" in res.output
    (tmp_path / "f").write_text("")
    res = runner.invoke(app, ["scan", str(DIGITS), str(MODELS / "digits_scene.png"), "--out", str(tmp_path / "f")])
    assert res.exit_code == 2 and "not a folder" in res.output


def test_cli_failure_leaves_no_partial_files(exact_rgb: tuple[onnx.ModelProto, Path], tmp_path: Path) -> None:
    """The first input's files are whole; the failing input writes nothing; no temporary is left."""
    _, conv = exact_rgb
    folder = tmp_path / "in"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((30, 30, 3), np.float32))
    np.save(folder / "b.npy", np.zeros((10, 30, 3), np.float32))  # smaller than the window
    out = tmp_path / "out"
    res = runner.invoke(app, ["scan", str(conv), str(folder), "--out", str(out), "--tile", "24"])
    assert res.exit_code == 2 and "smaller than the model's" in res.output
    # a tiled input's scores are a Zarr array; the failed input left nothing, not even a partial store
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png", "a.scores.zarr"]
    assert zarr.open_array(out / "a.scores.zarr", mode="r").shape == (7, 7, 7)


@pytest.mark.parametrize("case", ["fake_png", "text_file", "smaller_than_window", "tile_4", "nested_out"])
def test_cli_failure_creates_no_output_folder(exact_rgb: tuple[onnx.ModelProto, Path], tmp_path: Path,
                                              case: str) -> None:
    """A scan that fails before any file is written leaves no --out folder behind (nor the folders
    above it that it would have made)."""
    _, conv = exact_rgb
    src, args = tmp_path / "x.npy", []
    np.save(src, np.zeros((30, 30, 3), np.float32))
    out = tmp_path / "out"
    if case == "fake_png":
        src = tmp_path / "x.png"
        src.write_text("not a picture")
    elif case == "text_file":
        src = tmp_path / "x.txt"
        src.write_text("hello")
    elif case == "smaller_than_window":
        np.save(src, np.zeros((10, 30, 3), np.float32))
    elif case == "tile_4":
        args = ["--tile", "4"]
    else:
        out = tmp_path / "a" / "b" / "out"
        np.save(src, np.zeros((10, 30, 3), np.float32))
    res = runner.invoke(app, ["scan", str(conv), str(src), "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and res.output.startswith("error: "), res.output
    assert not out.exists() and not (tmp_path / "a").exists()


def test_cli_same_stem_twice_is_refused(exact_rgb: tuple[onnx.ModelProto, Path], tmp_path: Path) -> None:
    _, conv = exact_rgb
    np.save(tmp_path / "a.npy", np.zeros((30, 30, 3), np.float32))
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "a.png")
    res = runner.invoke(app, ["scan", str(conv), str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "would write the same outputs" in res.output


def test_python_api_result(exact_rgb: tuple[onnx.ModelProto, Path], tmp_path: Path) -> None:
    _, conv = exact_rgb
    r = onnxfcn.scan(conv, np.random.default_rng(12).standard_normal((3, 28, 36)).astype(np.float32), top=4)
    data = json.loads(r.to_json())
    assert data["size"] == [28, 36] and data["grid"] == list(r.grid) and len(data["cells"]) == 4
    assert set(data["cells"][0]) == {"row", "col", "box", "class", "score"}  # no labels: no label key
    k = r.save_png(tmp_path / "p.png", display_scale=2)
    assert k == r.best_overall() and Image.open(tmp_path / "p.png").size == (36 * 2 + 72, 28 * 2 + 24)
    assert [f.name for f in tmp_path.iterdir()] == ["p.png"]


def test_select_cells_orders_and_ties() -> None:
    best = np.array([[1.0, 3.0], [3.0, 2.0]], np.float32)
    cls = np.array([[0, 1], [2, 1]], np.int32)

    class M:
        labels = ("a", "b", "c")

        def box(self, i: int, j: int, h: int, w: int) -> list[int]:
            return [j, i, j + 1, i + 1]

    cells = select_cells(M(), best, cls, (2, 2), top=3, threshold=None)  # type: ignore[arg-type]
    assert [(c.row, c.col, c.label) for c in cells] == [(0, 1, "b"), (1, 0, "c"), (1, 1, "b")]


def _greedy_nms(sm: ScanModel, best: np.ndarray, size: tuple[int, int], iou: float, top: int) -> list[tuple[int, int]]:
    """Non-maximum suppression the plain way: every cell against every kept one."""
    def overlap(a: list[int], b: list[int]) -> float:
        iw, ih = max(0, min(a[2], b[2]) - max(a[0], b[0])), max(0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
        return iw * ih / union

    kept: list[tuple[int, int]] = []
    for idx in np.argsort(-best.ravel(), kind="stable"):
        i, j = divmod(int(idx), best.shape[1])
        if all(overlap(sm.box(i, j, *size), sm.box(a, b, *size)) <= iou for a, b in kept):
            kept.append((i, j))
        if len(kept) == top:
            break
    return kept


@pytest.mark.parametrize("iou", [0.0, 0.3, 0.5])
def test_nms_keeps_one_cell_per_object(digits: Path, iou: float) -> None:
    """--nms equals the plain greedy suppression (every pair compared); at 0.3 on the digits scene
    each of the seven digits whose own cell is its best nearby window is listed at its own box."""
    scene = json.loads((MODELS / "digits_scene.json").read_text())
    res = scan(digits, MODELS / "digits_scene.png", top=10, nms=iou)
    sm = ScanModel.load(digits)
    assert [(c.row, c.col) for c in res.cells] == _greedy_nms(sm, res.best, res.size, iou, 10)
    plain = scan(digits, MODELS / "digits_scene.png", top=10)
    assert [(c.row, c.col) for c in plain.cells] != [(c.row, c.col) for c in res.cells]  # it did suppress
    if iou == 0.3:
        listed = {(tuple(c.box), c.cls) for c in res.cells}
        found = [d["label"] for d in scene["digits"] if (tuple(d["box"]), d["label"]) in listed]
        assert found == [0, 2, 4, 6, 7, 8, 9]
    with pytest.raises(OnnxFcnError, match="--nms"):
        scan(digits, MODELS / "digits_scene.png", nms=1.0)


@pytest.mark.parametrize("use_softmax", [False, True])
def test_summarize_in_blocks_equals_the_whole_map_at_once(monkeypatch: pytest.MonkeyPatch, use_softmax: bool) -> None:
    """Blocks of a few rows (forced small here) give what the whole map computed at once gives."""
    from onnxfcn.scan import result

    rng = np.random.default_rng(3)
    scores = (rng.standard_normal((7, 50, 30)) * 4).astype(np.float32)
    scores[:, 10:14, 5:9] = np.nan  # background cells
    seen = ~np.isnan(scores[0])
    monkeypatch.setattr(result, "_BLOCK", 7 * 30 * 3)  # three rows a block
    got = result.summarize(scores, use_softmax)
    values = result.softmax(np.nan_to_num(scores)) if use_softmax else scores
    probs = result.softmax(np.nan_to_num(scores))
    np.testing.assert_allclose(got.best[seen], values.max(axis=0)[seen], rtol=1e-6)
    np.testing.assert_array_equal(got.best_class[seen], scores.argmax(axis=0)[seen])
    np.testing.assert_allclose(got.class_max, values[:, seen].max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(got.confidence[seen], (probs.max(axis=0)[seen] - 1 / 7) / (6 / 7), rtol=1e-5, atol=1e-6)
    assert np.isnan(got.best[~seen]).all() and (got.best_class[~seen] == -1).all()
    assert np.isnan(scores[:, ~seen]).all()  # the caller's map is not changed


def test_pillows_bomb_limit_is_left_as_it_was(digits: Path) -> None:
    """scan lifts Pillow's decompression-bomb limit only while it opens an image (its own memory
    check decides): a caller's Pillow keeps its limit afterwards."""
    before = Image.MAX_IMAGE_PIXELS
    assert before is not None  # Pillow's default
    scan(digits, MODELS / "digits_scene.png")
    assert Image.MAX_IMAGE_PIXELS == before


def test_confidence_is_zero_for_a_uniform_guess_and_reads_probabilities_as_they_are() -> None:
    from onnxfcn.scan.result import softmax, summarize

    logits = np.zeros((4, 2, 3), np.float32)
    logits[2, 0, 0] = 50.0  # certain
    logits[1, 1, 2] = np.log(3.0)  # 0.5 against three times 1/6
    logits[:, 1, 1] = np.nan  # not computed
    got = summarize(logits, use_softmax=False).confidence
    np.testing.assert_allclose(got[0, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(got[0, 1], 0.0, atol=1e-6)
    np.testing.assert_allclose(got[1, 2], (0.5 - 0.25) / 0.75, atol=1e-6)
    assert np.isnan(got[1, 1])
    probs = np.where(np.isnan(logits), np.nan, softmax(np.nan_to_num(logits)))  # a model ending in Softmax
    np.testing.assert_allclose(summarize(probs, use_softmax=False).confidence, got, atol=1e-6)


# --------------------------------------------------------------------------------------------
# torchvision: a padded network, and one whose trunk pools globally


@pytest.mark.torchvision
def test_tiles_equal_one_pass_resnet18(exports: Exports, tmp_path: Path) -> None:
    conv, _ = convert(exports.torchvision("resnet18"))
    onnx.save(conv, tmp_path / "r18.onnx")
    sm = ScanModel.load(tmp_path / "r18.onnx")
    assert (sm.receptive_field, sm.field_start, sm.global_context) == ((627, 627), (-217, -217), False)
    x = np.random.default_rng(13).standard_normal((1000, 1030, 3)).astype(np.float32)
    one = scan(sm, x, top=None)
    tiled = scan(sm, x, top=None, tile=900)
    assert one.grid == sm.grid(1000, 1030) == (26, 27) and tiled.tiles == 9 and tiled.tiles_exact
    scale = float(np.abs(one.scores).max())
    err = float(np.abs(tiled.scores - one.scores).max())
    assert err <= 1e-5 * scale, (err, scale)
    assert float(one.scores.std()) >= 2


@pytest.mark.torchvision
def test_global_pool_in_trunk_says_tiles_differ(exports: Exports, tmp_path: Path) -> None:
    conv, _ = convert(exports.torchvision("mobilenet_v3_small"))
    onnx.save(conv, tmp_path / "m.onnx")
    x = np.random.default_rng(14).standard_normal((900, 300, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    one = scan(tmp_path / "m.onnx", x, top=None)
    tiled = scan(tmp_path / "m.onnx", x, top=None, tile=900)
    assert tiled.tiles > 1 and not tiled.tiles_exact and one.tiles_exact
    assert float(np.abs(tiled.scores - one.scores).max()) > 1e-3 * float(np.abs(one.scores).max())  # they do differ
    res = runner.invoke(app, ["scan", str(tmp_path / "m.onnx"), str(tmp_path / "x.npy"), "--out", str(tmp_path / "o"),
                              "--tile", "900", "--no-png"])
    assert res.exit_code == 0 and "tiled scores differ from one pass" in res.output
    assert json.loads((tmp_path / "o" / "x.json").read_text())["tiles_exact"] is False


def test_tiles_equal_one_pass_digits_model(digits: Path) -> None:
    x = np.random.default_rng(16).random((203, 150)).astype(np.float32)  # pixels in [0, 1], as it was trained
    one = scan(digits, x, top=None)
    tiled = scan(digits, x, top=None, tile=30)
    assert tiled.tiles > 20 and tiled.tiles_exact
    np.testing.assert_allclose(tiled.scores, one.scores, rtol=0, atol=1e-5 * float(np.abs(one.scores).max()))


def test_lattice_model_scans_only_its_sizes_and_tiles_on_them(tmp_path: Path) -> None:
    """A model that runs only at even sizes: an odd input is refused with the next size; tiles
    keep to the lattice (their lengths too) and equal one pass."""
    from trunks import _floor_ceil_merge

    conv, _ = convert(_floor_ceil_merge())
    onnx.save(conv, tmp_path / "m.onnx")
    sm = ScanModel.load(tmp_path / "m.onnx")
    assert sm.lattice == ((2, (0,)), (2, (0,)))
    with pytest.raises(OnnxFcnError, match="next size that is: 42x60"):
        scan(sm, np.zeros((41, 60, 3), np.float32))
    x = np.random.default_rng(17).standard_normal((82, 60, 3)).astype(np.float32)
    one = scan(sm, x, top=None)
    tiles = plan_tiles(sm, 82, 60, sm.receptive_field[0] + 3)
    assert len(tiles) > 2 and all((t.y1 - t.y0) % 2 == 0 and (t.x1 - t.x0) % 2 == 0 for t in tiles)
    tiled = scan(sm, x, top=None, tile=sm.receptive_field[0] + 3)
    np.testing.assert_allclose(tiled.scores, one.scores, rtol=0, atol=1e-5 * float(np.abs(one.scores).max()))


def test_cli_failure_after_the_tiles_keeps_them_for_resume(exact_rgb: tuple[onnx.ModelProto, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiled scan writes its cells into a hidden partial store; if writing the picture then fails,
    no file of that input is left but the partial store, and --resume finishes the input without
    running its tiles again, with the scores of an uninterrupted run."""
    _, conv = exact_rgb
    np.save(tmp_path / "a.npy", np.random.default_rng(8).standard_normal((40, 40, 3)).astype(np.float32))
    real = ScanResult.save_png

    def broken(*args: Any, **kwargs: Any) -> int:
        raise OSError("disk full")

    args = ["scan", str(conv), str(tmp_path / "a.npy"), "--tile", "24"]
    monkeypatch.setattr(ScanResult, "save_png", broken)
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "--resume" in res.output
    assert [p.name for p in (tmp_path / "o").iterdir()] == [".a.scores.zarr.partial"]
    monkeypatch.setattr(ScanResult, "save_png", real)
    ran: list[object] = []
    monkeypatch.setattr(Runner, "run_region", lambda self, x, t: ran.append(t) or real_run_region(self, x, t))
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "o"), "--resume"])
    assert res.exit_code == 0, res.output
    assert ran == []  # every tile was written before the failure
    assert "(9 done before, resumed)" in res.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.json", "a.png", "a.scores.zarr"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "u")])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "o" / "a.scores.zarr")[:],
                                  zarr.open_array(tmp_path / "u" / "a.scores.zarr")[:])
    assert json.loads((tmp_path / "o" / "a.json").read_text()) == json.loads((tmp_path / "u" / "a.json").read_text())


real_run_region = Runner.run_region


def test_cli_cuda_without_cuda_is_one_clear_error(exact_rgb: tuple[onnx.ModelProto, Path], tmp_path: Path) -> None:
    from onnxfcn.runtime import cuda_available

    if cuda_available():
        pytest.skip("this machine has CUDA")
    _, conv = exact_rgb
    np.save(tmp_path / "a.npy", np.zeros((30, 30, 3), np.float32))
    res = runner.invoke(app, ["scan", str(conv), str(tmp_path / "a.npy"), "--out", str(tmp_path / "o"),
                              "--provider", "cuda"])
    assert res.exit_code == 2 and "CUDA provider asked for" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "o" / "a.json").exists()
