"""Large images: every reader on files the tests write (pyramidal OME-TIFF, GeoTIFF, BigTIFF,
Zarr and OME-Zarr, a generic tiled TIFF through OpenSlide), pyramid levels and pixel sizes,
background skipped, Zarr and TIFF outputs, resuming a killed scan, and Dask workers that read
their own regions. A classifier whose scores are channel means over the window checks the cells
in closed form, without onnxruntime."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tifffile
import zarr
from builders import channel_means, tissue
from PIL import Image
from typer.testing import CliRunner

from onnxfcn import convert
from onnxfcn.cli import app
from onnxfcn.errors import OnnxFcnError, ResourceError
from onnxfcn.scan import ScanModel, scan
from onnxfcn.scan.sources import open_input, read_options

runner = CliRunner()
WINDOW, STRIDE, WEIGHTS = 32, 4, np.asarray([10.0, 20.0, 30.0])


@pytest.fixture(scope="module")
def means_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    conv, _ = convert(channel_means(WINDOW, STRIDE), mpp=0.5)
    path = tmp_path_factory.mktemp("means") / "means.fcn.onnx"
    onnx.save(conv, path)
    return path


def closed_form(pixels: np.ndarray) -> np.ndarray:
    """What the channel-means classifier gives on ``pixels`` (H x W x 3 uint8): 3 x gh x gw."""
    x = pixels.astype(np.float64) / 255
    ii = np.pad(x.cumsum(0).cumsum(1), ((1, 0), (1, 0), (0, 0)))
    gh, gw = (pixels.shape[0] - WINDOW) // STRIDE + 1, (pixels.shape[1] - WINDOW) // STRIDE + 1
    r = np.arange(gh)[:, None] * STRIDE
    c = np.arange(gw)[None, :] * STRIDE
    s = ii[r + WINDOW, c + WINDOW] - ii[r, c + WINDOW] - ii[r + WINDOW, c] + ii[r, c]
    return (s / WINDOW**2 * WEIGHTS).transpose(2, 0, 1)


def write_pyramid(path: Path, pixels: np.ndarray, mpp: float = 0.25, levels: int = 3, tile: int = 64,
                  compression: str | None = "zlib") -> list[np.ndarray]:
    """An OME-TIFF pyramid (level k: every 2^k-th pixel), tiled; returns the levels."""
    arrays = [pixels[:: 2**k, :: 2**k] for k in range(levels)]
    opts: dict[str, Any] = {"tile": (tile, tile), "compression": compression, "photometric": "rgb"}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(arrays[0], subifds=levels - 1, metadata={"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp},
                  **opts)
        for a in arrays[1:]:
            tif.write(a, subfiletype=1, **opts)
    return arrays


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    path = tmp_path_factory.mktemp("slide") / "slide.ome.tif"
    return path, write_pyramid(path, tissue(400, 520, seed=1))


# ---- readers, levels, pixel sizes -----------------------------------------------------------
@pytest.mark.parametrize("level", [0, 1, 2])
def test_every_level_is_right_cell_for_cell(means_model: Path, slide: tuple[Path, list[np.ndarray]],
                                           level: int) -> None:
    path, levels = slide
    r = scan(means_model, path, level=level, top=None)
    want = closed_form(levels[level])
    assert r.placement.level == level and r.placement.downsample == 2**level
    assert r.placement.mpp == pytest.approx(0.25 * 2**level)
    assert r.scores.shape == want.shape
    np.testing.assert_allclose(r.scores, want, rtol=1e-5, atol=1e-5)
    c = r.cells[0]  # boxes in the level's pixels and in level 0's
    assert c.box_level0 == ([v * 2**level for v in c.box] if level else None)


def test_the_models_resolution_picks_the_level(means_model: Path, slide: tuple[Path, list[np.ndarray]]) -> None:
    """convert --mpp 0.5 stored the training resolution: a 0.25 um/px slide is read at level 1;
    --mpp and --level choose otherwise; a file without a pixel size is read at level 0 unless
    --mpp asked for one."""
    path, levels = slide
    sm = ScanModel.load(means_model)
    assert sm.mpp == 0.5
    assert open_input(path, sm).placement.level == 1
    assert open_input(path, sm, read_options(sm, mpp=1.1)).placement.level == 2
    assert open_input(path, sm, read_options(sm, level=0)).placement.level == 0
    png = path.parent / "plain.png"
    Image.fromarray(levels[2]).save(png)
    assert open_input(png, sm).placement.level == 0
    with pytest.raises(OnnxFcnError, match="states no pixel size"):
        open_input(png, sm, read_options(sm, mpp=0.5))
    with pytest.raises(OnnxFcnError, match="--level 3: the file has levels 0..2"):
        open_input(path, sm, read_options(sm, level=3))


def test_tiles_decode_each_file_tile_once(means_model: Path, slide: tuple[Path, list[np.ndarray]]) -> None:
    """Scan tiles overlap by the window; the file's tiles are decoded once each, and only those
    scanned: never the whole image."""
    path, levels = slide
    sm = ScanModel.load(means_model)
    src = open_input(path, sm, read_options(sm, level=0))
    tiled = scan(sm, path, level=0, tile=96, top=None)
    np.testing.assert_allclose(tiled.scores, closed_form(levels[0]), rtol=1e-5, atol=1e-5)
    src.read(0, 100, 0, 100)
    assert src._cache().decoded == 4  # a 100x100 region: 2 x 2 file tiles of 64
    src.read(60, 140, 60, 140)
    assert src._cache().decoded == 4 + 5  # 9 tiles cover it, 4 decoded already


def test_tile_cache_keeps_what_a_region_needs_under_a_small_budget() -> None:
    """A budget below one region's tiles: the oldest tiles go, never those the region reads (a
    region whose tiles were partly cached used to lose one of them, a KeyError on a 768 MP slide)."""
    from onnxfcn.scan.sources.base import TileCache

    image = np.arange(40 * 40 * 3, dtype=np.uint8).reshape(40, 40, 3)
    cache = TileCache(image.shape, (10, 10), np.dtype(np.uint8),
                      lambda ty0, ty1, tx0, tx1: image[ty0 * 10:ty1 * 10, tx0 * 10:tx1 * 10], budget=300)
    for y0, y1, x0, x1 in [(0, 10, 0, 30), (0, 20, 0, 10), (5, 40, 5, 40), (0, 40, 0, 40), (12, 18, 31, 39)]:
        np.testing.assert_array_equal(cache.region(y0, y1, x0, x1), image[y0:y1, x0:x1])
    assert cache._bytes <= 300 or len(cache._tiles) <= 16


def test_geotiff_georeference_carries_over(means_model: Path, tmp_path: Path) -> None:
    """A GeoTIFF's map: one cell is stride pixels, its origin the first window's centre, in the
    input's coordinates; --heatmap-tiff writes it as a GeoTIFF with those tags and the GeoKeys."""
    pixels = tissue(160, 200, seed=2)
    keys = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)
    tags = [(33550, "d", 3, (10.0, 10.0, 0.0), True), (33922, "d", 6, (0, 0, 0, 500000.0, 4600000.0, 0.0), True),
            (34735, "H", len(keys), keys, True)]
    src = tmp_path / "scene.tif"
    tifffile.imwrite(src, pixels, tile=(64, 64), photometric="rgb", extratags=tags)
    res = runner.invoke(app, ["scan", str(means_model), str(src), "--out", str(tmp_path / "o"), "--heatmap-tiff",
                              "--tile", "96"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "o" / "scene.json").read_text())
    geo = data["cells_geometry"]["georef"]
    corner = WINDOW / 2 - STRIDE / 2  # the first window's centre, less half a cell
    assert geo["origin"] == [500000.0 + corner * 10, 4600000.0 - corner * 10]
    assert geo["cell_size"] == [STRIDE * 10.0, STRIDE * 10.0]
    with tifffile.TiffFile(tmp_path / "o" / "scene.heatmap.tif") as tif:
        page = tif.pages.first
        assert tuple(page.tags["ModelPixelScaleTag"].value[:2]) == (40.0, 40.0)
        assert tuple(page.tags["ModelTiepointTag"].value[3:5]) == tuple(geo["origin"])
        assert tuple(page.tags["GeoKeyDirectoryTag"].value) == keys
        heat = tif.asarray()
    np.testing.assert_allclose(heat, closed_form(pixels), rtol=1e-5, atol=1e-5)


def test_zarr_and_ome_zarr_inputs(means_model: Path, tmp_path: Path) -> None:
    pixels = tissue(150, 170, seed=3)
    plain = tmp_path / "plain.zarr"
    zarr.create_array(str(plain), data=pixels, chunks=(64, 64, 3))
    ome = tmp_path / "ome.zarr"
    group = zarr.open_group(str(ome), mode="w")
    for k in range(2):
        group.create_array(str(k), data=np.ascontiguousarray(pixels[:: 2**k, :: 2**k].transpose(2, 0, 1)),
                           chunks=(3, 64, 64))
    group.attrs["multiscales"] = [{"axes": [{"name": "c", "type": "channel"},
                                            {"name": "y", "type": "space", "unit": "micrometer"},
                                            {"name": "x", "type": "space", "unit": "micrometer"}],
                                   "datasets": [{"path": str(k), "coordinateTransformations": [
                                       {"type": "scale", "scale": [1.0, 0.5 * 2**k, 0.5 * 2**k]}]} for k in range(2)]}]
    np.testing.assert_allclose(scan(means_model, plain, top=None).scores, closed_form(pixels), rtol=1e-5, atol=1e-5)
    r = scan(means_model, ome, top=None, tile=80)  # the model's 0.5 um/px: level 0
    assert r.placement.level == 0 and r.placement.mpp == 0.5
    np.testing.assert_allclose(r.scores, closed_form(pixels), rtol=1e-5, atol=1e-5)
    r1 = scan(means_model, ome, top=None, level=1)
    np.testing.assert_allclose(r1.scores, closed_form(pixels[::2, ::2]), rtol=1e-5, atol=1e-5)


def test_openslide_reads_a_generic_tiled_tiff(means_model: Path, tmp_path: Path) -> None:
    openslide = pytest.importorskip("openslide")
    pixels = tissue(256, 320, seed=4)
    path = tmp_path / "scan.svs"  # OpenSlide's generic TIFF reader, by the suffix whole-slide formats have
    with tifffile.TiffWriter(path) as tif:
        opts: dict[str, Any] = {"tile": (64, 64), "compression": "jpeg", "photometric": "rgb"}
        tif.write(pixels, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER", **opts)
        tif.write(pixels[::2, ::2], subfiletype=1, **opts)
    r = scan(means_model, path, top=None, tile=100)
    assert r.placement.level == 0 and r.placement.mpp == pytest.approx(0.5) and r.placement.levels == 2
    with openslide.OpenSlide(str(path)) as s:  # the pixels as OpenSlide decodes them
        read = np.asarray(s.read_region((0, 0), 0, (320, 256)))[..., :3]
    np.testing.assert_allclose(r.scores, closed_form(read), rtol=1e-5, atol=1e-5)


def test_missing_openslide_names_the_extra(means_model: Path, tmp_path: Path) -> None:
    code = ("import sys; sys.modules['openslide'] = None\nfrom onnxfcn.cli import main\n"
            f"sys.argv = ['onnxfcn', 'scan', {str(means_model)!r}, {str(tmp_path / 'x.ndpi')!r}, '--out', "
            f"{str(tmp_path / 'o')!r}]\nmain()")
    (tmp_path / "x.ndpi").write_bytes(b"not a slide")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: whole-slide formats need OpenSlide: pip install "
                                               "'onnxfcn[slides]' (openslide-python and openslide-bin)"]


def test_a_png_too_large_to_decode_is_refused_up_front(means_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(tissue(300, 300)).save(path)
    with pytest.raises(ResourceError, match=r"decoding this 300x300 image takes about .*tiled TIFF"):
        scan(means_model, path, max_memory=100_000)


# ---- background ----------------------------------------------------------------------------
def test_background_is_never_read_and_computed_cells_are_the_full_scans(means_model: Path,
                                                                        slide: tuple[Path, list[np.ndarray]]) -> None:
    path, levels = slide
    full = scan(means_model, path, level=0, tile=96, top=None)
    sm = ScanModel.load(means_model)
    src = open_input(path, sm, read_options(sm, level=0))
    reads: list[tuple[int, int]] = []
    real = src.read
    src.read = lambda y0, y1, x0, x1, **kw: reads.append((y0, x0)) or real(y0, y1, x0, x1, **kw)  # type: ignore[method-assign]
    from onnxfcn.scan import ScanOptions, scan_source
    from onnxfcn.scan.runner import Runner

    skip = scan_source(Runner(sm), sm, src, ScanOptions(top=None, tile=96, skip_background=True))
    b = skip.background
    assert b is not None and b["tiles_skipped"] > 0 and 0.3 < b["fraction_skipped"] < 0.9
    assert len(reads) == b["tiles"] - b["tiles_skipped"]  # background tiles are never read
    computed = ~np.isnan(skip.scores[0])
    assert computed.sum() == b["cells"] - b["cells_skipped"]
    # cropped tiles run at other sizes than the full scan's: float rounding apart (a few ulp), equal
    np.testing.assert_allclose(skip.scores[:, computed], full.scores[:, computed], rtol=1e-6, atol=1e-6)
    assert np.isnan(skip.scores[:, ~computed]).all() and (skip.best_class[~computed] == -1).all()
    assert all(not np.isnan(c.score) for c in skip.cells)


def test_background_tiles_are_cropped_to_their_foreground(means_model: Path,
                                                           slide: tuple[Path, list[np.ndarray]]) -> None:
    """Without --tile, --skip-background picks the tile side and crops each tile to its
    foreground cells: fewer pixels are read than the tiles hold, and every computed cell is the
    full scan's."""
    from onnxfcn.scan import ScanOptions, scan_source
    from onnxfcn.scan.driver import foreground_tiles
    from onnxfcn.scan.runner import Runner
    from onnxfcn.scan.tiles import plan_tiles

    path, levels = slide
    full = scan(means_model, path, level=0, top=None)
    sm = ScanModel.load(means_model)
    src = open_input(path, sm, read_options(sm, level=0))
    fg = ~np.isnan(scan_source(Runner(sm), sm, src, ScanOptions(top=None, tile=96, skip_background=True)).scores[0])
    tiles = plan_tiles(sm, src.height, src.width, 96)
    cropped = foreground_tiles(sm, src.height, src.width, tiles, fg)
    area = sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in cropped)
    assert area < sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in tiles if fg[t.i0:t.i1, t.j0:t.j1].any())
    covered = np.zeros_like(fg)
    for t in cropped:
        covered[t.i0:t.i1, t.j0:t.j1] = True
    assert covered[fg].all()  # every foreground cell is in a cropped tile
    auto = scan_source(Runner(sm), sm, src, ScanOptions(top=None, skip_background=True, max_memory=2_000_000))
    computed = ~np.isnan(auto.scores[0])
    assert auto.tiles > 1 and computed.any() and not computed.all()
    np.testing.assert_allclose(auto.scores[:, computed], full.scores[:, computed], rtol=1e-6, atol=1e-6)


# ---- outputs that scale, resume, Dask ------------------------------------------------------------
def test_zarr_scores_carry_the_geometry(means_model: Path, slide: tuple[Path, list[np.ndarray]], tmp_path: Path) -> None:
    path, levels = slide
    res = runner.invoke(app, ["scan", str(means_model), str(path), "--out", str(tmp_path), "--level", "1",
                              "--tile", "96", "--picture", "classes", "--picture-size", "200"])
    assert res.exit_code == 0, res.output
    z = zarr.open_array(tmp_path / "slide.scores.zarr", mode="r")
    np.testing.assert_allclose(z[:], closed_form(levels[1]), rtol=1e-5, atol=1e-5)
    attrs = dict(z.attrs)["onnxfcn"]
    assert attrs["level"] == 1 and attrs["mpp"] == 0.5 and attrs["stride"] == [STRIDE, STRIDE]
    assert attrs["cells_geometry"]["cell_um"] == [2.0, 2.0]
    data = json.loads((tmp_path / "slide.json").read_text())
    assert data["level"] == 1 and data["scores"]["format"] == "zarr" and data["picture"]["view"] == "classes"
    assert max(Image.open(tmp_path / "slide.png").size) <= 200 + 150  # the picture, plus its legend


def _resumable(tmp_path: Path) -> tuple[Path, np.ndarray]:
    pixels = tissue(1200, 1400, seed=6, background=0.2)
    path = tmp_path / "big.ome.tif"
    write_pyramid(path, pixels, levels=1, tile=128, compression=None)
    return path, pixels


def test_resume_after_sigkill_equals_an_uninterrupted_scan(means_model: Path, tmp_path: Path) -> None:
    path, pixels = _resumable(tmp_path)
    args = [sys.executable, "-m", "onnxfcn", "scan", str(means_model), str(path), "--tile", "160", "--no-png",
            "--level", "0"]
    proc = subprocess.Popen([*args, "--out", str(tmp_path / "k")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done = tmp_path / "k" / ".big.scores.zarr.partial" / "done"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not done.is_dir() or len(list(done.iterdir())) < 5):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list(done.iterdir()))
    assert written >= 5 and not (tmp_path / "k" / "big.json").exists()
    res = subprocess.run([*args, "--out", str(tmp_path / "k"), "--resume"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "done before, resumed" in res.stdout
    whole = subprocess.run([*args, "--out", str(tmp_path / "w")], capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    a, b = (zarr.open_array(tmp_path / d / "big.scores.zarr", mode="r")[:] for d in ("k", "w"))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, closed_form(pixels), rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "k" / "big.json").read_text()) == json.loads((tmp_path / "w" / "big.json").read_text())
    assert not (tmp_path / "k" / ".big.scores.zarr.partial").exists()


@pytest.mark.dask
def test_dask_workers_read_their_own_regions_and_write_the_zarr(means_model: Path,
                                                                 slide: tuple[Path, list[np.ndarray]],
                                                                 tmp_path: Path) -> None:
    path, levels = slide
    base = [sys.executable, "-m", "onnxfcn", "scan", str(means_model), str(path), "--tile", "96", "--no-png",
            "--level", "0", "-q"]
    serial = subprocess.run([*base, "--out", str(tmp_path / "s")], capture_output=True, text=True, timeout=300)
    dask = subprocess.run([*base, "--out", str(tmp_path / "d"), "--workers", "2"], capture_output=True, text=True,
                          timeout=300)
    assert serial.returncode == 0 and dask.returncode == 0, (serial.stderr, dask.stderr)
    assert dask.stdout == "" and dask.stderr == ""
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "s" / "slide.scores.zarr")[:],
                                  zarr.open_array(tmp_path / "d" / "slide.scores.zarr")[:])
