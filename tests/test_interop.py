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
    run_all,
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
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("interop")


PAIRS = [(c, rt) for c in cases() for rt in RUNTIMES]


@pytest.mark.parametrize(("case", "runtime"), PAIRS, ids=[f"{c}-{rt}" for c, rt in PAIRS])
def test_construct_runs_on_runtime(case: str, runtime: str, folder: Path) -> None:
    if runtime_version(runtime) is None:
        pytest.skip(f"{runtime} is not installed (pip install -e '.[test]')")
    result = run_case(cases()[case], runtime, folder)
    if (case, runtime) in KNOWN:
        assert not result.passed, f"{runtime} now runs {case}: update KNOWN and the README table"
        if case != "maxpool_opset8":
            assert result.original_fails, result
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


def test_readme_table_is_the_generated_one(tmp_path: Path) -> None:
    if any(runtime_version(rt) is None for rt in RUNTIMES):
        pytest.skip("every runtime must be installed to regenerate the table")
    results: list[Result] = run_all(tmp_path)
    readme = (ROOT / "README.md").read_text()
    assert MARKER_BEGIN in readme
    assert statuses(readme_table(readme)) == statuses(table(results)), (
        "the README's runtime table is out of date; paste the output of `python tests/interop.py`")
    header = readme_table(readme).splitlines()[0]
    for rt in RUNTIMES:
        assert f"{rt} {runtime_version(rt)}" in header
