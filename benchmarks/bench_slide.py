"""scan on whole-slide images against the tile loop a user would write by hand, side by side.

A synthetic pyramidal slide is written first (OME-TIFF, tiled 512, zstd, 0.25 um/px, RGB, about
two-thirds glass, levels down to 1/16), at each size asked for. The model is a converted patch
classifier built here (window 96, stride 16, padding-free: four strided convolutions and two
dense layers at realistic scale). Each run is a whole process (interpreter start included), its
wall time and its own peak RSS measured around it:

- ``hand loop``: the 30 lines below (``HAND_LOOP``): tifffile and zarr read stride-aligned tiles
  overlapping by the window, onnxruntime runs each, a memory-mapped .npy takes the scores;
- ``scan --no-png``, ``scan`` (picture on), ``scan --skip-background``.

    pip install -e '.[test]' && python benchmarks/bench_slide.py --sizes 12000x16000 24000x32000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _models import timed_process

if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WINDOW, STRIDE = 96, 16

HAND_LOOP = r'''
import sys, numpy as np, onnxruntime as ort, tifffile, zarr
model, slide, out, tile = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
WINDOW, STRIDE = 96, 16
opts = ort.SessionOptions()
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
with tifffile.TiffFile(slide) as tif:
    z = zarr.open(tif.series[0].aszarr(level=0), mode="r")
    h, w = z.shape[:2]
    gh, gw = (h - WINDOW) // STRIDE + 1, (w - WINDOW) // STRIDE + 1
    per = (tile - WINDOW) // STRIDE + 1  # cells per tile along an axis
    scores = None
    for i0 in range(0, gh, per):
        for j0 in range(0, gw, per):
            i1, j1 = min(gh, i0 + per), min(gw, j0 + per)
            y0, x0 = i0 * STRIDE, j0 * STRIDE
            y1, x1 = (i1 - 1) * STRIDE + WINDOW, (j1 - 1) * STRIDE + WINDOW
            x = np.asarray(z[y0:y1, x0:x1], dtype=np.float32) / 255
            y = sess.run(None, {"image": x.transpose(2, 0, 1)[None]})[0][0]
            if scores is None:
                scores = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(y.shape[0], gh, gw))
            scores[:, i0:i1, j0:j1] = y[:, : i1 - i0, : j1 - j0]
    scores.flush()
'''


def patch_classifier(path: Path) -> None:
    """Window 96, stride 16, no padding, every input pixel read (its receptive field is its
    window): 3 -> 16 -> 32 -> 32 -> 64 channels, 64x5x5 -> 128 -> 4."""
    sys.path.insert(0, str(ROOT / "tests"))
    import numpy as np
    import onnx
    from builders import Builder

    from onnxfcn import convert

    b = Builder(13, seed=7)
    y = "image"
    for k, (cin, cout, ksize) in enumerate([(3, 16, 4), (16, 32, 3), (32, 32, 3), (32, 64, 3)]):
        y = b.node("Conv", [y, b.weight(f"w{k}", (cout, cin, ksize, ksize), np.sqrt(2 / (cin * ksize * ksize))),
                            b.weight(f"b{k}", (cout,), 0.1)], kernel_shape=[ksize, ksize], strides=[2, 2])
        y = b.node("Relu", [y])
    y = b.node("Flatten", [y], axis=1)
    y = b.node("Relu", [b.node("Gemm", [y, b.weight("fc1", (128, 1600), np.sqrt(2 / 1600)), b.weight("fb1", (128,))],
                                transB=1)])
    y = b.node("Gemm", [y, b.weight("fc2", (4, 128), 0.9), b.weight("fb2", (4,), 0.5)], transB=1)
    converted, report = convert(b.model([1, 3, WINDOW, WINDOW], [y], out_names=["scores"]))
    g = report.geometry
    assert g.stride == (STRIDE, STRIDE) and g.exact and g.receptive_field == (WINDOW, WINDOW), g
    onnx.save(converted, path)


def _tissue_tile(y0: int, x0: int, h: int, w: int, ds: int, size: tuple[int, int]) -> np.ndarray:
    """The slide's pixels at level-0 positions (y0 + r*ds, x0 + c*ds): tissue in four large blobs
    (about a third of the slide) over glass, textured."""
    import numpy as np

    yy = (y0 + np.arange(h)[:, None] * ds).astype(np.float32) / size[0]
    xx = (x0 + np.arange(w)[None, :] * ds).astype(np.float32) / size[1]
    blobs = [(0.3, 0.25, 0.19), (0.65, 0.6, 0.21), (0.75, 0.2, 0.13), (0.25, 0.78, 0.12)]
    field = np.zeros((h, w), np.float32)
    for cy, cx, r in blobs:
        field = np.maximum(field, 1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)
    inside = field > 0
    t = 0.5 + 0.5 * np.sin((y0 + np.arange(h)[:, None] * ds) / 9.0) * np.cos((x0 + np.arange(w)[None, :] * ds) / 13.0)
    tissue = np.stack([150 + 80 * t, 60 + 90 * (1 - t), 140 + 60 * t], axis=2)
    glass = np.full((h, w, 3), 244, np.float32)
    return np.where(inside[..., None], tissue, glass).astype(np.uint8)


def write_slide(path: Path, height: int, width: int, levels: int = 5, tile: int = 512) -> None:
    """A pyramidal OME-TIFF written a tile at a time (memory: one tile)."""
    import numpy as np
    import tifffile

    def tiles(ds: int):  # type: ignore[no-untyped-def]
        h, w = height // ds, width // ds
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                block = np.zeros((tile, tile, 3), np.uint8)
                part = _tissue_tile(y * ds, x * ds, min(tile, h - y), min(tile, w - x), ds, (height, width))
                block[: part.shape[0], : part.shape[1]] = part
                yield block

    opts = {"tile": (tile, tile), "compression": "zstd", "photometric": "rgb", "dtype": np.uint8}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(tiles(1), shape=(height, width, 3), subifds=levels - 1,
                  metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25}, **opts)
        for k in range(1, levels):
            tif.write(tiles(2**k), shape=(height // 2**k, width // 2**k, 3), subfiletype=1, **opts)


def own_rss() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def child(*args: str) -> str:
    """This script's ``--child`` job in its own process: this one stays small, for a child's peak
    RSS starts from its parent's size (see _models)."""
    return subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                          check=True).stdout


def run_child(job: list[str]) -> None:
    kind, *args = job
    if kind == "model":
        patch_classifier(Path(args[0]))
    elif kind == "slide":
        write_slide(Path(args[0]), int(args[1]), int(args[2]))
    elif kind == "compare":
        print(json.dumps(compare(*(Path(a) for a in args))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["12000x16000", "24000x32000"])
    parser.add_argument("--tile", type=int, default=2048, help="the hand loop's tile (scan chooses its own)")
    parser.add_argument("--folder", type=Path, help="keep the slides here (default: a temporary folder)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return run_child(args.child)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        model = folder / "patch.fcn.onnx"
        child("model", str(model))
        rows = []
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            slide = folder / f"slide_{h}x{w}.ome.tif"
            if not slide.exists():
                t = time.perf_counter()
                child("slide", str(slide), str(h), str(w))
                print(f"wrote {slide.name} ({slide.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.0f} s",
                      flush=True)
            scan = [sys.executable, "-m", "onnxfcn", "scan", str(model), str(slide), "-q", "--level", "0"]
            runs = {
                "hand loop": [sys.executable, "-c", HAND_LOOP, str(model), str(slide), str(folder / "hand.npy"),
                              str(args.tile)],
                "scan --no-png": [*scan, "--out", str(folder / "a"), "--no-png"],
                "scan (picture on)": [*scan, "--out", str(folder / "b")],
                "scan --skip-background": [*scan, "--out", str(folder / "c"), "--no-png", "--skip-background"],
            }
            print(f"{size}: this process holds {own_rss():.0f} MB before the runs", flush=True)
            results = {name: timed_process(cmd) for name, cmd in runs.items()}
            stem = f"slide_{h}x{w}.scores.zarr"
            diff, skip_diff, kept = json.loads(child("compare", str(folder / "hand.npy"), str(folder / "a" / stem),
                                                     str(folder / "c" / stem)))
            base = results["hand loop"][0]
            for name, (wall, rss) in results.items():
                rows.append((size, name, wall, wall / base, rss, h * w / 1e6 / wall))
            print(f"{size}: scan vs hand loop max |diff| {diff:.3g}; skip-background cells computed {kept:.1%}, "
                  f"max |diff| to the full scan on them {skip_diff:.3g}", flush=True)
    print(f"\n{'slide':13s} {'run':24s} {'seconds':>8s} {'x hand':>7s} {'peak MB':>8s} {'MP/s':>7s}")
    for size, name, wall, ratio, rss, rate in rows:
        print(f"{size:13s} {name:24s} {wall:8.1f} {ratio:7.2f} {rss:8.0f} {rate:7.1f}")


def compare(hand_path: Path, ours_path: Path, skip_path: Path) -> tuple[float, float, float]:
    """max |scan - hand loop|, max |skip-background - scan| over the cells it computed, and their share."""
    import numpy as np
    import zarr

    hand = np.load(hand_path, mmap_mode="r")
    ours: Any = zarr.open_array(ours_path, mode="r")
    skip: Any = zarr.open_array(skip_path, mode="r")
    diff = skip_diff = 0.0
    kept = total = 0
    for r in range(0, hand.shape[1], 256):
        a, b, c = (np.asarray(x[:, r:r + 256]) for x in (hand, ours, skip))
        diff = max(diff, float(np.abs(a - b).max()))
        done = ~np.isnan(c[0])
        kept += int(done.sum())
        total += done.size
        if done.any():
            skip_diff = max(skip_diff, float(np.abs(c[:, done] - b[:, done]).max()))
    return diff, skip_diff, kept / max(total, 1)


if __name__ == "__main__":
    main()
