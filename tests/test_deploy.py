"""Deployment shapes (issue #24): ``convert --static`` fixes the input and writes every output dim;
``deploy`` in the reports gives TensorRT's profile, OpenVINO's partial shape and onnxruntime's
free-dimension overrides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import LIGHT, rand, run
from trunks import DEEP_REF, deep
from typer.testing import CliRunner

import onnxfcn
from onnxfcn.cli import app
from onnxfcn.errors import OnnxFcnError
from onnxfcn.metadata import ConversionMetadata

runner = CliRunner()


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


@pytest.mark.parametrize("mode", ["window", "dense"])
def test_static_equals_the_dynamic_conversion_cell_for_cell(mode: str) -> None:
    original = deep(head="gap" if mode == "dense" else "flatten")
    dynamic, _ = onnxfcn.convert(original, mode=mode)
    h, w = DEEP_REF + 3 * 32, DEEP_REF + 32 + 7
    static, report = onnxfcn.convert(original, mode=mode, static=(h, w))
    geo = report.geometry
    gh, gw = geo.grid(h, w)
    batch = _dims(dynamic.graph.input[0])[0]  # the batch keeps its (dynamic) name
    assert isinstance(batch, str) and _dims(static.graph.input[0]) == [batch, 3, h, w]
    assert _dims(static.graph.output[0]) == [batch, _dims(dynamic.graph.output[0])[1], gh, gw]
    assert ConversionMetadata.read(static).static == (h, w)  # type: ignore[union-attr]
    assert report.static["check"]["outputs"][0]["shape"] == [2, _dims(static.graph.output[0])[1], gh, gw]
    x = rand([2, 3, h, w], seed=4)
    want, got = run(dynamic, x)[0], run(static, x)[0]
    assert float(np.abs(want).max()) > 1  # realistic logits
    np.testing.assert_array_equal(got, want)
    with pytest.raises(Exception, match="(?i)invalid dimensions|got invalid"):
        run(static, rand([1, 3, h + 32, w], seed=5))  # onnxruntime holds it to its size


def test_static_batch_fixes_the_batch() -> None:
    static, report = onnxfcn.convert(deep(), static=(DEEP_REF, DEEP_REF), static_batch=1)
    assert _dims(static.graph.input[0])[0] == 1 and _dims(static.graph.output[0])[0] == 1
    assert report.static["check"]["batch"] == 1
    assert report.deploy["trtexec"] == (f"--minShapes=image:1x3x{DEEP_REF}x{DEEP_REF} "
                                        f"--optShapes=image:1x3x{DEEP_REF}x{DEEP_REF} "
                                        f"--maxShapes=image:1x3x{DEEP_REF}x{DEEP_REF}")


def test_static_sizes_that_do_not_work_are_refused_naming_the_nearest() -> None:
    with pytest.raises(OnnxFcnError, match=rf"--static 100x300 is below the smallest input, {DEEP_REF}x{DEEP_REF} "
                                           rf".*nearest size that works: {DEEP_REF}x300"):
        onnxfcn.convert(deep(), static=(100, 300))
    with pytest.raises(OnnxFcnError, match="--static 300x300 is not a size the model runs at.*the next size that is: "):
        onnxfcn.convert(LIGHT / "light_inception_v2.onnx", static=(300, 300))
    with pytest.raises(OnnxFcnError, match="--static-batch fixes the batch of a --static model"):
        onnxfcn.convert(deep(), static_batch=1)


def test_deploy_shapes_in_inspect_and_convert(tmp_path: Path, tmp_model) -> None:
    path = tmp_model(deep())
    res = runner.invoke(app, ["inspect", str(path), "--json", "--opt-size", "320x320", "--max-size", "640x480"])
    assert res.exit_code == 0, res.output
    deploy = json.loads(res.output)["deploy"]
    assert deploy["min_input"] == [DEEP_REF, DEEP_REF]  # one window: the stride-32 trunk has no padding
    assert deploy["trtexec"] == (f"--minShapes=image:1x3x{DEEP_REF}x{DEEP_REF} --optShapes=image:1x3x320x320 "
                                 "--maxShapes=image:1x3x640x480")
    assert deploy["openvino"] == f"image[1,3,{DEEP_REF}..640,{DEEP_REF}..480]"
    assert deploy["onnxruntime_free_dimension_overrides"] == {"height": 320, "width": 320, "N": 1}  # its names
    assert deploy["output_grid"]["max"] == [(640 - DEEP_REF) // 32 + 1, (480 - DEEP_REF) // 32 + 1]
    text = runner.invoke(app, ["inspect", str(path)]).output
    assert f"deploy trtexec --minShapes=image:1x3x{DEEP_REF}x{DEEP_REF} --optShapes=image:1x3x{2 * DEEP_REF}x" in text
    out, report = tmp_path / "s.onnx", tmp_path / "r.json"
    res = runner.invoke(app, ["convert", str(path), "-o", str(out), "--static", "254x222", "--json", str(report)])
    assert res.exit_code == 0, res.output
    assert "static input Nx3x254x222, outputs " in res.output and "cell for cell" in res.output
    data = json.loads(report.read_text())
    assert data["static"]["input"] == ["N", 3, 254, 222] and data["deploy"]["opt_input"] == [254, 222]


def test_static_with_verify_is_refused_before_any_work(tmp_path: Path, tmp_model) -> None:
    out = tmp_path / "s.onnx"
    res = runner.invoke(app, ["convert", str(tmp_model(deep())), "-o", str(out), "--static", "254x222", "--verify"])
    assert res.exit_code == 2 and "a --static model takes one" in res.output and not out.exists()


def test_scan_refuses_a_static_model_with_the_reason(tmp_path: Path, tmp_model) -> None:
    out = tmp_path / "s.onnx"
    assert runner.invoke(app, ["convert", str(tmp_model(deep())), "-o", str(out), "--static", "254x222"]).exit_code == 0
    image = tmp_path / "x.npy"
    np.save(image, rand([3, 300, 300], seed=1))
    res = runner.invoke(app, ["scan", str(out), str(image), "--out", str(tmp_path / "scan")])
    assert res.exit_code == 2 and "converted with --static 254x222" in res.output, res.output


def test_static_check_that_would_not_fit_is_refused_before_it_runs() -> None:
    from onnxfcn.errors import ResourceError

    with pytest.raises(ResourceError, match=r"the --static check at 4000x4000, batch 2, needs about .*--no-self-check"):
        onnxfcn.convert(deep(), static=(4000, 4000), max_memory=200 * 2**20)
    static, report = onnxfcn.convert(deep(), static=(4000, 4000), max_memory=200 * 2**20, self_check=False)
    assert "check" not in report.static and _dims(static.graph.output[0])[2:] == [(4000 - DEEP_REF) // 32 + 1] * 2
