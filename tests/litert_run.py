"""Run an ONNX model on LiteRT: onnx2tf converts it to a float32 .tflite (once, beside the model),
ai-edge-litert runs it. Runs in its own virtual environment (TensorFlow pins an older onnx than
the project's): ``tests/interop.py`` calls it with ``ONNXFCN_LITERT_PYTHON``.

    python litert_run.py MODEL.onnx IN.npz OUT.npz OUTPUT_NAME...
    python litert_run.py --batch FOLDER STEM...    # FOLDER/STEM.onnx on FOLDER/STEM.input.npz ->
                                                 # FOLDER/STEM.litert.npz, or .litert.err (one process)

onnx2tf turns NCHW tensors into NHWC: a 4-D input is transposed to what the .tflite takes, and a
4-D output back to the ONNX model's shape (read from the model). Outputs are matched by name.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

import numpy as np


def _tflite(model: Path) -> Path:
    out = model.parent / f"{model.stem}.litert"
    path = out / f"{model.stem}_float32.tflite"
    if not path.exists():
        import onnx2tf

        # onnx2tf runs 3-channel image models on sample images for its checks, which it downloads
        # from GitHub unless the file is in the working directory: seeded random images instead.
        out.mkdir(exist_ok=True)
        sample = out / "calibration_image_sample_data_20x128x128x3_float32.npy"
        np.save(sample, np.random.default_rng(0).uniform(0, 1, (20, 128, 128, 3)).astype(np.float32))
        cwd = os.getcwd()
        os.chdir(out)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                onnx2tf.convert(input_onnx_file_path=str(model), output_folder_path=str(out), non_verbose=True)
        finally:
            os.chdir(cwd)
        if not path.exists():
            raise RuntimeError("onnx2tf wrote no float32 .tflite")
    return path


def _to(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``x`` as ``shape``: as it is, or NCHW <-> NHWC."""
    if tuple(x.shape) == tuple(shape):
        return x
    for perm in ((0, 2, 3, 1), (0, 3, 1, 2)):
        if x.ndim == 4 and tuple(x.transpose(perm).shape) == tuple(shape):
            return x.transpose(perm)
    raise RuntimeError(f"LiteRT tensor of shape {list(shape)} for one of shape {list(x.shape)}")


def _key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "_", name).strip("_").lower()


def main(model: str, inp: str, out: str, outputs: list[str]) -> None:
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    proto = onnx.load(model, load_external_data=False)
    declared = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    runner = Interpreter(model_path=str(_tflite(Path(model)))).get_signature_runner()
    details = runner.get_input_details()
    with np.load(inp) as data:
        feeds = {k: data[k] for k in data.files}
    args = {}
    for name, x in feeds.items():
        key = next((k for k in details if _key(k) == _key(name)), next(iter(details)))
        args[key] = np.ascontiguousarray(_to(x, tuple(details[key]["shape"])))
    got = runner(**args)
    result = {}
    for k, name in enumerate(outputs):
        key = next((g for g in got if _key(g) == _key(name)), list(got)[k])
        y = got[key]
        want = declared.get(name)
        result[name] = _to(y, tuple(want)) if want and all(want) and y.ndim == len(want) else y
    np.savez(out, **result)


def batch(folder: Path, stems: list[str]) -> None:
    """Every model in one process (TensorFlow's start costs seconds): outputs or the error line."""
    import onnx

    for stem in stems:
        names = [o.name for o in onnx.load(folder / f"{stem}.onnx", load_external_data=False).graph.output]
        try:
            main(str(folder / f"{stem}.onnx"), str(folder / f"{stem}.input.npz"), str(folder / f"{stem}.litert.npz"),
                 names)
        except Exception as exc:  # the finding for that model
            (folder / f"{stem}.litert.err").write_text(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if sys.argv[1] == "--batch":
        batch(Path(sys.argv[2]), sys.argv[3:])
    else:
        main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
