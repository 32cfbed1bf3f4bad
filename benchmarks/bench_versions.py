"""Two versions of onnxfcn side by side: the same commands, as whole processes (interpreter start
included), each version's package put first on PYTHONPATH, interleaved run by run so that machine
noise hits both alike. Prints medians and the ratio current / baseline.

    git worktree add /tmp/base <commit>                   # the version to compare with
    python benchmarks/bench_versions.py --baseline /tmp/base [--repeat 5] [--no-vgg16]

Commands: ``--help``; convert, verify and scan on the digits model (the README's commands); and,
unless --no-vgg16, convert and verify of torchvision VGG16 (legacy exporter, realistic scale) and
scan of its conversion on a 640x640 image.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _models import exported

ROOT = Path(__file__).resolve().parents[1]


def commands(work: Path, vgg16: Path | None) -> dict[str, list[str]]:
    models = work / "models"
    cmds = {
        "--help": ["--help"],
        "digits: convert": ["convert", str(models / "digits_cnn.onnx"), "-o", str(work / "d.onnx"), "-q"],
        "digits: verify --positions all": ["verify", str(models / "digits_cnn.onnx"), str(work / "d_ref.onnx"),
                                           "--size", "16x16", "--positions", "all", "-q"],
        "digits: scan the scene": ["scan", str(work / "d_ref.onnx"), str(models / "digits_scene.png"), "--out",
                                   str(work / "scan"), "--display-scale", "6", "-q"],
    }
    if vgg16 is not None:
        cmds |= {
            "vgg16: convert": ["convert", str(vgg16), "-o", str(work / "v.onnx"), "-q"],
            "vgg16: verify": ["verify", str(vgg16), str(work / "v_ref.onnx"), "-q"],
            "vgg16: scan 640x640": ["scan", str(work / "v_ref.onnx"), str(work / "image.npy"), "--out",
                                    str(work / "vscan"), "-q"],
        }
    return cmds


def run(tree: Path, args: list[str], cwd: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "onnxfcn", *args], cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode not in (0,):
        raise SystemExit(f"{tree}: onnxfcn {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the version to compare with")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-vgg16", action="store_true")
    args = parser.parse_args()
    trees = {"baseline": args.baseline.resolve(), "current": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(ROOT / "models", work / "models")
        vgg16 = None if args.no_vgg16 else exported("vgg16", work)
        # the models the verify and scan commands read, made once by the current version
        run(ROOT, ["convert", str(work / "models" / "digits_cnn.onnx"), "-o", str(work / "d_ref.onnx"), "-q"], work)
        if vgg16 is not None:
            run(ROOT, ["convert", str(vgg16), "-o", str(work / "v_ref.onnx"), "-q", "--no-self-check"], work)
            np.save(work / "image.npy", np.random.default_rng(0).standard_normal((640, 640, 3)).astype(np.float32))
        cmds = commands(work, vgg16)
        times: dict[tuple[str, str], list[float]] = {(c, v): [] for c in cmds for v in trees}
        for _ in range(args.repeat):
            for name, cmd in cmds.items():
                for version, tree in trees.items():
                    for leftover in ("d.onnx", "v.onnx"):
                        (work / leftover).unlink(missing_ok=True)
                    times[name, version].append(run(tree, cmd, work))
    print(f"{args.repeat} runs each, whole processes, medians in seconds (baseline {args.baseline})")
    print(f"{'command':34s} {'baseline':>9s} {'current':>9s} {'ratio':>7s}")
    for name in cmds:
        b, c = (statistics.median(times[name, v]) for v in trees)
        print(f"{name:34s} {b:9.3f} {c:9.3f} {c / b:7.2f}")


if __name__ == "__main__":
    main()
