"""One pass of the converted model against the original on every window, at output strides 32,
16 and 8, for torchvision VGG16, ResNet50 and MobileNetV3 (random weights, legacy exporter).

Each row is ``onnxfcn.bench`` (the same numbers as ``onnxfcn bench``): medians over --repeats
runs after a warm-up, both models in this process, one after the other. The targets of issue #11:
efficiency (speedup / MAC ratio) >= 0.95 at the network's own stride; at output stride 16 VGG16
>= 25x faster than the 121 crops it replaces, efficiency >= 0.9; reference-size latency of the
converted model <= 1.03x the original's.

    pip install -e '.[test]' && python benchmarks/bench_stride.py [--size 384] [--repeats 3] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

ARCHS = ["vgg16", "resnet50", "mobilenet_v3_large"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--arch", action="append", help="torchvision architecture (repeatable; default: the three)")
    ap.add_argument("--strides", default="32,16,8")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import logging

    logging.disable(logging.WARNING)
    from tv_export import export

    import onnxfcn

    rows = []
    header = (f"{'model':20s} {'S':>3s} {'grid':>6s} {'one pass':>10s} {'windows':>10s} {'speedup':>8s} "
              f"{'MACs':>6s} {'effic.':>7s} {'ref lat.':>8s} {'RSS conv':>9s} {'RSS orig':>9s}")
    print(f"{args.size}x{args.size}, medians of {args.repeats}; one pass and windows in ms; MACs = MAC ratio; "
          "ref lat. = converted / original latency at the reference size; RSS: the phase's peak above its start, MiB")
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch or ARCHS:
            path = export(arch, "legacy", 17, Path(tmp))
            for s in (int(v) for v in args.strides.split(",")):
                converted, _ = onnxfcn.convert(path, output_stride=s, self_check=False)
                r = onnxfcn.bench(path, converted, size=(args.size, args.size), repeats=args.repeats)
                d = r.to_dict() | {"arch": arch, "output_stride": s}
                rows.append(d)

                def mib(t: dict[str, object]) -> str:
                    v = t["added_rss"]
                    return f"{v / 2**20:9.0f}" if isinstance(v, int) else f"{'n/a':>9s}"

                print(f"{arch:20s} {s:3d} {r.grid[0]:>3d}x{r.grid[1]:<2d} {r.converted.median * 1e3:10.1f} "
                      f"{r.original_windows.median * 1e3:10.1f} {r.speedup:8.2f} {r.mac_ratio:6.2f} "
                      f"{r.efficiency:7.3f} {r.reference_latency_ratio:8.3f} {mib(d['converted'])} "
                      f"{mib(d['original_windows'])}", flush=True)
                del converted
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
