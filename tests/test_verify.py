"""verify: passes on correct conversions, and catches every deliberately broken one with exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from broken import BROKEN
from builders import Builder, flatten_gemm, gap_softmax, gemm, image_shape, trunk
from helpers import nth_node
from typer.testing import CliRunner

import onnxfcn
from onnxfcn.cli import app
from onnxfcn.runtime import cuda_available
from onnxfcn.verify.sliding import sample_positions

runner = CliRunner()




def _save(tmp_path: Path, model: onnx.ModelProto, name: str) -> Path:
    p = tmp_path / name
    onnx.save(model, p)
    return p
























@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_conversion_is_caught(kind: str, tmp_path: Path) -> None:
    original, broken = BROKEN[kind]()
    onnx.checker.check_model(broken)  # each is a valid model that computes the wrong thing
    report = onnxfcn.verify(original, broken)
    assert not report, f"{kind} passed verify"
    assert not report.passed
    result = runner.invoke(app, ["verify", str(_save(tmp_path, original, "o.onnx")), str(_save(tmp_path, broken, "b.onnx"))])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith("FAILED")


def test_broken_catalogue_all_caught() -> None:
    caught = sum(not onnxfcn.verify(*make()) for make in BROKEN.values())
    assert caught == len(BROKEN) == 5


# ---- converted models that lie: verify trusts nothing in them ------------------------------------
def two_outputs() -> onnx.ModelProto:
    """logits and probs, so that outputs can go missing, be renamed or be swapped."""
    b = Builder(13)
    y = gemm(b, b.node("Flatten", [trunk(b)], axis=1), 8 * 6 * 6, 5)
    return b.model(image_shape(), [y, b.node("Softmax", [y], axis=1)], out_names=["logits", "probs"])


def _output_names(model: onnx.ModelProto, mapping: dict[str, str]) -> None:
    """Rename graph outputs (and the tensors behind them) by ``mapping``; swaps allowed."""
    tmp = {old: f"__tmp_{old}" for old in mapping}
    for step in (tmp, {f"__tmp_{old}": new for old, new in mapping.items()}):
        for n in model.graph.node:
            n.output[:] = [step.get(o, o) for o in n.output]
            n.input[:] = [step.get(i, i) for i in n.input]
        for o in model.graph.output:
            o.name = step.get(o.name, o.name)


def _meta(model: onnx.ModelProto, key: str, value: str) -> None:
    for p in model.metadata_props:
        if p.key == f"onnxfcn.{key}":
            p.value = value


def lie_missing_output(conv: onnx.ModelProto) -> None:
    conv.graph.output.remove(next(o for o in conv.graph.output if o.name == "probs"))


def lie_renamed_output(conv: onnx.ModelProto) -> None:
    _output_names(conv, {"probs": "probabilities"})


def lie_swapped_outputs(conv: onnx.ModelProto) -> None:
    _output_names(conv, {"probs": "logits", "logits": "probs"})


def lie_feature_producer_deleted(conv: onnx.ModelProto) -> None:
    feature = next(p.value for p in conv.metadata_props if p.key == "onnxfcn.features")
    conv.graph.node.remove(next(n for n in conv.graph.node if feature in n.output))


def lie_feature_name_dangling(conv: onnx.ModelProto) -> None:
    _meta(conv, "features", "no_such_tensor")


def lie_window_metadata(conv: onnx.ModelProto) -> None:
    _meta(conv, "stride", "4,4")


def lie_feature_is_another_tensor(conv: onnx.ModelProto) -> None:
    """The metadata points the feature check at the first convolution's output, not the map."""
    _meta(conv, "features", nth_node(conv, "Conv", 0).output[0])


def lie_receptive_field(conv: onnx.ModelProto) -> None:
    """scan's tiles overlap by this: a smaller field would stitch tiles that differ from one pass."""
    _meta(conv, "receptive_field", "10,10")


def lie_receptive_field_start(conv: onnx.ModelProto) -> None:
    _meta(conv, "receptive_field_start", "3,3")


def lie_sizes(conv: onnx.ModelProto) -> None:
    _meta(conv, "sizes", "2k+0")


def lie_global_context(conv: onnx.ModelProto) -> None:
    _meta(conv, "global_context", "true")


def lie_input_layout(conv: onnx.ModelProto) -> None:
    _meta(conv, "input_layout", "NHWC")


LIES = {f.__name__[len("lie_"):]: f for f in (
    lie_missing_output, lie_renamed_output, lie_swapped_outputs, lie_feature_producer_deleted,
    lie_feature_name_dangling, lie_window_metadata, lie_feature_is_another_tensor, lie_receptive_field,
    lie_receptive_field_start, lie_sizes, lie_global_context, lie_input_layout)}
# The metadata lies are named in one line, exit 2 (a file that misstates its geometry).
METADATA_LIES = {"receptive_field": "receptive_field is 10,10", "receptive_field_start": "receptive_field_start is 3,3",
                 "sizes": "sizes is '2k+0'", "global_context": "global_context is 'true'",
                 "input_layout": "input_layout is 'NHWC'"}


@pytest.mark.parametrize("kind", sorted(LIES))
def test_lying_conversion_fails(kind: str, tmp_path: Path) -> None:
    original = two_outputs()
    conv, _ = onnxfcn.convert(original)
    LIES[kind](conv)
    o, c = _save(tmp_path, original, "o.onnx"), _save(tmp_path, conv, "c.onnx")
    res = runner.invoke(app, ["verify", str(o), str(c)])
    assert res.exit_code in (1, 2), res.output
    assert "error:" in res.output or res.output.strip().splitlines()[-1].startswith("FAILED"), res.output
    if kind in METADATA_LIES:
        assert res.exit_code == 2 and METADATA_LIES[kind] in res.output, res.output


def test_outputs_are_matched_by_name_not_position(tmp_path: Path) -> None:
    """Reordering the graph's output list changes nothing a pipeline sees: verify passes."""
    original = two_outputs()
    conv, _ = onnxfcn.convert(original)
    outs = list(conv.graph.output)
    del conv.graph.output[:]
    conv.graph.output.extend(reversed(outs))
    assert onnxfcn.verify(original, conv)


def test_dense_mode_says_skipped_not_ok(tmp_path: Path) -> None:
    original = gap_softmax(padded=True)
    converted, _ = onnxfcn.convert(original, mode="dense")
    o, c = _save(tmp_path, original, "o.onnx"), _save(tmp_path, converted, "c.onnx")
    res = runner.invoke(app, ["verify", str(o), str(c)])
    assert res.exit_code == 0, res.output
    assert "[reference] skipped: not applicable in dense mode" in res.output
    assert "[sliding] skipped: not applicable in dense mode" in res.output
    assert "[feature] exact" in res.output


def test_out_of_memory_is_a_resource_error_not_a_mismatch(tmp_path: Path) -> None:
    """A size whose input alone cannot be allocated: exit 2 and 'out of memory', never FAILED."""
    original = flatten_gemm()
    converted, _ = onnxfcn.convert(original)
    o, c = _save(tmp_path, original, "o.onnx"), _save(tmp_path, converted, "c.onnx")
    # --max-memory lifts the up-front estimate, so the allocation itself is tried and fails
    res = runner.invoke(app, ["verify", str(o), str(c), "--size", "3000000x3000000", "--max-memory", "100000T"])
    assert res.exit_code == 2, res.output
    assert "out of memory at 3000000x3000000" in res.output and "FAILED" not in res.output
    res = runner.invoke(app, ["verify", str(o), str(c), "--size", "3000000x3000000"])
    assert res.exit_code == 2 and "needs about" in res.output  # without it, refused before anything runs


# ---- correct conversions ------------------------------------------------------------------------
@pytest.mark.parametrize("padded", [False, True])
def test_verify_passes_and_says_exact_or_approximate(padded: bool) -> None:
    original = flatten_gemm(padded=padded)
    converted, report = onnxfcn.convert(original)
    result = onnxfcn.verify(original, converted, positions="all")
    assert result, result.reason
    names = [c.name for c in result.checks]
    assert names == ["reference", "sliding", "feature"]
    sliding = result.checks[1]
    assert sliding.exact is (not padded) is report.geometry.exact
    feature = result.checks[2]
    assert feature.exact and feature.passed
    assert feature.outputs[0].needed_rtol < 1e-5
    if padded:
        # Zero padding: crops see zeros at their borders, so cells differ from crops measurably.
        assert sliding.outputs[0].needed_rtol > 1e-4
        assert "approximate" in sliding.note
    else:
        assert sliding.outputs[0].needed_rtol < 1e-5
    emap = sliding.outputs[0].error_map
    assert emap is not None and len(emap) == 3 and len(emap[0]) == 4


def test_strict_fails_an_approximate_model(tmp_path: Path) -> None:
    original = flatten_gemm(padded=True)
    converted, _ = onnxfcn.convert(original)
    o, c = _save(tmp_path, original, "o.onnx"), _save(tmp_path, converted, "c.onnx")
    assert runner.invoke(app, ["verify", str(o), str(c)]).exit_code == 0
    strict = runner.invoke(app, ["verify", str(o), str(c), "--strict"])
    assert strict.exit_code == 1
    assert "FAILED: sliding check failed" in strict.output


def test_tolerances_can_fail(tmp_path: Path) -> None:
    """A tolerance far below float32 rounding must fail even a correct conversion."""
    original = flatten_gemm()
    converted, _ = onnxfcn.convert(original)
    assert onnxfcn.verify(original, converted)
    assert not onnxfcn.verify(original, converted, rtol=1e-12, atol=0.0)


def test_dense_mode_feature_check(tmp_path: Path) -> None:
    original = gap_softmax(padded=True)
    converted, _ = onnxfcn.convert(original, mode="dense")
    result = onnxfcn.verify(original, converted)
    assert result, result.reason
    feature = next(c for c in result.checks if c.name == "feature")
    assert feature.exact and feature.outputs[0].needed_rtol < 1e-5


def test_sizes_batch_and_npy_input(tmp_path: Path) -> None:
    original = flatten_gemm()
    converted, _ = onnxfcn.convert(original)
    result = onnxfcn.verify(original, converted, sizes=[(22, 24), (25, 21)], batch=3)
    assert result
    assert {tuple(c.details["size"]) for c in result.checks if c.name == "sliding"} == {(22, 24), (25, 21)}
    npy = tmp_path / "x.npy"
    np.save(npy, np.random.default_rng(0).standard_normal((2, 3, 26, 30)).astype(np.float32))
    o, c = _save(tmp_path, original, "o.onnx"), _save(tmp_path, converted, "c.onnx")
    res = runner.invoke(app, ["verify", str(o), str(c), "--npy", str(npy), "--positions", "all"])
    assert res.exit_code == 0, res.output
    assert "at 26x30, 35 of 5x7 cells" in res.output  # (26-18)/2+1 = 5, (30-18)/2+1 = 7


def test_json_report_schema(tmp_path: Path) -> None:
    original = flatten_gemm()
    converted, _ = onnxfcn.convert(original)
    o, c = _save(tmp_path, original, "o.onnx"), _save(tmp_path, converted, "c.onnx")
    out = tmp_path / "report.json"
    res = runner.invoke(app, ["verify", str(o), str(c), "--json", str(out), "-q"])
    assert res.exit_code == 0
    data = json.loads(out.read_text())
    assert set(data) == {"passed", "reason", "exact", "providers", "seconds", "checks"}
    assert data["passed"] is True and data["providers"] == ["cpu"]
    check = data["checks"][1]
    assert set(check) == {"name", "passed", "skipped", "exact", "note", "details", "outputs"}
    assert {"max_abs", "mean_abs", "max_rel", "mean_rel", "needed_rtol", "top1", "error_map",
            "interior_max_abs", "border_max_abs"} <= set(check["outputs"][0])


def test_positions_sampling_covers_corners_and_centre() -> None:
    cells = sample_positions(6, 6, 9, seed=0)
    assert {(0, 0), (0, 5), (5, 0), (5, 5), (3, 3)} <= set(cells)
    assert len(cells) == 9
    assert len(sample_positions(6, 6, "all", 0)) == 36


def test_bad_inputs_exit_2(tmp_path: Path) -> None:
    original = flatten_gemm()
    converted, _ = onnxfcn.convert(original)
    o, c = _save(tmp_path, original, "o.onnx"), _save(tmp_path, converted, "c.onnx")
    res = runner.invoke(app, ["verify", str(o), str(o)])
    assert res.exit_code == 2 and "no onnxfcn metadata" in res.output
    res = runner.invoke(app, ["verify", str(o), str(c), "--size", "10x10"])
    assert res.exit_code == 2 and "smaller than the reference window" in res.output
    res = runner.invoke(app, ["verify", str(o), str(c), "--positions", "many"])
    assert res.exit_code == 2


@pytest.mark.skipif(cuda_available(), reason="CUDA is present")
def test_cuda_requested_but_missing_is_one_line_exit_2(tmp_path: Path) -> None:
    original = flatten_gemm()
    converted, _ = onnxfcn.convert(original)
    o, c = _save(tmp_path, original, "o.onnx"), _save(tmp_path, converted, "c.onnx")
    res = runner.invoke(app, ["verify", str(o), str(c), "--provider", "cuda"])
    assert res.exit_code == 2
    assert len(res.output.strip().splitlines()) == 1 and "CUDA" in res.output


@pytest.mark.skipif(not cuda_available(), reason="needs onnxruntime-gpu and a GPU")
def test_cuda_provider_verifies_and_compares_with_cpu() -> None:
    original = gap_softmax(padded=True)
    converted, _ = onnxfcn.convert(original)
    result = onnxfcn.verify(original, converted, provider="auto")
    assert result, result.reason
    assert result.providers == ["cpu", "cuda"]
    assert any(c.name.startswith("providers") and c.passed for c in result.checks)


def test_image_input_with_preprocessing(tmp_path: Path) -> None:
    """An image file plus --scale/--mean/--std, on the shipped digits model (1 channel)."""
    from helpers import ROOT
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits().images[:6]  # six 8x8 digits side by side in two rows: 16 x 24
    strip = np.vstack([np.hstack(list(digits[:3])), np.hstack(list(digits[3:]))]) * (255.0 / 16.0)
    img = tmp_path / "digits.png"
    Image.fromarray(strip.astype(np.uint8), mode="L").save(img)
    model = ROOT / "models" / "digits_cnn.onnx"
    out = tmp_path / "fcn.onnx"
    assert runner.invoke(app, ["convert", str(model), "-o", str(out), "-q"]).exit_code == 0
    res = runner.invoke(app, ["verify", str(model), str(out), "--image", str(img), "--scale", str(1 / 255),
                              "--mean", "0", "--std", "1", "--positions", "all", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "r.json").read_text())
    sliding = next(c for c in data["checks"] if c["name"] == "sliding")
    assert sliding["details"]["size"] == [16, 24] and sliding["details"]["grid"] == [5, 9]


@pytest.mark.parametrize("build", ["nhwc_keras", "nhwc_keras_gap"])
def test_verify_nhwc_models(build: str) -> None:
    """TF/Keras layout: crops are cut in NHWC, the feature map is read before the exporter's Transpose."""
    import patterns

    original = getattr(patterns, build)()
    converted, report = onnxfcn.convert(original)
    result = onnxfcn.verify(original, converted, positions="all")
    assert result, result.reason
    assert report.geometry.exact and all(c.exact for c in result.checks)


def test_reference_check_is_retried_with_the_dims_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the reference check fails with H and W free (onnxruntime picking other trunk kernels
    than the original's), verify runs it once more on a session pinned to the reference size,
    and says so; a check that fails there too fails."""
    import importlib

    v = importlib.import_module("onnxfcn.verify.driver")  # where verify calls it
    model = flatten_gemm()
    converted, _ = onnxfcn.convert(model)
    orig_path, conv_path = _save(tmp_path, model, "m.onnx"), _save(tmp_path, converted, "m.fcn.onnx")
    real = v.reference_check
    shapes: list[list[object]] = []

    def unpinned_fails(subject, want, sess, x, rtol, atol):
        shapes.append(sess.get_inputs()[0].shape)
        check = real(subject, want, sess, x, rtol, atol)
        if len(shapes) == 1:  # the kernels differ with H and W free
            check.passed = False
        return check

    monkeypatch.setattr(v, "reference_check", unpinned_fails)
    report = onnxfcn.verify(orig_path, conv_path)
    assert report, report.reason
    assert shapes == [["batch", 3, "height", "width"], [1, 3, 18, 18]]  # then pinned: batch and size fixed
    assert report.checks[0].details["dims"] == "pinned to the reference size"

    def always_fails(subject, want, sess, x, rtol, atol):
        check = real(subject, want, sess, x, rtol, atol)
        check.passed = False
        return check

    monkeypatch.setattr(v, "reference_check", always_fails)
    assert not onnxfcn.verify(orig_path, conv_path)


def test_a_renamed_output_is_an_extra_output_not_unexpected(tmp_path: Path) -> None:
    """"unexpected" is kept for real bugs; a converted model with an output the original does not
    have fails verify naming it as an extra output."""
    original = two_outputs()
    conv, _ = onnxfcn.convert(original)
    lie_renamed_output(conv)
    res = runner.invoke(app, ["verify", str(_save(tmp_path, original, "o.onnx")), str(_save(tmp_path, conv, "c.onnx"))])
    assert res.exit_code == 1
    assert "extra output 'probabilities'" in res.output and "unexpected" not in res.output, res.output
