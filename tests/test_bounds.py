"""The rounding bound: onnxruntime's own float output of every head pattern lies within it, it is
tight enough to catch small real errors, and it follows the arithmetic (gamma_n, sqrt(n) u)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from builders import Builder
from onnx import numpy_helper
from patterns import PATTERNS

import onnxfcn
from onnxfcn.bounds import LAMBDA, Bounded, HeadEvaluator, gamma, unit_roundoff
from onnxfcn.head import analyze, find_image_input
from onnxfcn.verify import compare_bounded
from onnxfcn.verify.subject import make_evaluator


def test_gamma_is_highams_bound() -> None:
    u = unit_roundoff(np.float32)
    assert u == 2.0**-24
    assert gamma(1000, u) == pytest.approx(1000 * u / (1 - 1000 * u))
    assert gamma(2**25, u) == math.inf  # n u >= 1: no bound
    assert unit_roundoff(np.float16) == 2.0**-11


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_original_within_bound_of_its_exact_head(pattern: str) -> None:
    """onnxruntime's float32 run of the original lies within the bound of the float64 evaluation
    (checks every op rule's semantics), and the converted model does too."""
    original = PATTERNS[pattern]()
    converted, report = onnxfcn.convert(original)
    ref = report.self_check[0]
    assert ref["comparison"] == "rounding bound", pattern
    for out in ref["outputs"]:
        assert out["ratio"] <= 1 and out["original_ratio"] <= 1, out


def wide_head(k: int = 1000, c: int = 2048, logit_std: float = 3.0, seed: int = 0) -> onnx.ModelProto:
    """A ResNet-like head at realistic scale: a 2048-channel 7x7 map of unit-variance ReLU features,
    global average pool, 2048 -> 1000 dense layer with logits of standard deviation ``logit_std``."""
    rng = np.random.default_rng(seed)
    b = Builder(17, seed)
    w1 = (rng.standard_normal((c, 3, 3, 3)) * math.sqrt(2 / 27)).astype(np.float32)
    y = b.node("Conv", ["image", b.const("w1", w1), b.const("b1", np.zeros(c, np.float32))], kernel_shape=[3, 3],
               pads=[1, 1, 1, 1], strides=[2, 2])
    y = b.node("GlobalAveragePool", [b.node("Relu", [y])])
    w2 = rng.standard_normal((k, c)).astype(np.float32)
    x = rng.standard_normal((16, 3, 14, 14)).astype(np.float32)
    # scale the dense layer so that the logits of random images have the standard deviation asked for
    feats = np.maximum(np.einsum("oc,ncij->noij", w1.reshape(c, -1),
                                 np.stack([x[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].reshape(16, -1)
                                           for i in range(6) for j in range(6)], -1).reshape(16, 27, 6, 6)), 0)
    w2 *= logit_std / float((feats.mean(axis=(2, 3)) @ w2.T).std())
    y = b.node("Gemm", [b.node("Flatten", [y], axis=1), b.const("w2", w2),
                        b.const("b2", (rng.standard_normal(k) * 0.1).astype(np.float32))], transB=1)
    return b.model([1, 3, 14, 14], [y], out_names=["logits"])


def test_wide_realistic_head_passes_with_a_tight_bound() -> None:
    original = wide_head()
    converted, report = onnxfcn.convert(original)
    out = report.self_check[0]["outputs"][0]
    result = onnxfcn.verify(original, converted, positions=4)
    assert result, result.reason
    ref = next(c for c in result.checks if c.name == "reference").outputs[0]
    assert ref.ref_max > 5  # realistic logits
    # tight: the bound is a small fraction of the logits, and the real error a small fraction of it
    assert out["bound"] < 1e-3 * ref.ref_max
    assert out["ratio"] < 0.1


def _bias_off(converted: onnx.ModelProto, delta: float) -> None:
    bias = next(t for t in converted.graph.initializer if t.name.startswith("b2"))
    value = numpy_helper.to_array(bias).copy()
    value[7] += delta
    bias.CopyFrom(numpy_helper.from_array(value, bias.name))


def test_an_error_beyond_the_bound_fails_one_within_is_flagged() -> None:
    """One class's bias off by 3x the bound (7e-4 of the logits) fails. Off by a tenth of the bound
    it is within what rounding in some summation order could do, so it passes, but the note says
    that the converted output is far further from the exact head than the original's."""
    original = wide_head()
    converted, report = onnxfcn.convert(original)
    bound = report.self_check[0]["outputs"][0]["bound"]
    wrong = onnx.ModelProto()
    wrong.CopyFrom(converted)
    _bias_off(wrong, 3 * bound)
    result = onnxfcn.verify(original, wrong, positions=4)
    assert not result and "reference check failed" in result.reason
    _bias_off(converted, 0.1 * bound)
    result = onnxfcn.verify(original, converted, positions=4)
    assert result
    ref = next(c for c in result.checks if c.name == "reference").outputs[0]
    assert "further from the exact head than the original" in ref.note


def test_compare_bounded_fails_beyond_the_bound() -> None:
    exact = Bounded.exact(np.array([[1.0, -2.0, 3.0]]), np.array([[1e-3, 1e-3, 1e-3]]))
    assert compare_bounded("y", np.array([[1.0009, -2.0, 3.0]]), exact, None).passed
    cmp = compare_bounded("y", np.array([[1.0011, -2.0, 3.0]]), exact, None)
    assert not cmp.passed and cmp.ratio == pytest.approx(1.1, rel=1e-6)
    # the original's own output is judged too: a converted model cannot pass on a lucky reference
    assert not compare_bounded("y", np.array([[1.0, -2.0, 3.0]]), exact, np.array([[1.0, -2.1, 3.0]])).passed


def test_bound_is_lambda_times_scale_or_worst_case() -> None:
    b = Bounded(np.zeros(2), np.array([1.0, 1e-9]), np.array([1e-3, 1.0]))
    np.testing.assert_allclose(b.err, [LAMBDA * 1e-3, 1e-9])


def test_head_op_without_rule_falls_back_and_says_so() -> None:
    b = Builder(13)
    y = b.node("GlobalAveragePool", ["image"])
    y = b.node("LpNormalization", [b.node("Flatten", [y], axis=1)], axis=1)
    model = b.model([1, 3, 8, 8], [y])
    analysis = analyze(model, find_image_input(model))
    evaluator, why = make_evaluator(analysis)
    assert evaluator is None and "LpNormalization" in why


def test_softmax_bound_from_logit_errors() -> None:
    """|dp| <= p (exp(2e) - 1) for logit errors e: a perturbation within e stays within the bound."""
    b = Builder(13)
    y = b.node("Softmax", [b.node("Flatten", [b.node("GlobalAveragePool", ["image"])], axis=1)], axis=1)
    model = b.model([1, 5, 4, 4], [y])
    analysis = analyze(model, find_image_input(model))
    nodes = analysis.heads[0].nodes
    ev = HeadEvaluator(analysis.index, nodes, 1, np.float32)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4, 4)) * 3
    e = 0.01
    out = ev.run({"image": x}, analysis.heads[0].outputs, {"image": np.full(x.shape, e)})[analysis.heads[0].outputs[0]]
    for _ in range(20):
        pert = x + rng.uniform(-e, e, x.shape)
        z = pert.mean(axis=(2, 3))
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        assert np.all(np.abs(p - out.value) <= out.det)


@pytest.mark.parametrize("pattern", ["flatten", "vgg_chain", "nhwc_keras", "weight_transpose", "einsum_nc_ck_no_bias",
                                     "gemm_transB0"])
def test_weights_read_at_run_time(pattern: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large head weights are read when a run needs them, not copied in advance: with every
    weight read so (threshold 0), the self-check still holds after the rewrite, including for
    weights the rewrite drops or transposes into new Conv weights, and verify passes."""
    from onnxfcn import bounds
    from onnxfcn.plan import plan_conversion
    from onnxfcn.verify.subject import make_evaluator

    monkeypatch.setattr(bounds.evaluator, "_LAZY_BYTES", 0)
    original = PATTERNS[pattern]()
    evaluator, _ = make_evaluator(plan_conversion(original).analysis)
    assert evaluator is not None and evaluator._lazy  # the path under test is taken
    converted, report = onnxfcn.convert(original)
    assert all(o["ratio"] <= 1 for o in report.self_check[0]["outputs"])
    result = onnxfcn.verify(original, converted, positions="all")
    assert result, result.reason


def test_weights_read_at_run_time_are_not_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact head reads a reused weight from the rewritten graph: a rewrite that changed its
    data in place (a bug) must still fail the self-check, because the original's own outputs,
    run by onnxruntime from the untouched input, are held to the same bound."""
    from onnxfcn import bounds, pipeline
    from onnxfcn.errors import SelfCheckError

    monkeypatch.setattr(bounds.evaluator, "_LAZY_BYTES", 0)
    real_apply = pipeline.apply_plan
    touched: list[str] = []

    def corrupting_apply(model: onnx.ModelProto, plan: object, *args: object, **kw: object) -> None:
        real_apply(model, plan, *args, **kw)  # type: ignore[arg-type]
        name = plan.retarget[0][0]  # type: ignore[attr-defined]
        t = next(t for t in model.graph.initializer if t.name == name)
        w = numpy_helper.to_array(t).copy()
        w[0] += 0.5  # class 0's weights, each by about 8x their spread
        t.CopyFrom(numpy_helper.from_array(w, name))
        touched.append(name)

    monkeypatch.setattr(pipeline, "apply_plan", corrupting_apply)
    with pytest.raises(SelfCheckError, match="differs from the original"):
        onnxfcn.convert(PATTERNS["flatten"]())
    assert touched  # the reused weight was the one changed


@pytest.mark.parametrize("scale", [1.0, 1e-40, 1e18])
def test_float32_magnitude_bounds_the_exact_sum(scale: float) -> None:
    """sum |x_i w_i| taken in float32 and raised by its rounding bound is never below the exact
    sum (float64 products of float32 values are exact; the float64 sum is within 1e-12), and
    never more than its gamma_n above it, also where the values underflow float32's normal range.
    (Strictly above: the float64 path would return the exact sum itself.)"""
    from onnxfcn.bounds.dense import _U32, _magnitude, _up_to_f32

    rng = np.random.default_rng(7)
    n, k = 25088, 64
    w = (rng.standard_normal((n, k)) * rng.exponential(1.0, (n, 1))).astype(np.float32)
    x = np.abs(rng.standard_normal((3, n))) * scale  # float64 values, not float32-exact
    exact = x @ np.abs(w.astype(np.float64))
    got = _magnitude(x, _up_to_f32(x), w, w.astype(np.float64))
    assert np.all(got >= exact * (1 + 1e-12))
    g = gamma(n + 1, _U32)
    assert np.all(got <= exact * (1 + 4 * g) + 4 * n * 2.0**-149)


def test_float32_magnitude_falls_back_where_float32_overflows() -> None:
    from onnxfcn.bounds.dense import _magnitude, _up_to_f32

    x = np.full((1, 4), 1e30)
    w = np.full((4, 2), 1e20, np.float32)  # products 1e50: beyond float32
    exact = x @ np.abs(w.astype(np.float64))
    np.testing.assert_array_equal(_magnitude(x, _up_to_f32(x), w, w.astype(np.float64)), exact)
