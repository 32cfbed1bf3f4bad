"""The README's examples, run: the convert and verify transcripts are compared with real output
(floats and times masked: they vary by CPU), and the Python snippet's prints with its comments."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT
from PIL import Image
from tv_export import Exports

README = (ROOT / "README.md").read_text()
FLOAT = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:e[-+]?\d+)|[-+]?\d+\.\d+")


def mask(text: str) -> list[str]:
    """Lines with every float replaced by '#' and runs of spaces collapsed (column widths follow
    the numbers' widths)."""
    return [re.sub(r"\s+", " ", FLOAT.sub("#", line)).strip() for line in text.strip().splitlines()]


def blocks(language: str = "") -> list[str]:
    """The README's fenced blocks with this info string ("" for plain), in order."""
    found: list[str] = []
    current: list[str] | None = None
    info = ""
    for line in README.splitlines():
        if line.startswith("```"):
            if current is None:
                current, info = [], line[3:].strip()
            else:
                if info == language:
                    found.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return found


def transcript(command_prefix: str) -> tuple[str, str]:
    """(command, expected output) of the README block whose first line is ``$ command_prefix...``."""
    for block in blocks():
        first, _, rest = block.partition("\n")
        if first.startswith("$ " + command_prefix):
            return first[2:], rest
    raise AssertionError(f"no README transcript for {command_prefix!r}")


def run_cli(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(command)
    assert argv[0] == "onnxfcn"
    return subprocess.run([sys.executable, "-m", "onnxfcn", *argv[1:]], cwd=cwd, capture_output=True, text=True,
                          check=False, timeout=600)


def test_mask_keeps_integers_and_words() -> None:
    """Control: sizes, counts and words survive the mask; floats and exponents do not."""
    assert mask("at 288x320, 12 of 3x4 cells: error 3.5e-06 (4.68 s) 62.5% 1e-07") == [
        "at 288x320, 12 of 3x4 cells: error # (# s) #% #"]
    assert mask("a  b\n c") == ["a b", "c"]


def test_convert_transcript(tmp_path: Path) -> None:
    command, expected = transcript("onnxfcn convert models/digits_cnn.onnx")
    shutil.copytree(ROOT / "models", tmp_path / "models")
    res = run_cli(command, tmp_path)
    assert res.returncode == 0, res.stderr
    assert mask(res.stdout) == mask(expected)


@pytest.mark.torchvision
def test_verify_transcript(tmp_path: Path, exports: Exports) -> None:

    command, expected = transcript("onnxfcn verify resnet50.onnx")
    shutil.copy(exports.torchvision("resnet50"), tmp_path / "resnet50.onnx")
    conv = run_cli("onnxfcn convert resnet50.onnx -o resnet50_fcn.onnx -q", tmp_path)
    assert conv.returncode == 0, conv.stdout + conv.stderr
    res = run_cli(command, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert mask(res.stdout) == mask(expected)


def test_python_snippet(tmp_path: Path) -> None:
    """Each print's output equals the comment on its line."""
    code = blocks("python")[0]
    wanted = [line.split("#", 1)[1].strip() for line in code.splitlines() if line.startswith("print(")]
    assert len(wanted) >= 3
    shutil.copytree(ROOT / "models", tmp_path / "models")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines() == wanted


def test_scan_transcript(tmp_path: Path) -> None:
    """The scan block: the convert line before it, then the scan command against its transcript
    and its picture against the README's."""
    command, expected = transcript("onnxfcn scan digits_fcn.onnx")
    shutil.copytree(ROOT / "models", tmp_path / "models")
    bash = next(b for b in blocks("bash") if "make_digits_scene.py" in b)
    convert_line = next(line for line in bash.splitlines() if line.startswith("onnxfcn convert"))
    assert run_cli(convert_line, tmp_path).returncode == 0
    res = run_cli(command, tmp_path)
    assert res.returncode == 0, res.stderr
    assert mask(res.stdout) == mask(expected)
    # docs/digits_scan.png is this command's picture. Text is drawn with the platform's font:
    # compare below the title, left of the legend (the labels in the boxes are Pillow's own font).
    made = np.asarray(Image.open(tmp_path / "scan" / "digits_scene.png")).astype(int)
    committed = np.asarray(Image.open(ROOT / "docs" / "digits_scan.png")).astype(int)
    assert made.shape == committed.shape
    assert np.abs(made[24:, :-150] - committed[24:, :-150]).max() <= 1


def test_every_example_line_runs_in_order(tmp_path: Path) -> None:
    """Every line of the README's bash blocks after the two set-up commands runs, in order, in one
    folder (the repository's models/ copied, benchmarks/ and tests/ linked), and exits as its
    comment says (``# exit N``; 0 otherwise). Lines that install packages are not run: the test
    extra has what they install, and tests install nothing."""
    lines = [ln.strip() for block in blocks("bash")[2:] for ln in block.splitlines()
             if ln.strip() and not ln.strip().startswith(("pip install", "#"))]
    assert sum(ln.startswith("onnxfcn ") for ln in lines) >= 5 and any(ln.startswith("python ") for ln in lines)
    shutil.copytree(ROOT / "models", tmp_path / "models")
    for folder in ("benchmarks", "tests"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    bin_dir = tmp_path / ".bin"  # `onnxfcn` and `python` as this interpreter runs them
    bin_dir.mkdir()
    for name, target in (("onnxfcn", f'"{sys.executable}" -m onnxfcn'), ("python", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for line in lines:
        m = re.search(r"#\s*exit (\d)", line)
        res = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, check=False,
                             timeout=600, env=env)
        assert res.returncode == (int(m.group(1)) if m else 0), f"{line}\n{res.stdout}\n{res.stderr}"


@pytest.mark.parametrize("script, missing", [("make_digits_scene.py", "sklearn"), ("make_digits_cnn.py", "torch")])
def test_model_scripts_name_what_they_need(script: str, missing: str, tmp_path: Path) -> None:
    """A script in models/ run without what it needs says so in one line, and exits non-zero."""
    code = (f"import runpy, sys; sys.modules[{missing!r}] = None; sys.argv = ['{script}']; "
            f"runpy.run_path({str(ROOT / 'models' / script)!r}, run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False,
                         timeout=120)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script} needs") and "pip install" in lines[0], res.stderr
