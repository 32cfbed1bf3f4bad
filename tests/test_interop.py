"""Every construct onnxfcn emits runs on OpenVINO, tract and onnx.reference (``interop.py``).

Each case is compared with onnxruntime at a size off the stride grid, batch 2. The README's
runtime table is ``interop.py``'s output; the last test checks that it still says what the
runtimes do here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from interop import (
    MARKER_BEGIN,
    RTOL,
    RUNTIMES,
    Result,
    cases,
    compare,
    readme_table,
    run_case,
    runtime_version,
    statuses,
    table,
)

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[1]

# Failures of the runtime, each checked to be what it says.
KNOWN = {
    ("batchnorm", "onnx.reference"):
        "onnx.reference 1.23 runs BatchNormalization-9..13 with batch statistics (its momentum "
        "default is never None); the original model fails the same way",
    **{(case, "onnx.reference"):
       "onnx.reference 1.23 has no DequantizeLinear before opset 19 (onnxruntime's quantizer writes "
       "opset 13), nor com.microsoft ops; the original model fails the same way"
       for case in ("qdq_channel", "qdq_tensor", "qoperator_flatten", "qoperator_gap", "qoperator_gap_dense",
                    "qoperator_matmul")},
    **{(case, "openvino"):
       "OpenVINO 2026.4 rejects the quantizer's per-channel QLinearConv in the trunk, and com.microsoft "
       "ops; the original model fails the same way"
       for case in ("qoperator_flatten", "qoperator_gap", "qoperator_gap_dense", "qoperator_matmul")},
    ("qoperator_gap", "tract"):
        "tract 0.23 has no com.microsoft QLinearAveragePool; the original's QLinearGlobalAveragePool fails too",
    ("qoperator_matmul", "tract"):
        "tract 0.23 has no com.microsoft QLinearAdd or QLinearSoftmax; the original fails the same way",
    ("maxpool_opset8", "tract"):
        "tract 0.23 cannot translate a Slice-1 (opsets < 10) on a symbolic dim",
    # onnxruntime-node and -web 1.31 (the Python package is 1.32)
    **{("opset_newest", rt): "onnxruntime 1.31 knows opsets up to 25; the original (opset 28) fails the same way"
       for rt in ("onnxruntime-node", "onnxruntime-web")},
    # MNN 3.6
    ("hardmax_opset11", "MNN"): "MNN's converter has no Hardmax; the original fails the same way",
    ("batchnorm", "MNN"):
        "MNN folds the BatchNormalization into the 1x1 Conv before it: 4.0e-6 of the range, just over the "
        "64-roundoff rule (3.8e-6) -- rounding, not a misplaced cell; the original's BatchNormalization follows "
        "a Gemm and is not folded",
    **{(case, "MNN"): "MNN's converter rejects the quantizer's QOperator graphs or gets QDQ wrong; the original "
       "fails the same way" for case in ("qdq_channel", "qdq_tensor", "qoperator_flatten", "qoperator_gap",
                                         "qoperator_gap_dense", "qoperator_matmul")},
    **{(case, "MNN"): "MNN's Python Module API takes float32 inputs only; the original fails the same way"
       for case in ("fp16_flatten", "fp16_gap")},
    **{(case, "MNN"): "MNN 3.6 ignores MaxPool's dilations (the output stride dilates the window pool): a larger "
       "grid than onnxruntime's" for case in ("os_gmp", "os_deep")},
    # ncnn 1.0.20261020 through pnnx
    ("hardmax_opset11", "ncnn"): "ncnn has no Hardmax; the original fails the same way",
    ("argmax", "ncnn"): "pnnx writes an ArgMax that ncnn cannot load; the original fails the same way",
    ("topk", "ncnn"): "pnnx rejects the TopK; the original fails the same way",
    ("opset_newest", "ncnn"): "pnnx's onnxruntime 1.30 knows opsets up to 25; the original fails the same way",
    **{(case, "ncnn"): "pnnx does not translate the quantizer's QDQ and QOperator ops to ncnn; the original fails "
       "the same way" for case in ("qdq_channel", "qdq_tensor", "qoperator_flatten", "qoperator_gap",
                                   "qoperator_gap_dense", "qoperator_matmul")},
    **{(case, "ncnn"): "pnnx takes float16 inputs only as float16 and ncnn's Python Mat float32: the original "
       "fails the same way" for case in ("fp16_flatten", "fp16_gap")},
    **{(case, "ncnn"): "ncnn's Pooling has no dilation: pnnx keeps the dilated MaxPool (the output stride's "
       "window pool) as an op ncnn does not have" for case in ("os_gmp", "os_deep")},
    # LiteRT 2.1 through onnx2tf 1.29
    **{(case, "LiteRT"): "onnx2tf converts the quantizer's QDQ and QOperator graphs to wrong values or fails; the "
       "original fails the same way" for case in ("qdq_channel", "qdq_tensor", "qoperator_flatten", "qoperator_gap",
                                                  "qoperator_gap_dense", "qoperator_matmul")},
    **{(case, "LiteRT"): "the float32 .tflite takes float32 inputs; the original fails the same way"
       for case in ("fp16_flatten", "fp16_gap")},
}
# Failures of the converted model alone (the original runs there): each is a limitation of that
# runtime on what the conversion emits, named in the README's table.
CONVERSION_ONLY = {("maxpool_opset8", "tract"), ("batchnorm", "MNN"), ("os_gmp", "MNN"), ("os_deep", "MNN"),
                   ("os_gmp", "ncnn"), ("os_deep", "ncnn")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("interop")


PAIRS = [(c, rt) for c in cases() for rt in RUNTIMES]
RESULTS: dict[tuple[str, str], Result] = {}  # each pair's result, for the table test (not run twice)


@pytest.mark.parametrize(("case", "runtime"), PAIRS, ids=[f"{c}-{rt}" for c, rt in PAIRS])
def test_construct_runs_on_runtime(case: str, runtime: str, folder: Path) -> None:
    if runtime_version(runtime) is None:
        pytest.skip(f"{runtime} is not installed (pip install -e '.[test]')")
    result = run_case(cases()[case], runtime, folder)
    RESULTS[(case, runtime)] = result
    if (case, runtime) in KNOWN:
        assert not result.passed, f"{runtime} now runs {case}: update KNOWN and the README table"
        assert result.original_fails == ((case, runtime) not in CONVERSION_ONLY), result
        pytest.xfail(KNOWN[(case, runtime)])
    assert result.passed, result.cell()
    assert result.max_rel is not None and result.max_rel <= result.tolerance  # type: ignore[operator]


def test_comparison_catches_what_it_should() -> None:
    """Controls: the comparison used above fails on a one-cell shift, a dropped bias, a changed
    integer, a wrong shape and a missing output, and passes within a few roundoffs."""
    rng = np.random.default_rng(0)
    want = {"scores": (rng.standard_normal((2, 5, 3, 4)) * 3).astype(np.float32)}
    ok, *_ = compare({"scores": want["scores"] * (1 + 4 * 2.0**-24)}, want)
    assert ok
    shifted = np.roll(want["scores"], 1, axis=3)
    assert not compare({"scores": shifted}, want)[0]
    no_bias = want["scores"] - 0.5
    assert not compare({"scores": no_bias}, want)[0]
    assert not compare({"scores": want["scores"][:, :, :2]}, want)[0]
    assert not compare({"other": want["scores"]}, want)[0]
    idx = {"top": np.arange(24, dtype=np.int64).reshape(2, 3, 4)}
    changed = {"top": idx["top"].copy()}
    changed["top"][1, 2, 3] += 1
    assert not compare(changed, idx)[0]
    assert RTOL[np.dtype(np.float32)] < 1e-5


def test_readme_table_is_the_generated_one(folder: Path) -> None:
    if any(runtime_version(rt) is None for rt in RUNTIMES):
        pytest.skip("every runtime must be installed to regenerate the table")
    # The pairs' results from the tests above; any pair not run there (-k) is run now.
    results: list[Result] = []
    for case in cases().values():
        for rt in RUNTIMES:
            if rt == "onnx.reference" and not case.small:
                continue
            results.append(RESULTS.get((case.name, rt)) or run_case(case, rt, folder))
    readme = (ROOT / "README.md").read_text()
    assert MARKER_BEGIN in readme
    assert statuses(readme_table(readme)) == statuses(table(results)), (
        "the README's runtime table is out of date; paste the output of `python tests/interop.py`")
    header = readme_table(readme).splitlines()[0]
    for rt in RUNTIMES:
        assert f"{rt} {runtime_version(rt)}" in header
