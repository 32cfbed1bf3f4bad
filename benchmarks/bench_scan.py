"""scan's peak memory and time on large images: tiles of 1024 px against one pass.

torchvision MobileNetV3-Large (random weights, legacy exporter), converted by onnxfcn, scans a
random float32 .npy image of 2048², 4096² and 8192² pixels as a whole process (``onnxfcn scan
--no-png -q``; interpreter start included; peak RSS from the process's own rusage), once with
``--tile 1024`` and once in one pass where its estimated memory fits. Issue #12's target: peak
memory stays flat while the image grows 16x. The tiled and untiled score maps are compared.

    pip install -e '.[test]' && python benchmarks/bench_scan.py
    python benchmarks/bench_scan.py --sizes 2048,4096 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _models import exported, timed_process

# What the parent needs from onnxfcn, asked of a child so that the parent stays small (see _models).
GEOMETRY = """
import json, sys
from onnxfcn.runtime import available_memory
from onnxfcn.scan import ScanModel
sm = ScanModel.load(sys.argv[1])
sides = [int(s) for s in sys.argv[2].split(",")]
print(json.dumps({"window": sm.window, "stride": sm.stride, "field": sm.receptive_field, "global": sm.global_context,
                  "grid": {s: sm.grid(s, s) for s in sides}, "need": {s: sm.estimate(s, s) for s in sides},
                  "available": available_memory()}))
"""


def own_rss() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# Done in children as well: mapping the image or the score maps would raise this process's
# resident size, and with it the floor of every measured child's peak (see _models).
RANDOM_IMAGE = """
import sys, numpy as np
side = int(sys.argv[2])
arr = np.lib.format.open_memmap(sys.argv[1], mode="w+", dtype=np.float32, shape=(side, side, 3))
rng = np.random.default_rng(side)
for y in range(0, side, 512):
    arr[y:y + 512] = rng.standard_normal((min(512, side - y), side, 3), dtype=np.float32)
arr.flush()
"""
COMPARE = """
import sys, numpy as np, zarr
a, b = (zarr.open_array(p, mode="r") if p.endswith(".zarr") else np.load(p, mmap_mode="r") for p in sys.argv[1:3])
diff = top = 0.0
for r in range(0, a.shape[1], 64):  # a block of rows at a time
    x, y = np.asarray(a[:, r:r + 64]), np.asarray(b[:, r:r + 64])
    diff, top = max(diff, float(np.abs(x - y).max())), max(top, float(np.abs(y).max()))
print(diff / top)
"""


def child(code: str, *args: str) -> str:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="2048,4096,8192")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        conv = tmp / "mnv3.fcn.onnx"
        subprocess.run([sys.executable, "-m", "onnxfcn", "convert", str(exported("mobilenet_v3_large", tmp)), "-o",
                        str(conv), "-q"], check=True)
        geo = json.loads(child(GEOMETRY, str(conv), args.sizes))
        print(f"MobileNetV3-Large: window {geo['window'][0]}, stride {geo['stride'][0]}, receptive field "
              f"{geo['field'][0]} (tiles overlap by it), global pool in the trunk: {geo['global']}")
        rows = []
        for side in (int(s) for s in args.sizes.split(",")):
            img = tmp / f"x{side}.npy"
            child(RANDOM_IMAGE, str(img), str(side))
            base = [sys.executable, "-m", "onnxfcn", "scan", str(conv), str(img), "--no-png", "-q"]
            variants = {"tiles": [*base, "--out", str(tmp / "tiled"), "--tile", str(args.tile)]}
            need = geo["need"][str(side)]
            if need < 0.8 * geo["available"]:
                variants["one pass"] = [*base, "--out", str(tmp / "one"), "--max-memory", str(4 * need)]
            print(f"{side}x{side}: this process holds {own_rss():.0f} MB before the runs", flush=True)
            times: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
            for _ in range(args.repeat):
                for name, cmd in variants.items():
                    times[name].append(timed_process(cmd))
            diff = ""
            if "one pass" in variants:
                ratio = child(COMPARE, str(tmp / "tiled" / f"x{side}.scores.zarr"), str(tmp / "one" / f"x{side}.scores.npy"))
                diff = f"{float(ratio):.2g}"
            gh, gw = geo["grid"][str(side)]
            for name in variants:
                t = statistics.median(w for w, _ in times[name])
                m = statistics.median(r for _, r in times[name])
                rows.append((f"{side}x{side}", name, f"{gh}x{gw}", f"{t:.1f}", f"{m:.0f}", diff if name == "tiles" else ""))
            img.unlink()
        head = ("image", "run", "cells", "time s", "peak RSS MB", "max |tiles - one pass| / max|one pass|")
        widths = [max(len(r[k]) for r in [head, *rows]) for k in range(len(head))]
        for r in [head, tuple("-" * w for w in widths), *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        print(f"medians of {args.repeat} run(s) each; available memory {geo['available'] / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
