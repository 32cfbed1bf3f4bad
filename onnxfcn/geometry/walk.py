"""The walk: from the image input to the head's feature maps, node by node, composing each
node's step (``steps.py``) into the geometry of every map.

Receptive-field arithmetic per spatial axis, layer by layer (as in the FCN and OverFeat papers).
Where branches merge (residual Add, Concat), the fields unite and the sizes must agree: where
they agree only at some input sizes, the walk narrows the model's size lattice
(``lattice.py``). A global pool inside the trunk (squeeze-excitation), or attention over a
map's positions (tokens reshaped back into the map), makes every later cell depend on the whole image. Under an output stride S the same arithmetic runs with the strides
taken out of the last strided layers and every later kernel dilated (``stride.py`` decides each).
"""

from __future__ import annotations

import logging
import math

import onnx

from ..errors import OnnxFcnError, UnsupportedModelError
from ..graph import node_label
from ..head import NCHW_AXES, Analysis, TensorState, Tokens
from ..stride import Edit
from .grid import WHOLE_IMAGE, Geometry
from .lattice import agreeing, lattice_text
from .state import AxisGeo, MapGeo, Walk
from .steps import step_for

log = logging.getLogger(__name__)


def plan_geometry(analysis: Analysis, features: list[str], feature_window: tuple[int, int], mode: str,
                  output_stride: tuple[int, int] | None = None) -> tuple[Geometry, dict[str, Edit]]:
    """The geometry, and with ``output_stride`` S the trunk edits that give it (S must divide the
    network's own stride; equal to it, nothing changes)."""
    natural, _ = walk_trunk(analysis, features, feature_window, mode, None)
    if output_stride is None:
        return natural, {}
    for ax, name in ((0, "H"), (1, "W")):
        if natural.stride[ax] % output_stride[ax]:
            raise OnnxFcnError(f"output stride {output_stride[0]}x{output_stride[1]} must divide the network's own "
                               f"stride {natural.stride[0]}x{natural.stride[1]} (on {name})")
    if tuple(output_stride) == natural.stride:
        return natural, {}
    return walk_trunk(analysis, features, feature_window, mode, output_stride)


def walk_trunk(analysis: Analysis, features: list[str], feature_window: tuple[int, int], mode: str,
               target: tuple[int, int] | None) -> tuple[Geometry, dict[str, Edit]]:
    """Walk the trunk from the image input to ``features`` and compose the per-layer geometry."""
    walk = Walk(analysis, target)
    walk.maps[analysis.image.name] = MapGeo(AxisGeo(), AxisGeo(), [])
    needed = analysis.index.ancestors(features)
    for node in analysis.index.graph.node:
        if not any(o in needed for o in node.output):
            continue
        tokens = next((analysis.info[i].tokens for i in node.input if i in analysis.info), None)
        if tokens is not None and analysis.state(node.output[0]) is TensorState.SPATIAL:
            walk.maps[node.output[0]] = _from_tokens(walk, node, tokens)
            continue
        ins = [i for i in node.input if i in walk.maps]
        if not ins:
            _follow_pooled(walk, node)
            continue
        state = analysis.state(node.output[0])
        if state in (TensorState.POOLED, TensorState.FLAT):  # FLAT: a pool that flattens (keepdims=0)
            _global_pool(walk, node, ins[0])
            continue
        if state is not TensorState.SPATIAL:
            continue
        out = _merged(walk, node, ins)
        step_for(walk, node)(walk, node, out)
        walk.coarse = [math.lcm(walk.coarse[0], out.h.jump * out.h.dense),
                       math.lcm(walk.coarse[1], out.w.jump * out.w.dense)]
        for o in node.output:
            if o:
                walk.maps[o] = out
    return _geometry(walk, features, feature_window, mode), walk.edits


def _follow_pooled(walk: Walk, node: onnx.NodeProto) -> None:
    """After a global pool inside the trunk (squeeze-excitation): its output rejoins the trunk
    later, and the cells it reaches depend on the whole image. Its vectors may be flattened on the
    way (a ``view(b, c)`` before a Linear): they carry the pool too."""
    info = walk.analysis.info
    outs = [o for o in node.output if walk.analysis.state(o) in (TensorState.POOLED, TensorState.FLAT)]
    src = [i for i in node.input if i in walk.pooled_in_trunk]
    # tokens contracted away: the node that mixed (pooled) their positions
    mixed = [t.mixing for i in node.input if i in info and (t := info[i].tokens) is not None and t.mixing]
    for o in outs:
        walk.pooled_in_trunk[o] = walk.pooled_in_trunk[src[0]] if src else mixed[0] if mixed else node_label(node)


def _from_tokens(walk: Walk, node: onnx.NodeProto, tokens: Tokens) -> MapGeo:
    """Tokens reshaped back into the map they came from: its geometry, and where attention mixed
    the positions on the way, every cell sees the whole image."""
    seen = walk.maps.get(tokens.source)
    if seen is None:
        raise UnsupportedModelError(f"tokens of '{tokens.source}', a map the walk has not met", node_label(node))
    out = MapGeo(seen.h.copy(), seen.w.copy(), list(seen.reasons))
    if tokens.mixing is not None:
        if walk.target is not None:
            raise UnsupportedModelError(
                f"output stride: {tokens.mixing_kind} over the map's positions ({tokens.mixing}) would cover the "
                "denser map's extra cells too", node_label(node))
        out.reasons.append(f"{tokens.mixing_kind} over the map's positions ({tokens.mixing}) {WHOLE_IMAGE}")
    return out


def _global_pool(walk: Walk, node: onnx.NodeProto, source: str) -> None:
    """A global pool inside the trunk; under an output stride it reads the original's cells of the
    denser map (a MaxPool 1x1 with the density as strides picks them)."""
    walk.pooled_in_trunk[node.output[0]] = node_label(node)
    seen = walk.maps[source]
    if (seen.h.dense, seen.w.dense) != (1, 1):
        if node.input[0] != source or walk.analysis.layout(source) != NCHW_AXES:
            raise UnsupportedModelError("output stride: a global pooling inside the trunk over a map that is "
                                        "not NCHW", node_label(node))
        walk.edits[node.output[0]] = Edit(node.op_type, (1, 1), subsample=(seen.h.dense, seen.w.dense))


def _merged(walk: Walk, node: onnx.NodeProto, ins: list[str]) -> MapGeo:
    """The geometry ``node``'s output starts from: its first map input's, with the other map inputs
    merged in (fields united, the size lattice narrowed), and the reasons of all of them."""
    base = walk.maps[ins[0]]
    out = MapGeo(base.h.copy(), base.w.copy(), list(dict.fromkeys(r for i in ins for r in walk.maps[i].reasons)))
    image = walk.analysis.image
    for other in ins[1:]:
        for axis_key, (mine, theirs, ref_n) in enumerate(((out.h, walk.maps[other].h, image.height),
                                                          (out.w, walk.maps[other].w, image.width))):
            _merge_axis(walk, node, axis_key, mine, theirs, ref_n)
    for i in node.input:
        if i in walk.pooled_in_trunk:
            out.reasons.append(f"global pooling inside the trunk ({walk.pooled_in_trunk[i]}) {WHOLE_IMAGE}")
    return out


def _merge_axis(walk: Walk, node: onnx.NodeProto, axis_key: int, mine: AxisGeo, theirs: AxisGeo, ref_n: int) -> None:
    if (theirs.jump, theirs.dense) != (mine.jump, mine.dense):
        raise UnsupportedModelError(
            f"merges maps of stride {mine.jump * mine.dense} and {theirs.jump * theirs.dense}"
            + (f" (at output stride {mine.jump} and {theirs.jump})" if walk.target else ""), node_label(node))
    # Sizes repeat with the coarsest stride on the way here (an upsampled branch's too).
    agree = agreeing(mine.size, theirs.size, math.lcm(walk.coarse[axis_key], mine.jump * mine.dense), ref_n)
    if len(agree[1]) < agree[0]:
        if not walk.narrow(axis_key, agree):  # the original itself runs at the reference size
            raise UnsupportedModelError(
                f"merges branches whose sizes differ at the reference size ({mine.size(ref_n)} vs "
                f"{theirs.size(ref_n)})", node_label(node))
        log.info("%s: branch sizes agree only at %s", node_label(node), lattice_text(agree))
    end = max(mine.start + mine.rf, theirs.start + theirs.rf)
    mine.start = min(mine.start, theirs.start)
    mine.rf = end - mine.start


def _geometry(walk: Walk, features: list[str], feature_window: tuple[int, int], mode: str) -> Geometry:
    """The geometry of the feature map the head reads, checked against shape inference."""
    analysis, image = walk.analysis, walk.analysis.image
    feats = [walk.maps[f] for f in features if f in walk.maps]
    if not feats:
        raise UnsupportedModelError("the head's feature map is not computed from the image input")
    g0 = feats[0]
    if any((g.h.jump, g.w.jump) != (g0.h.jump, g0.w.jump) for g in feats[1:]):
        raise UnsupportedModelError("heads read feature maps of different strides")
    # Check the size model against shape inference at the reference size.
    lay = analysis.layout(features[0])
    shape = analysis.index.static_shape(features[0])
    ref = (image.height, image.width)
    if shape is not None and walk.target is None:  # (at an output stride the map is denser than inferred)
        got = (g0.h.size(ref[0]), g0.w.size(ref[1]))
        want = (int(shape[lay[2]]), int(shape[lay[3]]))
        if got != want:
            raise UnsupportedModelError(
                f"geometry model gives a {got[0]}x{got[1]} feature map at the reference size, shape inference "
                f"{want[0]}x{want[1]}", features[0])
    kh, kw = feature_window
    reasons = list(dict.fromkeys(r for g in feats for r in g.reasons))
    for axis_name, jump, coarsest in (("H", g0.h.jump * g0.h.dense, walk.coarse[0]),
                                      ("W", g0.w.jump * g0.w.dense, walk.coarse[1])):
        if coarsest > jump:
            # An upsampled branch: its stride-`coarsest` cells pair up differently for a crop that
            # starts between them, so only every (coarsest / jump)-th cell is a crop's.
            reasons.append(f"upsampling: the stride-{jump} map on {axis_name} draws on a stride-{coarsest} one, so "
                           f"only cells every {coarsest} px see it as their crops do")
    if mode == "dense":
        reasons.append("dense mode: each cell scores one feature position, not a reference-size window")
        rf = (g0.h.rf, g0.w.rf)
        offset = (g0.h.start, g0.w.start)
    else:  # the window's cells lie jump * dense apart: the network's own stride
        rf = (g0.h.rf + (kh - 1) * g0.h.jump * g0.h.dense, g0.w.rf + (kw - 1) * g0.w.jump * g0.w.dense)
        offset = (0, 0)
    return Geometry(
        window=ref, stride=(g0.h.jump, g0.w.jump), offset=offset, receptive_field=rf,
        feature_window=(kh, kw), mode=mode, exact=not reasons, reasons=tuple(reasons),
        size_h=g0.h.size, size_w=g0.w.size, feature_dilation=(g0.h.dense, g0.w.dense),
        receptive_field_start=(g0.h.start, g0.w.start), global_context=any(WHOLE_IMAGE in r for r in reasons),
        lattice=(walk.lattice[0], walk.lattice[1]),
    )
