"""Conversion cost as a user pays it: whole processes, interpreter start included, against a
plain Python ``onnx.load`` + ``onnx.save`` of the same file.

Each variant is a fresh process (wall time measured around it, peak RSS from its own rusage),
--repeat times, interleaved so that machine noise hits every variant alike; the table gives
medians and the ratios to the baseline, with the targets of issue #11:

- ``convert`` (with its self-check): <= 2.5x the time and <= 1.3x the peak RSS;
- ``convert --no-self-check``: <= 1.3x the time and <= 1.1x the peak RSS.

    pip install -e '.[test]' && python benchmarks/bench_convert.py            # torchvision VGG16
    python benchmarks/bench_convert.py --model path/to/model.onnx
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from _models import model_or_vgg16, timed_process

LOAD_SAVE = "import sys, onnx; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"
TARGETS = {"convert --no-self-check": (1.3, 1.1), "convert": (2.5, 1.3)}


def variants(src: Path, dst: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "onnxfcn", "convert", str(src), "-o", str(dst), "-q"]
    return {"load+save": [sys.executable, "-c", LOAD_SAVE, str(src), str(dst)],
            "convert --no-self-check": [*cli, "--no-self-check"],
            "convert": cli}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="an .onnx file (default: torchvision VGG16, legacy exporter)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = model_or_vgg16(args.model, Path(tmp))
        cmds = variants(src, Path(tmp) / "out.onnx")
        rows: dict[str, list[tuple[float, float]]] = {v: [] for v in cmds}
        for _ in range(args.repeat):
            for v, cmd in cmds.items():
                rows[v].append(timed_process(cmd))
        base_t = statistics.median(r[0] for r in rows["load+save"])
        base_m = statistics.median(r[1] for r in rows["load+save"])
        print(f"model {src.name}, {src.stat().st_size / 1e6:.0f} MB, {args.repeat} runs each (whole processes), medians")
        print(f"{'variant':25s} {'seconds':>8s} {'x load+save':>12s} {'peak MB':>9s} {'x load+save':>12s}  target")
        for v in cmds:
            t = statistics.median(r[0] for r in rows[v])
            m = statistics.median(r[1] for r in rows[v])
            target = TARGETS.get(v)
            goal = f"<= {target[0]}x, <= {target[1]}x" if target else ""
            print(f"{v:25s} {t:8.2f} {t / base_t:12.2f} {m:9.0f} {m / base_m:12.2f}  {goal}")


if __name__ == "__main__":
    main()
