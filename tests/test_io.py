"""Loading and saving: clear errors for bad files, atomic writes, external data, no input changes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from builders import flatten_gemm, wide
from helpers import ROOT, assert_close, rand, run

import onnxfcn
import onnxfcn.io
from onnxfcn.io import load_model, save_model


def test_not_onnx(tmp_path: Path) -> None:
    p = tmp_path / "x.onnx"
    p.write_text("hello, this is not a protobuf\n")
    with pytest.raises(onnxfcn.ModelLoadError, match="x.onnx"):
        load_model(p)


def test_truncated(tmp_path: Path) -> None:
    data = (ROOT / "models" / "digits_cnn.onnx").read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(onnxfcn.ModelLoadError, match="cut.onnx"):
        load_model(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(onnxfcn.ModelLoadError, match="no such file"):
        load_model(tmp_path / "nope.onnx")


def test_save_is_atomic_and_leaves_nothing_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = flatten_gemm()
    target = tmp_path / "out.onnx"
    save_model(model, target)
    before = target.read_bytes()

    def boom(_: object, f: Any) -> None:  # the disk fills up half-way through the write
        f.write(b"\x08\x07" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(onnxfcn.io, "write_model", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(flatten_gemm(seed=1), target)
    assert target.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]  # no temporary left


def test_external_data_round_trip(tmp_path: Path) -> None:
    """A model stored with external data converts; the data is written next to the output."""
    src = tmp_path / "src"
    src.mkdir()
    model = flatten_gemm()
    to_save = onnx.ModelProto()
    to_save.CopyFrom(model)  # onnx.save_model moves the weights out of the object it saves
    onnx.save_model(to_save, src / "m.onnx", save_as_external_data=True, location="m.weights", size_threshold=0)
    digest = hashlib.sha256((src / "m.onnx").read_bytes() + (src / "m.weights").read_bytes()).hexdigest()
    converted, report = onnxfcn.convert(src / "m.onnx")
    assert report.external_data
    out = tmp_path / "out"
    out.mkdir()
    written = save_model(converted, out / "fcn.onnx", external_data=True)
    assert {p.name for p in written} == {"fcn.onnx", "fcn.onnx.data"}
    reloaded = onnx.load(out / "fcn.onnx")
    x = rand([1, 3, 18, 18])
    assert_close(run(reloaded, x)[0].reshape(1, -1), run(model, x)[0])
    # The input files are untouched.
    assert hashlib.sha256((src / "m.onnx").read_bytes() + (src / "m.weights").read_bytes()).hexdigest() == digest


def test_save_keeps_caller_model_in_memory(tmp_path: Path) -> None:
    model = flatten_gemm()
    snapshot = model.SerializeToString()
    save_model(model, tmp_path / "a.onnx", external_data=True)
    assert model.SerializeToString() == snapshot


@pytest.mark.big
def test_over_2gb_model_uses_external_data(tmp_path: Path) -> None:
    """Two VGG-like dense heads of 1.2 GB each (one tensor cannot pass 2 GB): converted, saved
    with external data next to the output, and the result runs. The input is written straight to
    its external data file, a block at a time: the test holds the weights once, in convert."""
    from onnx import TensorProto, helper

    k, c, h, w = 12000, 512, 7, 7
    block = np.random.default_rng(0).standard_normal((100, c * h * w), dtype=np.float32)
    src = tmp_path / "big.onnx"
    inits = []
    with open(tmp_path / "big.data", "wb") as f:
        for name in ("w1", "w2"):
            offset = f.tell()
            for _ in range(k // len(block)):
                f.write(block.tobytes())
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[k, c * h * w],
                            data_location=TensorProto.EXTERNAL)
            for key, value in (("location", "big.data"), ("offset", str(offset)), ("length", str(f.tell() - offset))):
                t.external_data.add(key=key, value=value)
            inits.append(t)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "w1"], ["scores"], transB=1),
         helper.make_node("Gemm", ["flat", "w2"], ["boxes"], transB=1)],
        "big", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, c, h, w])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, k]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, k])],
        inits,
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), src)
    del graph, inits
    converted, report = onnxfcn.convert(src, self_check=False)
    assert report.external_data and report.geometry.window == (h, w)
    written = save_model(converted, tmp_path / "big_fcn.onnx")
    del converted
    assert {p.name for p in written} == {"big_fcn.onnx", "big_fcn.onnx.data"}
    assert (tmp_path / "big_fcn.onnx").stat().st_size < 1_000_000
    assert (tmp_path / "big_fcn.onnx.data").stat().st_size > 2**31
    from onnxfcn.runtime import file_session

    x = np.ones((1, c, h + 2, w), dtype=np.float32)
    # basic optimizations: the weights stay mapped from the file (the layout transforms would copy them twice)
    scores, boxes = file_session(tmp_path / "big_fcn.onnx", optimize=False).run(None, {"image": x})
    assert scores.shape == (1, k, 3, 1) and boxes.shape == (1, k, 3, 1)


# ---- nothing is lost ------------------------------------------------------------------------------
def _external_pair(folder: Path, name: str, location: str, seed: int = 0) -> onnx.ModelProto:
    model = flatten_gemm(seed=seed)
    to_save = onnx.ModelProto()
    to_save.CopyFrom(model)
    onnx.save_model(to_save, folder / name, save_as_external_data=True, location=location, size_threshold=0)
    return model


def test_output_never_overwrites_the_inputs_data(tmp_path: Path) -> None:
    """a.onnx keeps its weights in b.onnx.data; converting it to b.onnx must not replace that file."""
    from typer.testing import CliRunner

    from onnxfcn.cli import app

    _external_pair(tmp_path, "a.onnx", "b.onnx.data")
    before = (tmp_path / "b.onnx.data").read_bytes()
    res = CliRunner().invoke(app, ["convert", str(tmp_path / "a.onnx"), "-o", str(tmp_path / "b.onnx"), "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b.onnx.data").read_bytes() == before
    onnx.load(tmp_path / "a.onnx")  # the input still loads, with its data
    out = onnx.load(tmp_path / "b.onnx")  # and so does the output, from its own data file
    assert {p.name for p in tmp_path.iterdir()} == {"a.onnx", "b.onnx", "b.onnx.data", "b.onnx.1.data"}
    assert out.graph.node


def test_resaving_a_pair_switches_data_files_and_removes_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "out.onnx"
    save_model(flatten_gemm(seed=0), target, external_data=True)
    assert {p.name for p in tmp_path.iterdir()} == {"out.onnx", "out.onnx.data"}
    save_model(flatten_gemm(seed=1), target, external_data=True)
    assert {p.name for p in tmp_path.iterdir()} == {"out.onnx", "out.onnx.1.data"}
    save_model(flatten_gemm(seed=2), target, external_data=True)
    assert {p.name for p in tmp_path.iterdir()} == {"out.onnx", "out.onnx.data"}
    x = rand([1, 3, 18, 18])
    assert_close(run(onnx.load(target), x)[0], run(flatten_gemm(seed=2), x)[0])


KILLER = """
import sys, numpy as np, onnx
from onnx import helper, numpy_helper
from onnxfcn.io import save_model
k = int(sys.argv[2])
rng = np.random.default_rng(k)
w = numpy_helper.from_array(rng.standard_normal((1000, 4000)).astype(np.float32) + k, "w")
g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                      [helper.make_tensor_value_info("x", 1, [1, 1000])], [helper.make_tensor_value_info("y", 1, None)], [w])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
m.metadata_props.add(key="version", value=str(k))  # in the model file: must match the weights
print("ready", flush=True)
while True:
    save_model(m, sys.argv[1], external_data=True)
"""


def test_sigkill_during_save_leaves_the_old_pair_or_the_new_pair(tmp_path: Path) -> None:
    """A process saving a 16 MB model with external data over and over is killed at random moments:
    every time, the model at the path loads with its data, and its weights are one whole version."""
    import signal
    import subprocess
    import sys
    import time

    from onnx import numpy_helper

    target = tmp_path / "m.onnx"
    rng = np.random.default_rng(0)
    seen: set[int] = set()
    for k in range(12):
        proc = subprocess.Popen([sys.executable, "-c", KILLER, str(target), str(k)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.6)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not target.exists():
            continue
        model = onnx.load(target)  # loads its external data: a mixed pair would fail or differ
        w = numpy_helper.to_array(model.graph.initializer[0])
        version = round(float(w.mean()))
        assert w.shape == (1000, 4000)
        assert {p.key: p.value for p in model.metadata_props}["version"] == str(version)  # model and data agree
        assert np.array_equal(w, np.random.default_rng(version).standard_normal((1000, 4000)).astype(np.float32) + version)
        seen.add(version)
    assert seen, "no kill landed after a first save"


def test_sigterm_removes_temporary_files(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    script = KILLER.replace("from onnxfcn.io import save_model", "from onnxfcn.io import save_model\n"
                            "from onnxfcn.cli import _terminate\nimport signal\nsignal.signal(signal.SIGTERM, _terminate)")
    target = tmp_path / "m.onnx"
    for delay in (0.05, 0.2, 0.4):
        proc = subprocess.Popen([sys.executable, "-c", script, str(target), "1"], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait() == 128 + signal.SIGTERM
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".onnxfcn-")]


def test_outputs_get_the_umask_mode(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        written = save_model(flatten_gemm(), tmp_path / "a.onnx", external_data=True)
    finally:
        os.umask(old)
    assert all((p.stat().st_mode & 0o777) == 0o644 for p in written)


def test_external_data_with_only_small_tensors(tmp_path: Path) -> None:
    """Every tensor under the 1 KB threshold: no data file at all, and no error."""
    from builders import Builder, gemm

    b = Builder(13)
    y = b.node("Flatten", [b.node("GlobalAveragePool", ["image"])], axis=1)
    model = b.model([1, 3, 4, 4], [gemm(b, y, 3, 2)])  # 24 bytes of weights
    written = save_model(model, tmp_path / "small.onnx", external_data=True)
    assert [p.name for p in written] == ["small.onnx"]
    onnx.load(tmp_path / "small.onnx")


def test_long_output_name(tmp_path: Path) -> None:
    name = "m" * 245 + ".onnx"  # 250 bytes: temporary names must not add to it
    save_model(flatten_gemm(), tmp_path / name)
    assert (tmp_path / name).exists()


@pytest.mark.parametrize("attack", ["escape", "absolute", "symlink", "hardlink", "past_end", "short"])
def test_hostile_external_data_is_refused(attack: str, tmp_path: Path) -> None:
    import os

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 100000)
    folder = tmp_path / "model"
    folder.mkdir()
    _external_pair(folder, "m.onnx", "m.data")
    model = onnx.load(folder / "m.onnx", load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    info = {e.key: e for e in tensor.external_data}
    if attack == "escape":
        info["location"].value = "../secret.bin"
    elif attack == "absolute":
        info["location"].value = str(secret)
    elif attack == "symlink":
        (folder / "link.data").symlink_to(secret)
        info["location"].value = "link.data"
    elif attack == "hardlink":
        os.link(folder / "m.data", folder / "twin.data")
    elif attack == "past_end":
        info["offset"].value = str((folder / "m.data").stat().st_size - 4) if "offset" in info else "0"
        if "offset" not in info:
            tensor.external_data.add(key="offset", value=str((folder / "m.data").stat().st_size - 4))
    elif attack == "short":
        info["length"].value = "8"
    onnx.save(model, folder / "m.onnx")
    with pytest.raises(onnxfcn.ModelLoadError, match="external data"):
        load_model(folder / "m.onnx")


PAUSE_AFTER_DATA = """
import os, time
_replace = os.replace
def replace(src, dst, *a, **k):
    _replace(src, dst, *a, **k)
    if str(dst).endswith(".data"):  # the data file is in place, the model not yet: get killed here
        print("between", flush=True)
        time.sleep(60)
os.replace = replace
"""


def test_sigkill_between_data_and_model_keeps_the_old_pair(tmp_path: Path) -> None:
    """The worst moment: killed after the new data file is in place, before the model is renamed.
    The old model must still load with its own (old) weights."""
    import signal
    import subprocess
    import sys

    from onnx import numpy_helper

    target = tmp_path / "m.onnx"
    first = subprocess.Popen([sys.executable, "-c", KILLER.replace("while True:", "for _ in range(1):"),
                              str(target), "3"], stdout=subprocess.PIPE, text=True)
    assert first.wait() == 0  # version 3 saved whole
    script = KILLER.replace("import sys,", PAUSE_AFTER_DATA + "\nimport sys,")
    proc = subprocess.Popen([sys.executable, "-c", script, str(target), "7"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    assert proc.stdout.readline().strip() == "between"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    model = onnx.load(target)
    w = numpy_helper.to_array(model.graph.initializer[0])
    assert {p.key: p.value for p in model.metadata_props}["version"] == "3"
    assert round(float(w.mean())) == 3  # the old weights, not the new model's


def test_constant_node_with_external_data(tmp_path: Path) -> None:
    """A dense weight held by a Constant node whose tensor lives in external data is read like an
    initializer: the model converts and matches."""
    from onnx import helper, numpy_helper
    from onnx.external_data_helper import convert_model_to_external_data

    model = flatten_gemm()
    w = next(t for t in model.graph.initializer if t.name.startswith("fcw"))
    model.graph.initializer.remove(w)
    model.graph.node.insert(0, helper.make_node("Constant", [], [w.name], value=numpy_helper.from_array(
        numpy_helper.to_array(w), w.name)))
    to_save = onnx.ModelProto()
    to_save.CopyFrom(model)
    convert_model_to_external_data(to_save, location="m.data", size_threshold=0, convert_attribute=True)
    onnx.save_model(to_save, tmp_path / "m.onnx")
    const = next(n for n in onnx.load(tmp_path / "m.onnx", load_external_data=False).graph.node if n.op_type == "Constant")
    assert const.attribute[0].t.data_location == onnx.TensorProto.EXTERNAL
    converted, report = onnxfcn.convert(tmp_path / "m.onnx")
    assert report.external_data
    x = rand([1, 3, 18, 18])
    assert_close(run(converted, x)[0].reshape(1, -1), run(model, x)[0])


def test_signals_wait_until_the_write_is_done() -> None:
    """A SIGTERM inside a write is held until the write's files are in place (or removed), then
    acts as its handler says: the temporary-file cleanup can never be cut in half."""
    import os
    import signal

    from onnxfcn.io import signals_deferred

    class Stop(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Stop(signum)

    old = signal.signal(signal.SIGTERM, handler)
    steps = []
    try:
        with pytest.raises(Stop):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("after the signal, still inside")
            steps.append("never reached")
        assert steps == ["after the signal, still inside"]
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, old)


def test_graph_without_weights_refers_to_the_files_own_bytes(tmp_path: Path) -> None:
    """load_model(weights=False) parses only the small fields; each large weight becomes an
    external-data reference to its bytes in the file, which onnx's own loader then reads back."""
    from onnx.external_data_helper import load_external_data_for_model

    from onnxfcn.wire import PIECE_MIN_BYTES

    model = wide()
    path = tmp_path / "m.onnx"
    save_model(model, path)
    light, external = load_model(path, weights=False)
    assert not external
    refs = [t for t in light.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(refs) == 2 and all(t.ByteSize() < 200 for t in refs)
    assert {t.name for t in refs} == {t.name for t in model.graph.initializer if len(t.raw_data) >= PIECE_MIN_BYTES}
    load_external_data_for_model(light, str(tmp_path))
    for t in light.graph.initializer:
        t.ClearField("data_location")
        del t.external_data[:]
    assert light.SerializeToString() == model.SerializeToString()


def test_graph_without_weights_refuses_what_the_full_load_refuses(tmp_path: Path) -> None:
    model = wide()
    big = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    big.raw_data = big.raw_data[:-8]
    (tmp_path / "short.onnx").write_bytes(model.SerializeToString())
    (tmp_path / "cut.onnx").write_bytes(wide().SerializeToString()[:-1000])
    for weights in (True, False):
        with pytest.raises(onnxfcn.ModelLoadError, match="bytes of data for dims"):
            load_model(tmp_path / "short.onnx", weights=weights)
        with pytest.raises(onnxfcn.ModelLoadError, match="not a readable ONNX model"):
            load_model(tmp_path / "cut.onnx", weights=weights)
