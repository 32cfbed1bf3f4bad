"""Preprocessing and labels: the arithmetic, the metadata round trip, and convert storing them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import flatten_gemm
from helpers import ROOT
from typer.testing import CliRunner

from onnxfcn import convert
from onnxfcn.cli import app
from onnxfcn.errors import InvalidConversionError, OnnxFcnError
from onnxfcn.metadata import labels_from_props, preprocess_props, read_preprocess, read_props
from onnxfcn.preprocess import Preprocess, read_labels
from onnxfcn.units import parse_floats, parse_scale

runner = CliRunner()


def test_apply_is_scale_then_mean_then_std_in_channel_order() -> None:
    px = np.array([[[10, 20, 30], [255, 0, 128]]], dtype=np.uint8)  # 1 x 2 x 3, RGB
    pre = Preprocess(scale=0.5, mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0), channels="bgr")
    got = pre.apply(px)
    rgb = px.astype(np.float64)[..., ::-1] * 0.5  # BGR order, then the per-channel values
    want = (rgb - [1.0, 2.0, 3.0]) / [2.0, 4.0, 8.0]
    assert got.dtype == np.float32 and got.shape == (1, 2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0, 0, 0] == pytest.approx((30 * 0.5 - 1) / 2)  # the blue pixel lands first


def test_defaults_are_scale_1_over_255_only() -> None:
    px = np.full((2, 2, 1), 255, dtype=np.uint8)
    np.testing.assert_allclose(Preprocess().apply(px), 1.0, rtol=1e-7)


def test_metadata_round_trip_and_overrides() -> None:
    pre = Preprocess(1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bgr")
    meta = preprocess_props(pre)
    assert read_preprocess(meta) == pre
    assert (read_preprocess({}) or Preprocess()) == Preprocess()
    over = pre.with_overrides(scale=1.0, channels="rgb")
    assert over.scale == 1.0 and over.channels == "rgb" and over.mean == pre.mean


@pytest.mark.parametrize("bad", [{"scale": "x"}, {"mean": "1,a"}, {"std": "0"}, {"channels": "grb"}])
def test_bad_metadata_is_one_clear_error(bad: dict[str, str]) -> None:
    with pytest.raises(InvalidConversionError, match="preprocessing in the model's metadata"):
        read_preprocess(bad)


def test_parsers() -> None:
    assert parse_scale("1/255") == pytest.approx(1 / 255)
    assert parse_scale("0.5") == 0.5 and parse_scale(None) is None
    assert parse_floats("0.1,0.2", "--mean") == (0.1, 0.2)
    for bad in ("1/0", "a"):
        with pytest.raises(OnnxFcnError, match="--scale"):
            parse_scale(bad)
    with pytest.raises(OnnxFcnError, match="--mean"):
        parse_floats("0.1;0.2", "--mean")
    with pytest.raises(OnnxFcnError, match="channels"):
        Preprocess(mean=(1.0, 2.0)).check(3)


def test_labels_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("cat\ndog\n\n")
    (tmp_path / "b.json").write_text('["cat", "dog"]')
    (tmp_path / "c.json").write_text('[1, 2]')
    (tmp_path / "d.txt").write_text("\n\n")
    assert read_labels(tmp_path / "a.txt") == ["cat", "dog"]
    assert read_labels(tmp_path / "b.json") == ["cat", "dog"]
    with pytest.raises(OnnxFcnError, match="list of strings"):
        read_labels(tmp_path / "c.json")
    with pytest.raises(OnnxFcnError, match="no labels"):
        read_labels(tmp_path / "d.txt")
    with pytest.raises(OnnxFcnError, match="cannot read"):
        read_labels(tmp_path / "missing.txt")
    with pytest.raises(InvalidConversionError):
        labels_from_props({"labels": "{"})


def test_convert_stores_preprocessing_and_labels(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("".join(f"class {k}\n" for k in range(5)))
    src, out = tmp_path / "m.onnx", tmp_path / "m.fcn.onnx"
    onnx.save(flatten_gemm(), src)
    res = runner.invoke(app, ["convert", str(src), "-o", str(out), "-q", "--mean", "0.5,0.4,0.3", "--std", "0.2",
                              "--scale", "1/255", "--channels", "bgr", "--labels", str(tmp_path / "labels.txt")])
    assert res.exit_code == 0, res.output
    meta = read_props(onnx.load(out))
    assert read_preprocess(meta) == Preprocess(1 / 255, (0.5, 0.4, 0.3), (0.2,), "bgr")
    assert json.loads(meta["labels"]) == [f"class {k}" for k in range(5)]


def test_convert_without_options_stores_no_preprocessing() -> None:
    model, _ = convert(flatten_gemm(), self_check=False)
    meta = read_props(model)
    assert "scale" not in meta and "labels" not in meta
    assert meta["input"] == "image" and meta["input_layout"] == "NCHW"


@pytest.mark.parametrize("args, message", [
    (["--labels", "L"], "3 labels for 5 classes"),
    (["--mean", "0.5,0.5"], "mean has 2 values; the model's input has 3 channels"),
    (["--std", "0"], "std must not be zero"),
    (["--scale", "abc"], "--scale 'abc'"),
])
def test_convert_refuses_bad_preprocessing(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "L").write_text("a\nb\nc\n")
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(flatten_gemm(), src)
    args = [str(tmp_path / "L") if a == "L" else a for a in args]
    res = runner.invoke(app, ["convert", str(src), "-o", str(out), "-q", "--no-self-check", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def test_digits_labels_file_matches_the_model() -> None:
    assert read_labels(ROOT / "models" / "digits_labels.txt") == [str(d) for d in range(10)]
