"""Export the Keras test tier: real ``tf.keras`` models through tf2onnx, into tests/data/keras/.

TensorFlow is too heavy for CI's test environment, so the models are exported once with this
script and committed (issue #9). Weights are Keras's own random initialisation (``weights=None``),
so the large ones carry no information: they are stored as zeros, which git compresses to almost
nothing, and ``tests/test_keras.py`` fills them with seeded random values at a realistic scale
before every use. Everything else (graph, layouts, pads, Keras's Rescaling and Normalization
constants, shape constants) is the exporter's own output, except that the Normalization layer's
mean and variance, which tf2onnx 1.17 leaves as graph inputs under Keras 3, are written back as
initializers (``supply_normalization``).

    python3 -m venv /tmp/tfenv && . /tmp/tfenv/bin/activate
    pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0 onnx && python tests/make_keras_models.py

Models: a padding-free Sequential CNN (Flatten + Dense), a small VGG-style Flatten head with SAME
padding, MobileNetV2 (alpha 0.35, 96x96), EfficientNetB0 (64x64), and the VGG-style model again
with dynamic H and W (converted with ``--size``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
from onnx import numpy_helper

OUT = Path(__file__).parent / "data" / "keras"
ZERO_ABOVE = 1024  # float initializers with more elements than this are stored as zeros


def sequential_valid() -> tf.keras.Model:
    layers = tf.keras.layers
    return tf.keras.Sequential([
        tf.keras.Input((24, 24, 3)),
        layers.Conv2D(16, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(32, 3, activation="relu"),
        layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(10),
    ])


def vgg_style(size: int | None = 32) -> tf.keras.Model:
    layers = tf.keras.layers
    inp = tf.keras.Input((size, size, 3))
    x = inp
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    if size is None:  # dynamic H and W: the dense head still needs its 4x4 map at the reference size
        x = layers.Reshape((4 * 4 * 64,))(x)
    else:
        x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    return tf.keras.Model(inp, layers.Dense(10)(x))


MODELS = {
    "sequential_valid": (sequential_valid, 24),
    "vgg_flatten": (vgg_style, 32),
    "mobilenetv2_035": (lambda: tf.keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10), 96),
    "efficientnetb0": (lambda: tf.keras.applications.EfficientNetB0(
        input_shape=(64, 64, 3), weights=None, classes=10, classifier_activation=None), 64),
    "vgg_flatten_dynamic": (lambda: vgg_style(None), None),
}


def supply_normalization(proto: onnx.ModelProto, model: tf.keras.Model) -> None:
    """tf2onnx 1.17 under Keras 3 leaves a Normalization layer's mean and variance as graph inputs
    (``.../Sub/y:0``, ``.../Sqrt/x:0``) instead of freezing them; put the layer's own values back
    as initializers, as a frozen export has them."""
    norms = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Normalization)]
    if not norms:
        return
    values = {"Sub/y:0": np.asarray(norms[0].mean, np.float32), "Sqrt/x:0": np.asarray(norms[0].variance, np.float32)}
    for vi in list(proto.graph.input):
        suffix = next((k for k in values if vi.name.endswith(k)), None)
        if suffix is None:
            continue
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        proto.graph.initializer.append(numpy_helper.from_array(values[suffix].reshape(dims), vi.name))
        proto.graph.input.remove(vi)


def export(name: str) -> Path:
    build, size = MODELS[name]
    model = build()
    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="image"),)

    @tf.function(input_signature=spec)
    def forward(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=13)
    supply_normalization(proto, model)
    for t in proto.graph.initializer:
        arr = numpy_helper.to_array(t)
        if arr.dtype.kind == "f" and arr.size > ZERO_ABOVE:
            t.CopyFrom(numpy_helper.from_array(np.zeros_like(arr), t.name))
    proto.doc_string = f"tf.keras {tf.__version__} via tf2onnx {tf2onnx.__version__}; large weights zeroed"
    path = OUT / f"{name}.onnx"
    onnx.save(proto, path)
    return path


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        path = export(name)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
