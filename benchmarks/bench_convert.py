"""Conversion time and peak memory against a plain onnx.load + onnx.save of the same file.

Each variant runs in a fresh subprocess (peak RSS is per process), --repeat times, side by side
in one run; the table gives medians and the ratio to the baseline.

    pip install -e '.[test]' && python benchmarks/bench_convert.py            # torchvision VGG16
    python benchmarks/bench_convert.py --model path/to/model.onnx
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _models import model_or_vgg16

CHILD = r"""
import json, resource, sys, time
import onnx
variant, src, dst = sys.argv[1:4]
t0 = time.perf_counter()
if variant == "load+save":
    onnx.save(onnx.load(src), dst)
else:
    import onnxfcn
    from onnxfcn.io import save_model
    model, _ = onnxfcn.convert(src, self_check=(variant == "convert+self-check"))
    save_model(model, dst)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

VARIANTS = ["load+save", "convert", "convert+self-check"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="an .onnx file (default: torchvision VGG16, legacy exporter)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = model_or_vgg16(args.model, Path(tmp))
        rows: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        for _ in range(args.repeat):
            for v in VARIANTS:  # interleaved, so that machine noise hits every variant alike
                out = subprocess.run([sys.executable, "-c", CHILD, v, str(src), str(Path(tmp) / "out.onnx")],
                                     capture_output=True, text=True, check=True)
                rows[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
        size_mb = src.stat().st_size / 1e6
        base_t = statistics.median(r["seconds"] for r in rows["load+save"])
        base_m = statistics.median(r["peak_mb"] for r in rows["load+save"])
        print(f"model {src.name}, {size_mb:.0f} MB, {args.repeat} runs each, medians")
        print(f"{'variant':22s} {'seconds':>8s} {'x load+save':>12s} {'peak MB':>9s} {'x load+save':>12s}")
        for v in VARIANTS:
            t = statistics.median(r["seconds"] for r in rows[v])
            m = statistics.median(r["peak_mb"] for r in rows[v])
            print(f"{v:22s} {t:8.2f} {t / base_t:12.2f} {m:9.0f} {m / base_m:12.2f}")


if __name__ == "__main__":
    main()
