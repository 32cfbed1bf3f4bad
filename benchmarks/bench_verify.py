"""What verify costs on top of the raw inference it must do, VGG16 at 384x384 by default.

Both start from the two files, as ``onnxfcn verify ORIGINAL CONVERTED`` does. "raw" is the
inference timed directly with onnxruntime: building the original's and the converted model's
sessions from their files, the reference-size runs (batch 2), one pass of the converted model on
the large image (batch 2), and the original on the crops verify samples. "verify" is
onnxfcn.verify with the same files, size, batch and positions; on top of raw it loads and
analyses the models, cuts out the original's head for the feature-window check, runs it, and
evaluates the head in float64 with its rounding bound for every cell checked. (It builds its
sessions with the weights mapped from the files, which is quicker than onnxruntime's own
loading.) Side by side, --repeat times, medians.

    pip install -e '.[test]' && python benchmarks/bench_verify.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _models import model_or_vgg16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--positions", default="16")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import onnxfcn
    from onnxfcn.io import save_model
    from onnxfcn.runtime import make_session
    from onnxfcn.verify.sliding import sample_positions

    with tempfile.TemporaryDirectory() as tmp:
        src = model_or_vgg16(args.model, Path(tmp))
        converted_model, report = onnxfcn.convert(src, self_check=False)
        converted = Path(tmp) / "converted.onnx"
        save_model(converted_model, converted)
        del converted_model
        geo = report.geometry
        positions: int | str = args.positions if args.positions == "all" else int(args.positions)
        gh, gw = geo.grid(args.size, args.size)
        cells = sample_positions(gh, gw, positions, 0)
        wh, ww = geo.window
        c = report.image.channels
        raw_times, verify_times = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            so, sc = make_session(str(src)), make_session(str(converted))
            name = so.get_inputs()[0].name
            ref = np.random.default_rng(0).standard_normal((2, c, wh, ww)).astype(np.float32)
            for n in range(2):
                so.run(None, {name: ref[n:n + 1]})
            sc.run(None, {name: ref})
            x = np.random.default_rng(1).standard_normal((2, c, args.size, args.size)).astype(np.float32)
            sc.run(None, {name: x})
            crops = np.concatenate([x[:, :, i * geo.stride[0]:i * geo.stride[0] + wh,
                                      j * geo.stride[1]:j * geo.stride[1] + ww] for i, j in cells])
            step = 1 if so.get_inputs()[0].shape[0] == 1 else 8  # exporters often fix batch 1
            for k in range(0, len(crops), step):
                so.run(None, {name: crops[k:k + step]})
            raw_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            result = onnxfcn.verify(src, converted, sizes=[(args.size, args.size)], batch=2, positions=positions)
            verify_times.append(time.perf_counter() - t0)
            assert result.checks[0].passed
        raw, ver = statistics.median(raw_times), statistics.median(verify_times)
        print(f"model {Path(src).name} at {args.size}x{args.size}, batch 2, {len(cells)} of {gh}x{gw} cells, "
              f"{args.repeat} runs each, medians")
        print(f"{'':24s} {'seconds':>8s}")
        print(f"{'raw inference':24s} {raw:8.2f}")
        print(f"{'onnxfcn.verify':24s} {ver:8.2f}")
        print(f"{'verify / raw':24s} {ver / raw:8.2f}")


if __name__ == "__main__":
    main()
