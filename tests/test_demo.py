"""The demo page (docs/demo/): a converted model on onnxruntime-web in headless Chromium, the
digits scene by default. The page's input is scan's preprocessing of the scene, its scores are
onnxruntime's, and at each digit's own window its best class is the digit (issue #24)."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

import onnxfcn

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "tests" / "js"
ORT_WEB = "/tests/js/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs"


class _Files(http.server.SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The repository served on 127.0.0.1 (the page, models/, onnxruntime-web's files)."""
    if shutil.which("node") is None or not (JS / "node_modules" / "playwright-core").exists() \
            or not Path("/usr/bin/chromium").exists():
        pytest.skip("needs node, tests/js's packages (npm ci --prefix tests/js) and Debian's chromium")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Files, directory=str(ROOT)))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def _open_page(url: str, tmp_path: Path) -> dict:
    out, shot = tmp_path / "page.json", tmp_path / "page.png"
    proc = subprocess.run(["node", str(JS / "demo_page.mjs"), url, str(out), str(shot)], capture_output=True,
                          text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    assert shot.stat().st_size > 10_000  # a picture was drawn
    return json.loads(out.read_text())


def test_page_scores_the_scene_as_onnxruntime_does(server: str, tmp_path: Path) -> None:
    page = _open_page(f"{server}/docs/demo/?ort={ORT_WEB}", tmp_path)
    assert page["errors"] == [] and page["status"].startswith("48x92 -> 21x43 cells of 10 classes"), page["status"]
    got = page["result"]
    # The input: the scene's grey values / 255, as scan's reader makes them.
    grey = np.asarray(Image.open(ROOT / "models" / "digits_scene.png").convert("L"), np.float32) / 255
    x = np.asarray(got["input"], np.float32).reshape(got["inputDims"])
    np.testing.assert_array_equal(x, grey[None, None])
    # The scores: onnxruntime's on that input, within 64 units of roundoff of the largest.
    model = ROOT / "docs" / "demo" / "digits_fcn.onnx"
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    scores = np.asarray(got["scores"], np.float32).reshape(got["dims"])
    assert scores.shape == want.shape == (1, 10, 21, 43)
    assert float(np.abs(scores - want).max()) <= 64 * 2.0**-24 * float(np.abs(want).max())
    # At each digit's own window (stride 2, offset 0) the best class is the digit.
    best = np.asarray(got["best"]).reshape(21, 43)
    scene = json.loads((ROOT / "models" / "digits_scene.json").read_text())
    for digit in scene["digits"]:
        x0, y0 = digit["box"][:2]
        assert best[y0 // 2, x0 // 2] == digit["label"], digit


def test_page_refuses_a_model_onnxfcn_did_not_convert(server: str, tmp_path: Path) -> None:
    page = _open_page(f"{server}/docs/demo/?ort={ORT_WEB}&model=/models/digits_cnn.onnx", tmp_path)
    assert page["status"] == "error: not a model converted by onnxfcn (no onnxfcn metadata)"


def test_committed_demo_model_is_the_conversion_of_the_digits_model() -> None:
    """docs/demo/digits_fcn.onnx is `onnxfcn convert models/digits_cnn.onnx --labels
    models/digits_labels.txt`: the same graph and weights as a fresh conversion."""
    labels = (ROOT / "models" / "digits_labels.txt").read_text().split()
    fresh, _ = onnxfcn.convert(ROOT / "models" / "digits_cnn.onnx", labels=labels)
    committed = onnx.load(ROOT / "docs" / "demo" / "digits_fcn.onnx")
    assert committed.graph == fresh.graph
    props = {p.key: p.value for p in committed.metadata_props if p.key != "onnxfcn.version"}
    assert props == {p.key: p.value for p in fresh.metadata_props if p.key != "onnxfcn.version"}
