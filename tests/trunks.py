"""Trunks of every kind the geometry meets: a deep padding-free stride-32 classifier (output
strides), channel shuffles and whole-map Slices (trunk rewrites), branches that agree only at
some sizes (lattices)."""

from __future__ import annotations

import numpy as np
import onnx
from builders import C_FEAT, REF, Builder, gemm, image_shape

DEEP_REF = 190  # 5 stages of (3x3 valid conv, /2): 190 -> 4x4 features, total stride 32


def deep(head: str = "flatten", down: str = "maxpool", opset: int = 13, shortcut: bool = False,
         pool: str | None = None, pad_node: str | None = None, k: int = 40, pool_pads: bool = False,
         se: bool = False) -> onnx.ModelProto:
    """A padding-free stride-32 classifier (unless ``pad_node``), with a wide head whose logits
    have a standard deviation of several units.

    ``down``: how each stage halves ('maxpool' 2x2, 'conv' 2x2 stride 2). ``shortcut``: stage 3
    halves in two branches (MaxPool 3x3/2 and Conv 3x3/2) that an Add merges. ``pool``: an extra
    3x3 stride-1 pool (MaxPool, AveragePool) at the end, after the cut of any output stride.
    ``pad_node``: a Pad node (that mode) before the last stage's convolution. ``pool_pads``: that
    pool pads 1 (left out of an average). ``se``: a squeeze-excitation block (global average pool,
    1x1 Conv, Sigmoid, Mul) in the last stage, after the cut. ``down='ceil'``: the halving pools
    are 3x3 stride 2 with ceil_mode (GoogLeNet's), whose last window is partial at 190.
    """
    b = Builder(opset, seed=3)
    x, c_in = "image", 3
    for stage, c in enumerate([8, 12, 16, 16, 24]):
        if pad_node and stage == 4:
            x = b.node("Pad", [x, b.ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])], mode=pad_node)
        x = b.node("Relu", [b.node("Conv", [x, b.weight("w", (c, c_in, 3, 3)), b.weight("b", (c,), 0.1)],
                                   kernel_shape=[3, 3])])
        if se and stage == 4:
            g = b.node("GlobalAveragePool", [x])
            g = b.node("Sigmoid", [b.node("Conv", [g, b.weight("se", (c, c, 1, 1), 2.0)], kernel_shape=[1, 1])])
            x = b.node("Mul", [x, g])
        if shortcut and stage == 2:
            a = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])
            x = b.node("Add", [a, b.node("Conv", [x, b.weight("s", (c, c, 3, 3))], kernel_shape=[3, 3],
                                         strides=[2, 2])])
        elif down == "conv":
            x = b.node("Conv", [x, b.weight("d", (c, c, 2, 2))], kernel_shape=[2, 2], strides=[2, 2])
        elif down == "ceil":
            x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
        else:
            x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        c_in = c
    if pool:  # 3x3 stride 1 after the last stride: dilated by any output stride below 32
        x = b.node(pool, [x], kernel_shape=[3, 3], strides=[1, 1], pads=[int(pool_pads)] * 4)
    fh = (5 if pad_node else 4) - (2 if pool and not pool_pads else 0)
    if head == "gap":
        x = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
        d = 24
    elif head == "gmp":
        x = b.node("Flatten", [b.node("GlobalMaxPool", [x])], axis=1)
        d = 24
    else:
        x = b.node("Flatten", [x], axis=1)
        d = 24 * fh * fh
    x = b.node("Relu", [gemm(b, x, d, 64)])
    w = b.const("fcw", (b.rng.standard_normal((k, 64)) * 6 / np.sqrt(64)).astype(np.float32))
    y = b.node("Gemm", [x, w, b.weight("fcb", (k,), 0.5)], transB=1)
    return b.model(["N", 3, DEEP_REF, DEEP_REF], [y], out_names=["logits"])


def shuffle_model(batch_in_shape: int = 1) -> onnx.ModelProto:
    """Channel shuffle with a constant 5-D Reshape, as torchvision's ShuffleNetV2 exports it."""
    b = Builder(13)
    y = b.node("Conv", ["image", b.weight("w", (C_FEAT, 3, 3, 3))], kernel_shape=[3, 3])
    y = b.node("Reshape", [y, b.ints("s5", [batch_in_shape, 2, C_FEAT // 2, REF - 2, REF - 2])], name="shuffle_in")
    y = b.node("Transpose", [y], perm=[0, 2, 1, 3, 4])
    y = b.node("Reshape", [y, b.ints("s4", [batch_in_shape, C_FEAT, REF - 2, REF - 2])], name="shuffle_out")
    y = b.node("MaxPool", [b.node("Relu", [y])], kernel_shape=[2, 2], strides=[2, 2])
    y = gemm(b, b.node("Flatten", [y], axis=1), C_FEAT * 8 * 8, 5)
    return b.model(image_shape(), [y])


def full_slice_model(opset: int = 13) -> onnx.ModelProto:
    """A Slice that keeps the whole map, with its ends baked at the reference size."""
    b = Builder(opset)
    y = b.node("Conv", ["image", b.weight("w", (C_FEAT, 3, 3, 3))], kernel_shape=[3, 3])
    if opset >= 10:
        y = b.node("Slice", [y, b.ints("st", [0, 0]), b.ints("en", [REF - 2, REF - 2]), b.ints("ax", [2, 3])],
                   name="keep_all")
    else:
        y = b.node("Slice", [y], starts=[0, 0], ends=[REF - 2, REF - 2], axes=[2, 3], name="keep_all")
    y = gemm(b, b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1), C_FEAT, 5)
    return b.model(image_shape(), [y])


def _floor_ceil_merge() -> onnx.ModelProto:
    """A MaxPool 2/2 branch (floor(m/2)) and a padded Conv 3/2 branch (ceil(m/2)) added: they agree
    only where the map m = n - 2 is even, so at even input sizes alone."""
    b = Builder(13, seed=31)
    x = b.node("Conv", ["image", b.weight("w1", (8, 3, 3, 3)), b.weight("b1", (8,), 0.1)], kernel_shape=[3, 3])
    x = b.node("Relu", [x])
    a = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    c = b.node("Conv", [x, b.weight("w2", (8, 8, 3, 3)), b.weight("b2", (8,), 0.1)], kernel_shape=[3, 3],
               strides=[2, 2], pads=[1, 1, 1, 1])
    y = b.node("Relu", [b.node("Add", [a, c])])
    y = b.node("Conv", [y, b.weight("w3", (8, 8, 3, 3)), b.weight("b3", (8,), 0.1)], kernel_shape=[3, 3])
    y = gemm(b, b.node("Flatten", [y], axis=1), 8 * 7 * 7, 12)
    y = gemm(b, b.node("Relu", [y]), 12, 6)
    return b.model([1, 3, 20, 20], [y], out_names=["scores"])


def se_linear_model(batch_in_shape: bool = True) -> onnx.ModelProto:
    """Squeeze-excitation through Linear layers, as ``y = x.mean((2, 3)).view(b, c)`` ...
    ``.view(b, c, 1, 1)`` exports with a static batch (``batch_in_shape``: the shapes hold the
    batch of 1; else Flatten and a -1). No padding anywhere: only the pool makes the cells inexact."""
    b = Builder(13, seed=41)
    x = b.node("Relu", [b.node("Conv", ["image", b.weight("w", (C_FEAT, 3, 3, 3)), b.weight("bw", (C_FEAT,), 0.1)],
                                kernel_shape=[3, 3])])
    y = b.node("ReduceMean", [x], axes=[2, 3], keepdims=0, name="se_pool")
    y = b.node("Reshape", [y, b.ints("s2", [1, C_FEAT])], name="se_view") if batch_in_shape else y
    y = b.node("Relu", [gemm(b, y, C_FEAT, 4)])
    y = b.node("Sigmoid", [gemm(b, y, 4, C_FEAT)])
    y = b.node("Reshape", [y, b.ints("s4", [1 if batch_in_shape else -1, C_FEAT, 1, 1])], name="se_unview")
    y = b.node("MaxPool", [b.node("Mul", [x, y])], kernel_shape=[2, 2], strides=[2, 2])
    y = gemm(b, b.node("Flatten", [y], axis=1), C_FEAT * 8 * 8, 5)
    return b.model(image_shape(), [y])


def radix_split_model() -> onnx.ModelProto:
    """ResNeSt's split attention: a 5-D Reshape into 2 radix groups, their sum (ReduceSum without
    keepdims), a pooled gate with a softmax across the groups through constant batch-1 Reshapes,
    and the gated groups summed back into one map."""
    b = Builder(13, seed=43)
    x = b.node("Relu", [b.node("Conv", ["image", b.weight("w", (2 * C_FEAT, 3, 3, 3))], kernel_shape=[3, 3])])
    hw = REF - 2
    split = b.node("Reshape", [x, b.ints("s5", [1, 2, C_FEAT, hw, hw])], name="radix_split")
    total = b.node("ReduceSum", [split, b.ints("ax1", [1])], keepdims=0, name="radix_sum")
    gate = b.node("ReduceMean", [total], axes=[2, 3], keepdims=1, name="radix_pool")
    gate = b.node("Conv", [gate, b.weight("fc", (2 * C_FEAT, C_FEAT, 1, 1))], kernel_shape=[1, 1])
    gate = b.node("Reshape", [gate, b.ints("r4", [1, 1, 2, -1])], name="rsoftmax_view")
    gate = b.node("Softmax", [b.node("Transpose", [gate], perm=[0, 2, 1, 3])], axis=1)
    gate = b.node("Reshape", [gate, b.ints("r2", [1, -1])], name="rsoftmax_flat")
    gate = b.node("Reshape", [gate, b.ints("r5", [1, 2, C_FEAT, 1, 1])], name="gate_view")
    y = b.node("ReduceSum", [b.node("Mul", [split, gate]), b.ints("ax1b", [1])], keepdims=0, name="gated_sum")
    y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = gemm(b, b.node("Flatten", [y], axis=1), C_FEAT * 8 * 8, 5)
    return b.model(image_shape(), [y])


def grn_model(head_reduction: str = "ReduceMean") -> onnx.ModelProto:
    """ConvNeXt-V2's global response normalization: the L2 norm of each channel over the map
    (ReduceL2 over H and W), divided by its mean over the channels, scales the map; the head pools
    with ``head_reduction`` over H and W."""
    b = Builder(13, seed=47)
    x = b.node("Conv", ["image", b.weight("w", (C_FEAT, 3, 3, 3)), b.weight("bw", (C_FEAT,), 0.1)], kernel_shape=[3, 3])
    g = b.node("ReduceL2", [x], axes=[2, 3], keepdims=1, name="grn_norm")
    n = b.node("Div", [g, b.node("Add", [b.node("ReduceMean", [g], axes=[1], keepdims=1),
                                         b.const("eps", np.asarray(1e-6, np.float32))])])
    y = b.node("Add", [x, b.node("Mul", [b.node("Mul", [x, n]), b.weight("gamma", (1, C_FEAT, 1, 1), 1.0)])])
    y = b.node(head_reduction, [b.node("Relu", [y])], axes=[2, 3], keepdims=0, name="head_pool")
    return b.model(image_shape(), [gemm(b, y, C_FEAT, 5)])


def group_norm_model(groups: int = 2, batch_in_shape: bool = False) -> onnx.ModelProto:
    """GroupNorm as PyTorch's exporter writes it: Reshape to N x G x (C/G*H*W) (``[0, G, -1]``, or
    the exported batch ``[1, G, -1]``), InstanceNormalization, Reshape back to Shape(x), then the
    per-channel scale and shift."""
    b = Builder(13, seed=53)
    x = b.node("Conv", ["image", b.weight("w", (C_FEAT, 3, 3, 3)), b.weight("bw", (C_FEAT,), 0.5)], kernel_shape=[3, 3])
    g = b.node("Reshape", [x, b.ints("grp", [1 if batch_in_shape else 0, groups, -1])], name="gn_group")
    g = b.node("InstanceNormalization", [g, b.const("one", np.ones(groups, np.float32)),
                                         b.const("zero", np.zeros(groups, np.float32))], epsilon=1e-5, name="gn_norm")
    g = b.node("Reshape", [g, b.node("Shape", [x])], name="gn_back")
    g = b.node("Add", [b.node("Mul", [g, b.weight("gamma", (C_FEAT, 1, 1), 1.0)]), b.weight("beta", (C_FEAT, 1, 1))])
    y = b.node("MaxPool", [b.node("Relu", [g])], kernel_shape=[2, 2], strides=[2, 2])
    return b.model(image_shape(), [gemm(b, b.node("Flatten", [y], axis=1), C_FEAT * 8 * 8, 5)])


def computed_pad_model() -> onnx.ModelProto:
    """SAME padding computed from the map's size, as timm's ``pad_same`` (tf_ EfficientNets,
    NFNets) exports: 1 at the end of H and W where the map is even, 0 where odd, before a stride-2
    convolution."""
    b = Builder(13, seed=59)
    x = b.node("Relu", [b.node("Conv", ["image", b.weight("w", (C_FEAT, 3, 3, 3))], kernel_shape=[3, 3])])
    shape = b.node("Shape", [x])
    ends = b.node("Mod", [b.node("Add", [b.node("Slice", [shape, b.ints("s", [2]), b.ints("e", [4])]), b.ints("one", [1])]),
                          b.ints("two", [2])])
    pads = b.node("Concat", [b.ints("zeros", [0, 0, 0, 0, 0, 0]), ends], axis=0)
    y = b.node("Pad", [x, pads], name="same_pad")
    y = b.node("Conv", [y, b.weight("w2", (C_FEAT, C_FEAT, 3, 3))], kernel_shape=[3, 3], strides=[2, 2])
    return b.model(image_shape(), [gemm(b, b.node("Flatten", [b.node("Relu", [y])], axis=1), C_FEAT * 8 * 8, 5)])


def space_to_depth_model(spelled: bool = True, b: int = 2) -> onnx.ModelProto:
    """A space-to-depth stem (TResNet's): spelled as PyTorch exports it (Reshape, Transpose,
    Reshape) or as ONNX's SpaceToDepth; then a valid 3x3 conv, a 2x2 max pool and a dense head."""
    bld = Builder(13, seed=61)
    if spelled:
        y = bld.node("Reshape", ["image", bld.ints("s6", [1, 3, REF // b, b, REF // b, b])])
        y = bld.node("Transpose", [y], perm=[0, 3, 5, 1, 2, 4])
        y = bld.node("Reshape", [y, bld.ints("s4", [1, 3 * b * b, REF // b, REF // b])], name="s2d")
    else:
        y = bld.node("SpaceToDepth", ["image"], blocksize=b, name="s2d")
    y = bld.node("Conv", [y, bld.weight("w", (C_FEAT, 3 * b * b, 3, 3))], kernel_shape=[3, 3])
    m = REF // b - 2
    y = bld.node("MaxPool", [bld.node("Relu", [y])], kernel_shape=[2, 2], strides=[2, 2])
    return bld.model(image_shape(), [gemm(bld, bld.node("Flatten", [y], axis=1), C_FEAT * (m // 2) ** 2, 5)])


def map_statistic_model(op: str, opset: int = 13, **attrs: int) -> onnx.ModelProto:
    """A valid 3x3 conv, then ``op`` on the map (a normalization or softmax; over H or W it is a
    statistic of the whole map, over the channels it is not), a 2x2 max pool and a dense head."""
    b = Builder(opset, seed=67)
    x = b.node("Conv", ["image", b.weight("w", (C_FEAT, 3, 3, 3)), b.weight("bw", (C_FEAT,), 0.3)], kernel_shape=[3, 3])
    if op == "InstanceNormalization":
        x = b.node(op, [x, b.weight("s", (C_FEAT,), 1.0), b.weight("sb", (C_FEAT,), 0.5)], name="stat")
    elif op == "GroupNormalization":  # opset 21: scale and bias per channel
        x = b.node(op, [x, b.weight("s", (C_FEAT,), 1.0), b.weight("sb", (C_FEAT,), 0.5)], name="stat", **attrs)
    elif op == "CumSum":  # a running sum down H
        x = b.node(op, [x, b.const("axis", np.asarray(2, np.int64))], name="stat")
    else:
        x = b.node(op, [x], name="stat", **attrs)
    y = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    return b.model(image_shape(), [gemm(b, b.node("Flatten", [y], axis=1), C_FEAT * 8 * 8, 5)])


def resize_to_map_model(constant_hw: bool = False) -> onnx.ModelProto:
    """A gate computed at half resolution (AvgPool 2) and resized back to the size of the map it
    multiplies, the sizes computed from that map's Shape (``F.interpolate(g, size=x.shape[-2:])``
    exported with dynamic H and W); ``constant_hw``: H and W as constants, N and C from the gate's
    Shape (GhostNetV2's DFC attention, as both PyTorch exporters write it)."""
    b = Builder(13, seed=71)
    x = b.node("Relu", [b.node("Conv", ["image", b.weight("w", (C_FEAT, 3, 3, 3))], kernel_shape=[3, 3])])
    g = b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    g = b.node("Sigmoid", [b.node("Conv", [g, b.weight("wg", (C_FEAT, C_FEAT, 1, 1))], kernel_shape=[1, 1])])
    hw = b.ints("hw", [REF - 2, REF - 2]) if constant_hw else \
        b.node("Slice", [b.node("Shape", [x]), b.ints("s1", [2]), b.ints("e1", [4])])
    sizes = b.node("Concat", [b.node("Slice", [b.node("Shape", [g]), b.ints("s0", [0]), b.ints("e0", [2])]), hw], axis=0)
    up = b.node("Resize", [g, "", "", sizes], mode="nearest", coordinate_transformation_mode="asymmetric",
                nearest_mode="floor", name="gate_up")
    y = b.node("MaxPool", [b.node("Mul", [x, up])], kernel_shape=[2, 2], strides=[2, 2])
    return b.model(image_shape(), [gemm(b, b.node("Flatten", [y], axis=1), C_FEAT * 8 * 8, 5)])
