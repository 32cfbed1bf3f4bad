"""The wire-format writer and reader: the same bytes as protobuf's, or protobuf's own."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import wide
from onnx import helper, numpy_helper
from zoo_models import realistic

from onnxfcn import wire
from onnxfcn.errors import ModelLoadError
from onnxfcn.io import load_model, save_model


def written(model: onnx.ModelProto) -> bytes:
    f = io.BytesIO()
    n = wire.write_model(model, f)
    assert n == len(f.getvalue())
    return f.getvalue()


def test_bytes_are_protobufs() -> None:
    model = wide()
    model.metadata_props.add(key="k", value="v")
    model.doc_string = "before the graph (field 6 < 7); opset_import (8) comes after it"
    assert sum(wire._piece_tensor(t) for t in model.graph.initializer) == 2  # the two dense weights
    assert written(model) == model.SerializeToString()


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_bytes_are_protobufs_in_other_types(dtype: type, monkeypatch: pytest.MonkeyPatch) -> None:
    model = wide(dtype)
    monkeypatch.setattr(wire, "PIECE_MIN_BYTES", 0)
    assert sum(wire._piece_tensor(t) for t in model.graph.initializer) == len(model.graph.initializer)
    assert written(model) == model.SerializeToString()


@pytest.mark.parametrize("name", ["squeezenet", "inception_v1", "densenet121"])
def test_bytes_are_protobufs_for_every_tensor_of_zoo_models(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = realistic(name)
    monkeypatch.setattr(wire, "PIECE_MIN_BYTES", 0)  # every raw_data tensor written in pieces
    assert sum(wire._piece_tensor(t) for t in model.graph.initializer) > 20
    assert written(model) == model.SerializeToString()


def test_ir3_model_lists_initializers_as_inputs() -> None:
    model = wide()
    model.ir_version = 3
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in model.graph.initializer)
    assert written(model) == model.SerializeToString()


def test_unknown_fields_are_refused_before_writing_and_save_keeps_them(tmp_path: Path) -> None:
    model = wide()
    big = next(t for t in model.graph.initializer if wire._piece_tensor(t))
    big.ParseFromString(big.SerializeToString() + b"\xf8\x01\x05")  # field 31, varint 5: not in the schema
    assert wire.has_unknown_fields(big)
    f = io.BytesIO()
    with pytest.raises(wire.WireMismatch, match="unknown"):
        wire.write_model(model, f)
    assert f.getvalue() == b""
    save_model(model, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == model.SerializeToString()


def test_data_shorter_than_its_dims_is_caught_and_save_writes_what_protobuf_writes(tmp_path: Path) -> None:
    model = wide()
    big = next(t for t in model.graph.initializer if wire._piece_tensor(t))
    big.raw_data = big.raw_data[:-4]
    with pytest.raises(wire.WireMismatch, match="bytes of data"):
        wire.write_model(model, io.BytesIO())
    save_model(model, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == model.SerializeToString()
    with pytest.raises(ModelLoadError, match=r"bytes of data for dims"):  # and the reader refuses it
        load_model(tmp_path / "m.onnx")


def test_initializer_data_points_at_each_tensors_bytes() -> None:
    model = wide()
    model.graph.initializer.append(numpy_helper.from_array(np.arange(3, dtype=np.int64), "typed"))
    model.graph.initializer[-1].ClearField("raw_data")  # no raw_data: int64_data instead
    model.graph.initializer[-1].int64_data.extend([0, 1, 2])
    data = model.SerializeToString()
    where = wire.initializer_data(data)
    assert len(where) == len(model.graph.initializer)
    for t, loc in zip(model.graph.initializer, where):
        if not t.HasField("raw_data"):
            assert loc is None
            continue
        assert loc is not None
        name, offset, length = loc
        assert name == t.name and data[offset:offset + length] == t.raw_data


@pytest.mark.parametrize("cut", [1, 7, 1000])
def test_initializer_data_refuses_a_truncated_encoding(cut: int) -> None:
    data = wide().SerializeToString()
    with pytest.raises(wire.WireMismatch):
        wire.initializer_data(data[:-cut])


def test_varint_round_trip() -> None:
    for n in (0, 1, 127, 128, 300, 2**31, 2**63 - 1):
        assert wire._read_varint(wire.varint(n), 0) == (n, len(wire.varint(n)))
