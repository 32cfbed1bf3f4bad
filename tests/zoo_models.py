"""The model-zoo graphs that ship inside the onnx wheel, with seeded random weights at realistic scale.

As shipped their weights are ConstantOfShape(0.02) nodes, so every class score is equal. Here every
such weight becomes an initializer, by its role (read off the node that consumes it):

- Conv and Gemm weights: He-normal, N(0, 2 / fan_in); their biases 0;
- BatchNormalization: scale 1, bias 0, and running mean and variance calibrated in graph order on
  random images, so that every BatchNorm output has zero mean and unit variance;
- the last Gemm is scaled so that the logits have standard deviation ``LOGIT_STD``.

The 100M-element first dense layer of VGG19, AlexNet and ZFNet (25088 -> 4096 and the like) is
included: wide heads are where rounding shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LOGIT_STD = 3.0


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def realistic(name: str, seed: int = 0) -> onnx.ModelProto:
    model = onnx.load(LIGHT / f"light_{name}.onnx")
    g = model.graph
    rng = np.random.default_rng(seed)
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    role: dict[str, tuple[onnx.NodeProto, int]] = {}
    for node in g.node:
        for k, i in enumerate(node.input):
            role.setdefault(i, (node, k))
    values: dict[str, np.ndarray] = {}
    keep = []
    for node in g.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in init:
            keep.append(node)
            continue
        shape = [int(v) for v in init[node.input[0]]]
        user, k = role[node.output[0]]
        while user.op_type in ("Unsqueeze", "Reshape", "Identity") and user.output[0] in role:
            user, k = role[user.output[0]]  # a BatchNorm written as Unsqueeze -> Mul, Add (DenseNet)
        if (user.op_type in ("Conv", "Gemm") and k == 1) or len(shape) >= 2:  # weights, also through a Reshape
            if user.op_type == "Gemm" and k == 1:
                trans_b = next((a.i for a in user.attribute if a.name == "transB"), 0)
                fan_in = shape[1] if trans_b else shape[0]
            else:
                fan_in = int(np.prod(shape[1:]))
            values[node.output[0]] = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2 / fan_in))
        elif user.op_type == "BatchNormalization":
            values[node.output[0]] = np.full(shape, 1.0 if k in (1, 4) else 0.0, np.float32)
        elif user.op_type == "Mul":  # a decomposed BatchNorm's scale
            values[node.output[0]] = np.ones(shape, np.float32)
        else:  # biases
            values[node.output[0]] = np.zeros(shape, np.float32)
    del g.node[:]
    g.node.extend(keep)
    bns = [n for n in g.node if n.op_type == "BatchNormalization"]
    stats = {n.input[i] for n in bns for i in (3, 4)}
    for n in stats:  # some graphs store the running statistics as initializers
        if n not in values:
            values[n] = np.full(init[n].shape, 0.0 if any(b.input[3] == n for b in bns) else 1.0, np.float32)
    x = np.random.default_rng(seed + 1).standard_normal((1, 3, 224, 224)).astype(np.float32)  # batch fixed at 1
    image = next(i.name for i in g.input if i.name not in init and i.name not in values)
    if bns:  # calibrate with the running statistics as graph inputs: one session for every step
        calib = onnx.ModelProto()
        calib.CopyFrom(model)
        kept = [t for t in calib.graph.initializer if t.name not in stats]
        del calib.graph.initializer[:]
        calib.graph.initializer.extend(kept)
        calib.graph.initializer.extend(numpy_helper.from_array(v, n) for n, v in values.items() if n not in stats)
        known = {i.name for i in calib.graph.input}
        calib.graph.input.extend(helper.make_tensor_value_info(n, 1, list(values[n].shape)) for n in stats if n not in known)
        del calib.graph.output[:]
        calib.graph.output.extend(helper.make_tensor_value_info(n.input[0], 1, None) for n in bns)
        sess = _session(calib)
        for bn in bns:
            feeds = {image: x, **{n: values[n] for n in stats}}
            act = sess.run([bn.input[0]], feeds)[0]
            values[bn.input[3]] = act.mean(axis=(0, 2, 3)).astype(np.float32)
            values[bn.input[4]] = act.var(axis=(0, 2, 3)).astype(np.float32)
    kept = [t for t in g.initializer if t.name not in values]
    del g.initializer[:]
    g.initializer.extend(kept)
    for n, v in values.items():
        g.initializer.append(numpy_helper.from_array(v, n))
        if not any(i.name == n for i in g.input):  # IR 3 lists initializers as inputs too
            g.input.append(helper.make_tensor_value_info(n, 1, list(v.shape)))
    # scale the last dense (or 1x1 classifier) layer so that the logits, the softmax's input, have
    # std LOGIT_STD (SqueezeNet's ReLU and global pool after its last Conv scale along with it)
    last = [n for n in g.node if n.op_type in ("Gemm", "Conv")][-1]
    logit_name = next((n.input[0] for n in g.node if n.op_type == "Softmax"), g.output[0].name)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(logit_name, 1, None))
    logits = _session(probe).run([logit_name], {image: x[:1]})[0]
    scale = np.float32(LOGIT_STD / float(logits.std()))
    by_name = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    for name in last.input[1:3]:
        while name not in by_name and producer[name].op_type in ("Reshape", "Identity"):
            name = producer[name].input[0]  # a weight reshaped on its way to the Gemm
        t = by_name[name]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * scale, name))
    return model

