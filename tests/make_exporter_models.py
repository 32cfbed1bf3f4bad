"""Export the exporters tier (issue #23): real exports from Hugging Face optimum, Ultralytics,
PaddlePaddle (paddle2onnx) and JAX (jax2onnx), into tests/data/exporters/.

None of these frameworks is in CI's test environment, so the models are exported once with this
script, each family in its own virtual environment, and committed. Weights are each framework's
random initialisation (nothing is downloaded), so the large weights carry no information: they
are stored as zeros (BatchNormalization's statistics and other small constants stay as exported), which git compresses to almost nothing, and ``tests/test_exporters.py`` fills them
with seeded random values at a realistic scale before every use. Everything else (graph, shapes,
symbolic dims, pads, constants) is the exporter's own output. Rerun by hand when an exporter
changes:

    python3 -m venv /tmp/hfenv && . /tmp/hfenv/bin/activate
    pip install torch==2.14.1 torchvision==0.29.1 && pip install ultralytics onnx onnxruntime onnxslim
    pip install transformers && pip install optimum-onnx
    python tests/make_exporter_models.py optimum ultralytics

    python3 -m venv /tmp/pdenv && /tmp/pdenv/bin/pip install paddlepaddle paddle2onnx onnx packaging
    /tmp/pdenv/bin/python tests/make_exporter_models.py paddle

    python3 -m venv /tmp/jxenv && /tmp/jxenv/bin/pip install jax jaxlib jax2onnx flax onnx
    /tmp/jxenv/bin/python tests/make_exporter_models.py jax

Versions used for the committed files: transformers 4.57.6 with optimum-onnx 0.1.0 (optimum
2.1.0), Ultralytics 8.4.190 with onnxslim 0.1.98, PaddlePaddle 3.3.1 with paddle2onnx 2.1.0, JAX
0.10.2 with flax 0.12.8 and jax2onnx 0.17.1; each file's doc_string says which made it.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

OUT = Path(__file__).parent / "data" / "exporters"
ZERO_ABOVE = 1024  # weights (of Conv, Gemm, MatMul) with more elements than this are stored as zeros
WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def save(proto: onnx.ModelProto, name: str, made_by: str) -> None:
    weights = {n.input[1] for n in proto.graph.node if n.op_type in WEIGHTED and len(n.input) > 1}
    for t in proto.graph.initializer:
        arr = numpy_helper.to_array(t)
        if t.name in weights and arr.dtype.kind == "f" and arr.size > ZERO_ABOVE:
            t.CopyFrom(numpy_helper.from_array(np.zeros_like(arr), t.name))
    proto.doc_string = f"{made_by}; large weights zeroed (tests/make_exporter_models.py)"
    path = OUT / f"{name}.onnx"
    onnx.save(proto, path)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


def versions(*packages: str) -> str:
    return ", ".join(f"{p} {importlib.metadata.version(p)}" for p in packages)


def optimum() -> None:
    """transformers' ResNet, ConvNeXt, EfficientNet and MobileNetV2 from config (random weights),
    through ``optimum.exporters.onnx.main_export``, as ``optimum-cli export onnx`` does."""
    import torch
    import transformers as tf
    from optimum.exporters.onnx import main_export

    torch.manual_seed(0)
    models = {
        "optimum_resnet": tf.ResNetForImageClassification(tf.ResNetConfig(
            embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="basic",
            num_labels=100)),
        "optimum_convnext": tf.ConvNextForImageClassification(tf.ConvNextConfig(
            hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1], num_labels=100, layer_scale_init_value=0.5)),
        "optimum_efficientnet": tf.EfficientNetForImageClassification(tf.EfficientNetConfig(
            width_coefficient=0.5, depth_coefficient=0.5, hidden_dim=640, image_size=64, num_labels=100)),
        "optimum_mobilenetv2": tf.MobileNetV2ForImageClassification(tf.MobileNetV2Config(
            depth_multiplier=0.35, image_size=96, num_labels=100)),
    }
    made_by = versions("transformers", "optimum", "optimum-onnx", "torch")
    for name, model in models.items():
        with tempfile.TemporaryDirectory() as tmp:
            model.eval().save_pretrained(f"{tmp}/model")
            main_export(f"{tmp}/model", output=f"{tmp}/onnx", task="image-classification")
            save(onnx.load(f"{tmp}/onnx/model.onnx"), name, f"optimum main_export ({made_by})")


def ultralytics() -> None:
    """YOLO11 classifiers (n and s) and YOLOv8n from their yaml (no weights), ``model.export``
    with fixed and with dynamic shapes, as Ultralytics' users export them."""
    import os

    os.environ["YOLO_OFFLINE"] = "1"
    from ultralytics import YOLO

    made_by = versions("ultralytics", "torch", "onnxslim")
    for yaml, name in (("yolo11n-cls.yaml", "yolo11n_cls"), ("yolo11s-cls.yaml", "yolo11s_cls"),
                       ("yolov8n-cls.yaml", "yolov8n_cls")):
        for dynamic in (False, True):
            if name == "yolov8n_cls" and dynamic:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                cwd = os.getcwd()
                os.chdir(tmp)
                try:
                    path = YOLO(yaml).export(format="onnx", imgsz=224, dynamic=dynamic, simplify=True)
                    proto = onnx.load(path)
                finally:
                    os.chdir(cwd)
            save(proto, f"{name}_{'dynamic' if dynamic else 'static'}", f"Ultralytics export ({made_by})")


def paddle() -> None:
    """paddle.vision's MobileNetV2 (x0.35) and ResNet18, saved with paddle.jit.save (dynamic
    batch), through paddle2onnx."""
    import paddle as pd
    import paddle2onnx
    from paddle.static import InputSpec

    pd.seed(0)
    made_by = versions("paddlepaddle", "paddle2onnx")
    for name, build in (("paddle_mobilenetv2", lambda: pd.vision.models.mobilenet_v2(scale=0.35, num_classes=100)),
                        ("paddle_resnet18", lambda: pd.vision.models.resnet18(num_classes=100))):
        model = build()
        model.eval()
        with tempfile.TemporaryDirectory() as tmp:
            pd.jit.save(model, f"{tmp}/m", input_spec=[InputSpec([None, 3, 64, 64], "float32", "x")])
            paddle2onnx.export(f"{tmp}/m.json", f"{tmp}/m.pdiparams", f"{tmp}/m.onnx", opset_version=13)
            save(onnx.load(f"{tmp}/m.onnx"), name, f"paddle2onnx ({made_by})")


def jax() -> None:
    """Flax NNX CNNs (NHWC): a Flatten + Dense head over a 7x7 map, and a global-mean head,
    through jax2onnx with a symbolic batch."""
    from flax import nnx
    from jax2onnx import to_onnx

    class FlattenCNN(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.c1 = nnx.Conv(3, 32, (3, 3), padding="VALID", rngs=rngs)
            self.c2 = nnx.Conv(32, 64, (3, 3), padding="SAME", rngs=rngs)
            self.d1 = nnx.Linear(64 * 7 * 7, 256, rngs=rngs)
            self.d2 = nnx.Linear(256, 100, rngs=rngs)

        def __call__(self, x):  # type: ignore[no-untyped-def]
            x = nnx.max_pool(nnx.relu(self.c1(x)), window_shape=(2, 2), strides=(2, 2))
            x = nnx.max_pool(nnx.relu(self.c2(x)), window_shape=(2, 2), strides=(2, 2))
            return self.d2(nnx.relu(self.d1(x.reshape(x.shape[0], -1))))

    class MeanCNN(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.c1 = nnx.Conv(3, 32, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs)
            self.c2 = nnx.Conv(32, 64, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs)
            self.d = nnx.Linear(64, 100, rngs=rngs)

        def __call__(self, x):  # type: ignore[no-untyped-def]
            x = nnx.relu(self.c2(nnx.relu(self.c1(x))))
            return self.d(x.mean(axis=(1, 2)))

    made_by = versions("jax", "flax", "jax2onnx")
    for name, cls, size in (("jax_flatten_cnn", FlattenCNN, 30), ("jax_mean_cnn", MeanCNN, 64)):
        proto = to_onnx(cls(nnx.Rngs(0)), [("B", size, size, 3)], model_name=name)
        save(proto, name, f"jax2onnx ({made_by})")


FAMILIES = {"optimum": optimum, "ultralytics": ultralytics, "paddle": paddle, "jax": jax}


def main(argv: list[str]) -> None:
    unknown = [a for a in argv if a not in FAMILIES]
    if not argv or unknown:
        sys.exit(f"usage: make_exporter_models.py {{{','.join(FAMILIES)}}}... (unknown: {unknown})")
    OUT.mkdir(parents=True, exist_ok=True)
    for family in argv:
        FAMILIES[family]()
    shutil.rmtree(OUT / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
