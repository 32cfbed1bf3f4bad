"""The CUDA checks, for a machine with a GPU and onnxruntime-gpu (CI has none).

Exports torchvision ResNet50 at realistic scale (tests/tv_export.py), converts it, and runs verify on
the CPU and CUDA providers (``provider="auto"``): each provider's checks against the rounding bound,
then CUDA against CPU. Also runs the converted model on CUDA below its minimum size (must fail
cleanly, in a subprocess) and times one pass of each provider. Prints a table; ``--json FILE``
writes the numbers.

    python benchmarks/cuda_check.py [--arch resnet50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

SMALL = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=[("CUDAExecutionProvider", {"use_tf32": 0})])
n = int(sys.argv[2])
try:
    print("shape", s.run(None, {"input": np.ones((1, 3, n, n), np.float32)})[0].shape)
except Exception as exc:
    print("error", str(exc).splitlines()[0][:160])
"""


def median_time(sess, feeds, repeats: int = 10) -> float:
    sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--output-stride", type=int, help="convert at this output stride (default: the network's)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import onnxruntime as ort
    from tv_export import export

    import onnxfcn
    from onnxfcn.runtime import make_session

    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}")
    out: dict[str, object] = {"onnxruntime": ort.__version__, "arch": args.arch}
    with tempfile.TemporaryDirectory() as tmp:
        path = export(args.arch, "legacy", 17, Path(tmp))
        converted, report = onnxfcn.convert(path, output_stride=args.output_stride)
        print(f"stride {report.geometry.stride}, feature dilation {report.geometry.feature_dilation}")
        ref = report.self_check[0]["outputs"][0]
        print(f"convert self-check (cpu): error {ref['error']:.3g}, bound {ref['bound']:.3g}, ratio {ref['ratio']:.3g}")
        out["self_check"] = ref
        conv_path = Path(tmp) / "fcn.onnx"
        import onnx

        onnx.save(converted, conv_path)
        for size in [(288, 320), (384, 384)]:
            t = time.perf_counter()
            result = onnxfcn.verify(path, converted, sizes=[size], provider="auto", positions=16)
            secs = time.perf_counter() - t
            print(f"\nverify at {size[0]}x{size[1]} (cpu + cuda): {'PASSED' if result else 'FAILED'} in {secs:.1f} s "
                  f"-- {result.reason}")
            print(f"{'check':<28}{'passed':>8}{'max abs':>12}{'error/bound':>13}{'original':>10}{'bound':>11}")
            for c in result.checks:
                for o in c.outputs:
                    ratio = "" if o.ratio is None else f"{o.ratio:.3g}"
                    orig = "" if o.original_ratio is None else f"{o.original_ratio:.3g}"
                    bound = "" if o.bound is None else f"{o.bound:.3g}"
                    print(f"{c.name:<28}{c.status:>8}{o.max_abs:>12.3g}{ratio:>13}{orig:>10}{bound:>11}")
            out[f"verify_{size[0]}x{size[1]}"] = result.to_dict()
        x = np.random.default_rng(0).standard_normal((1, 3, 384, 384)).astype(np.float32)
        timing = {}
        for p in ("cpu", "cuda"):
            timing[p] = median_time(make_session(str(conv_path), p), {"input": x})
        print(f"\none pass at 384x384, median of 10: cpu {timing['cpu'] * 1e3:.1f} ms, cuda {timing['cuda'] * 1e3:.2f} ms")
        out["latency_384"] = timing
        small = {}
        for n in (192, 160, 32, 1):
            proc = subprocess.run([sys.executable, "-c", SMALL, str(conv_path), str(n)], capture_output=True, text=True)
            small[n] = {"returncode": proc.returncode, "stdout": proc.stdout.strip()[:200]}
            print(f"cuda at {n}x{n}: rc {proc.returncode} {proc.stdout.strip()[:120]}")
        out["below_min_cuda"] = small
        for p in ("cpu", "cuda"):  # one pass against the original on every window, on each provider
            b = onnxfcn.bench(path, converted, size=(384, 384), repeats=5, provider=p)
            print(f"bench {p} 384x384: one pass {b.converted.median * 1e3:.2f} ms, {b.windows} windows "
                  f"{b.original_windows.median * 1e3:.1f} ms, speedup {b.speedup:.2f}, MAC ratio {b.mac_ratio:.2f}, "
                  f"efficiency {b.efficiency:.3f}, reference latency ratio {b.reference_latency_ratio:.3f}")
            out[f"bench_{p}"] = b.to_dict()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
