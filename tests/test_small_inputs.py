"""No input size crashes the host: below the minimum size a converted model fails cleanly.

onnxruntime's NCHWc pooling kernel divides by zero (SIGFPE, the process dies) when a pool's output
size is exactly 0. The converted window pool therefore never has an empty output (the rewrite pads
it and slices the partial windows away). Each size runs in a subprocess, so a crash fails the test
instead of killing pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
from builders import Builder, gemm

import onnxfcn

# Runs a model at each size given; prints one JSON line per size: its output shape or its error.
RUNNER = textwrap.dedent("""
    import json, sys
    import numpy as np, onnxruntime as ort
    opts = ort.SessionOptions(); opts.log_severity_level = 4
    sess = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
    for n in json.loads(sys.argv[2]):
        x = np.ones((2, 3, n, n), np.float32)
        try:
            print(json.dumps({"size": n, "shape": list(sess.run(None, {"image": x})[0].shape)}), flush=True)
        except Exception as exc:
            print(json.dumps({"size": n, "error": str(exc).splitlines()[0][:200]}), flush=True)
""")


def nchwc_classifier(channels: int = 16, pool: str = "GlobalAveragePool") -> onnx.ModelProto:
    """Two strided, padded 3x3 convolutions (16 channels: onnxruntime lays them out NCHWc), a
    global pool and a dense layer; reference size 32, stride 4, an 8x8 feature map."""
    b = Builder(13)
    y = b.node("Conv", ["image", b.weight("w", (channels, 3, 3, 3)), b.weight("b", (channels,), 0.1)],
               kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    y = b.node("Conv", [b.node("Relu", [y]), b.weight("w", (channels, channels, 3, 3)), b.weight("b", (channels,), 0.1)],
               kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    y = b.node(pool, [b.node("Relu", [y])])
    y = gemm(b, b.node("Flatten", [y], axis=1), channels, 5)
    return b.model([1, 3, 32, 32], [y], out_names=["logits"])


def run_sizes(path: Path, sizes: list[int]) -> tuple[int, list[dict[str, object]]]:
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(path), json.dumps(sizes)], capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("pool", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("mode", ["window", "dense"])
def test_every_size_below_the_minimum_fails_cleanly(mode: str, pool: str, tmp_path: Path) -> None:
    converted, report = onnxfcn.convert(nchwc_classifier(pool=pool), mode=mode)
    path = tmp_path / "fcn.onnx"
    onnx.save(converted, path)
    geo = report.geometry
    low = geo.min_size()[0]
    sizes = list(range(1, low + 2 * geo.stride[0] + 1))
    rc, results = run_sizes(path, sizes)
    assert rc == 0, f"the process died (rc {rc}) after sizes {[r['size'] for r in results]}"
    assert [r["size"] for r in results] == sizes
    for r in results:
        n = int(r["size"])  # type: ignore[call-overload]
        cells = geo.grid(n, n)
        if n >= low:
            assert r.get("shape") == [2, 5, cells[0], cells[1]], r
        else:
            # no cell fits: an empty map or a clean runtime error, never a crash
            assert "error" in r or 0 in r["shape"], r  # type: ignore[operator]


def test_the_old_emission_did_crash(tmp_path: Path) -> None:
    """Control: the same head with a plain stride-1 AveragePool (what onnxfcn emitted before the
    window mean became a depthwise Conv) dies on this machine at the sizes where the pool's output
    is exactly 0. Skipped where onnxruntime does not take the NCHWc path (no AVX2)."""
    converted, _ = onnxfcn.convert(nchwc_classifier(), self_check=False)
    mean = next(n for n in converted.graph.node if n.op_type == "Conv" and n.name.startswith("window_mean"))
    mean.op_type = "AveragePool"
    del mean.input[1:]
    for a in list(mean.attribute):
        if a.name == "group":
            mean.attribute.remove(a)
    path = tmp_path / "old.onnx"
    onnx.save(converted, path)
    rc, _ = run_sizes(path, [25])  # an 7x7 map under an 8x8 window: output size 0
    if rc == 0:
        pytest.skip("onnxruntime did not take its NCHWc pooling path here")
    assert rc in (-8, 136), rc  # SIGFPE


@pytest.mark.parametrize("padded_pool", [True, False])
def test_quantized_window_pool_never_crashes(padded_pool: bool, tmp_path: Path) -> None:
    """The QOperator global pool becomes a com.microsoft QLinearAveragePool window, whose kernel also
    dies (SIGFPE) at output size 0; emitted padded and sliced, every size fails cleanly or runs.
    Control (padded_pool=False): the plain pool kills the process one cell below the window."""
    pytest.importorskip("onnxruntime.quantization")
    from quantize import quantize_qdq

    original = quantize_qdq(nchwc_classifier(), "NCHW", True, "QOperator")
    converted, report = onnxfcn.convert(original, self_check=padded_pool)
    if not padded_pool:
        pool = next(n for n in converted.graph.node if n.op_type == "QLinearAveragePool")
        cut = next(n for n in converted.graph.node if n.op_type == "Slice" and n.input[0] == pool.output[0])
        for a in pool.attribute:
            if a.name == "pads":
                a.ints[:] = [0, 0, 0, 0]
        pool.output[0] = cut.output[0]
        converted.graph.node.remove(cut)
    path = tmp_path / "fcn.onnx"
    onnx.save(converted, path)
    low = report.geometry.min_size()[0]
    rc, results = run_sizes(path, list(range(1, low + 2 * report.geometry.stride[0] + 1)))
    if not padded_pool:
        if rc == 0:
            pytest.skip("onnxruntime's QLinearAveragePool did not divide by zero here")
        assert rc in (-8, 136), rc
        return
    assert rc == 0, f"the process died (rc {rc}) after sizes {[r['size'] for r in results]}"
    for r in results:
        n = int(r["size"])  # type: ignore[call-overload]
        assert ("shape" in r) == (n >= low), r
