"""The command line: exit codes, one-line errors, JSON, and the README's commands run as tests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from builders import Builder, flatten_gemm, image_shape, trunk
from helpers import LIGHT, ROOT
from typer.testing import CliRunner

from onnxfcn.cli import app

runner = CliRunner()
DIGITS = ROOT / "models" / "digits_cnn.onnx"


def test_convert_demo_model(tmp_path: Path) -> None:
    out = tmp_path / "digits_fcn.onnx"
    before = DIGITS.read_bytes()
    res = runner.invoke(app, ["convert", str(DIGITS), "-o", str(out), "--verify", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert DIGITS.read_bytes() == before  # the input is never modified
    assert "exact  yes" in res.output and "Gemm" in res.output and "PASSED" in res.output
    # the self-check's and verify's reference errors differ, and the output says why
    assert "note: the self-check (check, above) runs both models without graph optimizations" in res.output
    assert "out_height = floor((H - 8) / 2) + 1" in res.output
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["onnxfcn.window"] == "8,8" and meta["onnxfcn.stride"] == "2,2" and meta["onnxfcn.exact"] == "true"
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["verify"]["passed"] is True and data["geometry"]["stride"] == [2, 2]


def test_default_output_name(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(flatten_gemm(), src)
    assert runner.invoke(app, ["convert", str(src), "-q"]).exit_code == 0
    assert (tmp_path / "m.fcn.onnx").exists()


@pytest.mark.parametrize("case", ["not_onnx", "truncated", "no_image_input", "no_head", "flatten_axis2",
                                  "unsupported_op", "bad_size", "same_path"])
def test_bad_input_one_line_exit_2_nothing_written(case: str, tmp_path: Path) -> None:
    src = tmp_path / "in.onnx"
    out = tmp_path / "out.onnx"
    args: list[str] = []
    if case == "not_onnx":
        src.write_text("not a model")
    elif case == "truncated":
        src.write_bytes(DIGITS.read_bytes()[:1000])
    elif case == "no_image_input":
        b = Builder(13)
        b.nodes.append(onnx.helper.make_node("Relu", ["image"], ["y"]))
        onnx.save(onnx.helper.make_model(onnx.helper.make_graph(
            b.nodes, "g", [onnx.helper.make_tensor_value_info("image", 1, [1, 10])],
            [onnx.helper.make_tensor_value_info("y", 1, [1, 10])]), ir_version=8), src)
    elif case == "no_head":
        b = Builder(13)
        y = b.node("ReduceSum", [trunk(b), b.ints("ax", [1])], keepdims=0)  # N x H x W, no classes
        y = b.node("Flatten", [y], axis=0)
        onnx.save(b.model(image_shape(), [y]), src)
    elif case == "flatten_axis2":
        b = Builder(13)
        y = b.node("Flatten", [trunk(b)], axis=2, name="flat2")
        onnx.save(b.model(image_shape(), [b.node("MatMul", [y, b.weight("w", (36, 4))])]), src)
    elif case == "unsupported_op":
        b = Builder(13)
        y = b.node("Flatten", [trunk(b)], axis=1)
        y = b.node("MatMul", [y, b.weight("w", (288, 4))])
        y = b.node("CumSum", [y, b.const("a", __import__("numpy").asarray(1))], name="cums")
        onnx.save(b.model(image_shape(), [y]), src)
    elif case == "bad_size":
        onnx.save(flatten_gemm(), src)
        args = ["--size", "twelve"]
    elif case == "same_path":
        onnx.save(flatten_gemm(), src)
        out = src
    before = src.read_bytes()
    res = runner.invoke(app, ["convert", str(src), "-o", str(out), *args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: ")
    if case == "flatten_axis2":
        assert "flat2" in lines[0] and "axis=2" in lines[0]
    if case == "unsupported_op":
        assert "cums" in lines[0] and "CumSum" in lines[0]
    assert src.read_bytes() == before
    if case != "same_path":
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_already_fully_convolutional_exit_3(tmp_path: Path) -> None:
    b = Builder(13)
    onnx.save(b.model(image_shape(), [trunk(b)]), tmp_path / "fcn.onnx")
    res = runner.invoke(app, ["convert", str(tmp_path / "fcn.onnx"), "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code == 3
    assert "already fully convolutional" in res.output
    lines = res.output.strip().splitlines()  # one line, like every other error, naming the file
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'fcn.onnx'}: "), res.output
    assert not (tmp_path / "o.onnx").exists()
    # A converted model is recognised too.
    runner.invoke(app, ["convert", str(DIGITS), "-o", str(tmp_path / "d.onnx"), "-q"])
    res = runner.invoke(app, ["convert", str(tmp_path / "d.onnx"), "-o", str(tmp_path / "dd.onnx")])
    assert res.exit_code == 3 and "already converted" in res.output


def test_lattice_model_states_its_sizes(tmp_path: Path) -> None:
    """inception_v2 from the light zoo runs only at some sizes: converted, with the sizes stated;
    verify and inspect refuse a size off them with one line."""
    out = tmp_path / "o.onnx"
    res = runner.invoke(app, ["convert", str(LIGHT / "light_inception_v2.onnx"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "sizes  H = 32k+{0,1,2,3,4,5,6,31}, W = 32k+{0,1,2,3,4,5,6,31} only" in res.output
    assert {p.key: p.value for p in onnx.load(out).metadata_props}["onnxfcn.sizes"] == "32k+{0,1,2,3,4,5,6,31}"
    for args in (["verify", str(LIGHT / "light_inception_v2.onnx"), str(out), "--size", "300x300"],
                 ["inspect", str(LIGHT / "light_inception_v2.onnx"), "--at", "250x288"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "is not a size the model runs at" in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1


def test_help_explains_modes() -> None:
    res = runner.invoke(app, ["convert", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "window" in text and "dense" in text and "class activation map" in text


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "onnxfcn", "--version"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and res.stdout.startswith("onnxfcn ")


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_readme_starts_with_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", text.split("\n## ")[0], flags=re.S)
    assert len(blocks) == 2
    assert "onnxfcn convert models/" in blocks[0]
    assert "pytest" in blocks[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci  # CI runs the README's test command


def test_dynamic_input_needs_size_then_converts(tmp_path: Path) -> None:
    b = Builder(13)
    y = b.node("GlobalAveragePool", [trunk(b)])
    y = b.node("Gemm", [b.node("Flatten", [y], axis=1), b.weight("w", (4, 8)), b.weight("b", (4,))], transB=1)
    src = tmp_path / "dyn.onnx"
    onnx.save(b.model(["N", 3, "H", "W"], [y]), src)
    res = runner.invoke(app, ["convert", str(src), "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2 and "--size" in res.output
    res = runner.invoke(app, ["convert", str(src), "-o", str(tmp_path / "o.onnx"), "--size", "18x18", "--verify", "-q"])
    assert res.exit_code == 0, res.output
    meta = {p.key: p.value for p in onnx.load(tmp_path / "o.onnx").metadata_props}
    assert meta["onnxfcn.window"] == "18,18"


# ---- papercuts a new user hits ------------------------------------------------------------------
@pytest.mark.parametrize(("size", "ok"), [("8x8", True), ("8,8", True), ("8", True), ("8X8", True),
                                          ("8x8x8", False), ("eight", False), ("0x8", False)])
def test_size_forms(size: str, ok: bool, tmp_path: Path) -> None:
    """--size takes HxW, H,W or one number; anything else is one clear line, exit 2, never 'unexpected'."""
    res = runner.invoke(app, ["inspect", str(DIGITS), "--size", size])
    if ok:
        assert res.exit_code == 0, res.output
    else:
        assert res.exit_code == 2 and "--size" in res.output and "unexpected" not in res.output
        assert len(res.output.strip().splitlines()) == 1


def test_size_on_a_fixed_input_says_so() -> None:
    res = runner.invoke(app, ["convert", str(DIGITS), "--size", "16x16"])
    assert res.exit_code == 2
    assert "fixed at 8x8" in res.output and "dynamic" in res.output


def test_directory_as_model(tmp_path: Path) -> None:
    res = runner.invoke(app, ["convert", str(tmp_path)])
    assert res.exit_code == 2 and "is a directory" in res.output


@pytest.mark.parametrize("command", ["convert", "verify", "inspect"])
def test_help_has_choices_examples_exit_codes_and_verbose(command: str) -> None:
    res = runner.invoke(app, [command, "--help"])
    assert res.exit_code == 0
    text = res.output
    assert "Examples:" in text and "Exit codes:" in text and "-v, --verbose" in text
    assert "<str>" not in text and "{model}" not in text and "0.00392156862745098" not in text
    if command != "verify":
        assert "<window|dense>" in text  # the choices are listed


def test_root_help_does_not_cut_summaries() -> None:
    res = runner.invoke(app, ["--help"])
    commands = res.output.split("Commands:")[1]
    assert "..." not in commands


def test_json_folder_is_checked_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "fcn.onnx"
    res = runner.invoke(app, ["convert", str(DIGITS), "-o", str(out), "--json", str(tmp_path / "no" / "r.json")])
    assert res.exit_code == 2 and "JSON folder does not exist" in res.output
    assert not out.exists()  # nothing written


def test_strict_json_has_no_infinity(tmp_path: Path) -> None:
    """A failed shape comparison has infinite errors: the JSON writes null, which strict parsers accept."""
    from broken import BROKEN

    original, broken = BROKEN["right_only_at_reference"]()
    o, c = tmp_path / "o.onnx", tmp_path / "c.onnx"
    onnx.save(original, o)
    onnx.save(broken, c)
    res = runner.invoke(app, ["verify", str(o), str(c), "--json", str(tmp_path / "v.json")])
    assert res.exit_code == 1
    text = (tmp_path / "v.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_inspect_prints_geometry_like_convert() -> None:
    res = runner.invoke(app, ["inspect", str(DIGITS)])
    assert "window 8x8, stride 2x2, offset 0,0" in res.output


def test_verbose_after_the_subcommand() -> None:
    res = runner.invoke(app, ["inspect", str(DIGITS), "-v"])
    assert res.exit_code == 0


def test_swapped_models_are_pointed_out(tmp_path: Path) -> None:
    out = tmp_path / "d.onnx"
    assert runner.invoke(app, ["convert", str(DIGITS), "-o", str(out), "-q"]).exit_code == 0
    res = runner.invoke(app, ["verify", str(out), str(DIGITS)])
    assert res.exit_code == 2 and "swapped" in res.output


def test_oversized_requests_are_refused_up_front(tmp_path: Path) -> None:
    out = tmp_path / "d.onnx"
    assert runner.invoke(app, ["convert", str(DIGITS), "-o", str(out), "-q"]).exit_code == 0
    res = runner.invoke(app, ["verify", str(DIGITS), str(out), "--size", "100000x100000"])
    assert res.exit_code == 2 and "needs about" in res.output and "--max-memory" in res.output
    res = runner.invoke(app, ["verify", str(DIGITS), str(out), "--size", "64x64", "--max-memory", "1M"])
    assert res.exit_code == 2 and "allowed by --max-memory" in res.output
    assert runner.invoke(app, ["verify", str(DIGITS), str(out), "--size", "16x16", "--max-memory", "2G"]).exit_code == 0


def test_huge_declared_input_allocates_nothing_for_inspect(tmp_path: Path) -> None:
    """A model that declares 1x3x100000x100000: inspect analyses it without feeding the shape probe
    (447 GiB), and convert's self-check is refused with its estimate."""
    from builders import gap_softmax

    model = gap_softmax()
    for k in (2, 3):
        model.graph.input[0].type.tensor_type.shape.dim[k].dim_value = 100000
    del model.graph.output[0].type.tensor_type.shape.dim[:]
    src = tmp_path / "huge.onnx"
    onnx.save(model, src)
    assert runner.invoke(app, ["inspect", str(src)]).exit_code == 0
    res = runner.invoke(app, ["convert", str(src), "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2 and "self-check" in res.output and "needs about" in res.output


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["convert", "--help"], ["scan", "--help"]])
def test_help_and_version_import_neither_onnx_nor_onnxruntime(args: list[str]) -> None:
    """The command line answers --help and --version without loading the library's heavy imports."""
    code = ("import sys\nfrom onnxfcn.cli import main\nsys.argv = ['onnxfcn', *sys.argv[1:]]\ntry:\n    main()\n"
            "except SystemExit:\n    pass\nheavy = [m for m in ('onnx', 'onnxruntime', 'numpy') if m in sys.modules]\n"
            "print('heavy:', heavy)")
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "heavy: []", res.stdout


def test_usage_names_arguments_plainly() -> None:
    assert "Usage: onnxfcn convert [OPTIONS] MODEL\n" in runner.invoke(app, ["convert", "--help"], prog_name="onnxfcn").output
    assert "[OPTIONS] CONVERTED INPUT...\n" in runner.invoke(app, ["scan", "--help"]).output
    assert "[OPTIONS] ORIGINAL CONVERTED\n" in runner.invoke(app, ["verify", "--help"]).output


@pytest.mark.parametrize("args, words", [
    (["convert"], "Missing argument 'MODEL'"),
    (["convert", "m.onnx", "--mode", "slide"], "'slide' is not one of"),
    (["convert", "m.onnx", "--size", "12y"], "--size '12y'"),
    (["convert", "m.onnx", "--max-memory", "lots"], "--max-memory 'lots'"),
    (["scan", "m.onnx", "x.png", "--out", "o", "--mean", "a,b"], "--mean 'a,b'"),
    (["frobnicate"], "No such command 'frobnicate'"),
])
def test_usage_errors_are_one_line(args: list[str], words: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], res.output


def test_memory_refusals_suggest_what_each_command_has(tmp_path: Path) -> None:
    """convert has no --size or --batch: its refusal points at --no-self-check; a given --max-memory
    is to be raised, not passed."""
    res = runner.invoke(app, ["convert", str(DIGITS), "-o", str(tmp_path / "d.onnx"), "--max-memory", "1K"])
    assert res.exit_code == 2 and "--no-self-check" in res.output and "raise --max-memory" in res.output
    assert "batch" not in res.output.split("needs about")[1] and "pass --max-memory" not in res.output
    assert not (tmp_path / "d.onnx").exists()
    assert runner.invoke(app, ["convert", str(DIGITS), "-o", str(tmp_path / "d.onnx"), "-q"]).exit_code == 0
    res = runner.invoke(app, ["verify", str(DIGITS), str(tmp_path / "d.onnx"), "--size", "100000x100000"])
    assert res.exit_code == 2 and "use a smaller --size or --batch, or pass --max-memory" in res.output
