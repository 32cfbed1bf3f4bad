"""What a converted model costs when it runs as the classifier it was: at the reference size,
batch 1, 2 intra-op threads, on onnxruntime's CPU provider (issue #24, point 6).

Variants per model: the original; the original with H and W made dynamic (what any dynamic-size
model pays); the converted model (dynamic H and W); the same converted model in a session whose
free dims are pinned to the reference size (onnxruntime's free-dimension overrides, as
``convert --opt-size 224x224 --json`` lists them under ``deploy``); the converted model with
``--static`` at the reference size. Each variant is timed in its own block (one session created, warmed up, timed,
released) with spinning turned off, so idle threads of one session never slow another; the blocks
are repeated ``--rounds`` times in turn, each round starting at the next variant (on this machine a
block's position in the round moved its time by up to 5 %), and the table gives the median of the
block medians and the ratio to the original.

    pip install -e '.[test]' && python benchmarks/bench_reference.py            # ResNet50, MobileNetV3-L, VGG16
    python benchmarks/bench_reference.py --arch resnet50 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from _models import exported

import onnxfcn

ARCHS = ("resnet50", "mobilenet_v3_large", "vgg16")


def dynamic_hw(model: onnx.ModelProto) -> onnx.ModelProto:
    """The original with its input's H and W symbolic (every intermediate shape dropped)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    dims = out.graph.input[0].type.tensor_type.shape.dim
    dims[2].Clear()
    dims[2].dim_param = "height"
    dims[3].Clear()
    dims[3].dim_param = "width"
    del out.graph.value_info[:]
    return out


def block(path: Path, x: np.ndarray, runs: int, pin: dict[str, int]) -> float:
    """Median milliseconds of ``runs`` runs of one fresh session (after 5 warm-up runs), its free
    dims ``pin`` fixed."""
    opts = ort.SessionOptions()
    for dim, value in pin.items():
        opts.add_free_dimension_override_by_name(dim, value)
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(5):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    del sess
    return statistics.median(times)


PINNED = "converted, dims pinned"


def variants(arch: str, folder: Path) -> dict[str, tuple[Path, dict[str, int]]]:
    """Variant name -> (model file, free dims pinned in its session)."""
    src = exported(arch, folder)
    model = onnx.load(src)
    onnx.save(dynamic_hw(model), folder / f"{arch}_dynhw.onnx")
    conv, report = onnxfcn.convert(model, self_check=False, opt_size=(224, 224))
    onnx.save(conv, folder / f"{arch}_fcn.onnx")
    static, _ = onnxfcn.convert(model, self_check=False, static=(report.image.height, report.image.width))
    onnx.save(static, folder / f"{arch}_static.onnx")
    pin = report.deploy["onnxruntime_free_dimension_overrides"]  # {batch: 1, height: 224, width: 224}
    return {"original": (src, {}), "original, dynamic H, W": (folder / f"{arch}_dynhw.onnx", {}),
            "converted": (folder / f"{arch}_fcn.onnx", {}), PINNED: (folder / f"{arch}_fcn.onnx", pin),
            "converted --static 224x224": (folder / f"{arch}_static.onnx", {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", choices=ARCHS, help="torchvision model (repeatable) [all three]")
    ap.add_argument("--rounds", type=int, default=8, help="blocks per variant, taken in turn")
    ap.add_argument("--runs", type=int, default=40, help="timed runs per block")
    args = ap.parse_args()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    print(f"onnxruntime {ort.__version__}, CPU, batch 1, 224x224, 2 threads, no spinning; "
          f"median of {args.rounds} blocks of {args.runs} runs (ms)")
    print(f"{'model':20s} {'variant':28s} {'ms':>8s} {'ratio':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch or ARCHS:
            paths = variants(arch, Path(tmp))
            medians: dict[str, list[float]] = {k: [] for k in paths}
            names = list(paths)
            for r in range(args.rounds):  # each round starts at the next variant: no variant always first
                for name in names[r % len(names):] + names[:r % len(names)]:
                    medians[name].append(block(paths[name][0], x, args.runs, paths[name][1]))
            base = statistics.median(medians["original"])
            for name in paths:
                ms = statistics.median(medians[name])
                print(f"{arch:20s} {name:28s} {ms:8.2f} {ms / base:6.3f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
