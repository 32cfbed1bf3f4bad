"""The converted model's ``onnxfcn.*`` metadata, written by convert and read by verify, scan and bench.

``ConversionMetadata`` is the one typed record of it: ``of`` builds it from a plan's geometry,
``props`` writes the keys, ``read`` parses them back, with the defaults files written by older
versions need (keys added since: ``feature_dilation``, ``receptive_field_start``,
``global_context``, ``sizes``, ``input``, ``input_layout``). A key that is present but malformed
is refused with one line naming it; ``present`` says which keys the file had, for checks that
can only compare those (verify).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import onnx

from ._version import __version__
from .errors import InvalidConversionError, OnnxFcnError
from .geometry import ANY_SIZE, WHOLE_IMAGE, Geometry, Lattice, parse_sizes, sizes_text
from .head import ImageInput
from .preprocess import Preprocess
from .rewrite import MODES

PREFIX = "onnxfcn."
Pair = tuple[int, int]
_PREPROCESS_KEYS = ("scale", "mean", "std", "channels")


def read_props(model: onnx.ModelProto) -> dict[str, str]:
    """The ``onnxfcn.*`` keys of ``model``, without the prefix."""
    return {p.key[len(PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}


def is_converted(model: onnx.ModelProto) -> bool:
    """Whether ``model`` was written by onnxfcn convert (it states a mode)."""
    return bool(read_props(model).get("mode"))


def write_props(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Set these ``metadata_props`` (full keys), replacing any of the same key."""
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)


def parse_pair(props: dict[str, str], key: str, minimum: int | None) -> Pair:
    """A value 'A,B', each at least ``minimum`` (None: any integer, as an offset or a field's
    start may be negative)."""
    text = props.get(key)
    if text is None:
        raise InvalidConversionError(f"metadata onnxfcn.{key} is missing")
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise InvalidConversionError(f"metadata onnxfcn.{key} is {text!r}, not two integers 'A,B'") from None
    if minimum is not None and (a < minimum or b < minimum):
        raise InvalidConversionError(f"metadata onnxfcn.{key} is {text!r}: values must be at least {minimum}")
    return a, b


def _pair_text(p: Pair) -> str:
    return f"{p[0]},{p[1]}"


def _bool(props: dict[str, str], key: str, default: bool) -> bool:
    text = props.get(key)
    if text is None:
        return default
    if text not in ("true", "false"):
        raise InvalidConversionError(f"metadata onnxfcn.{key} is {text!r}, not true or false")
    return text == "true"


def labels_from_props(props: dict[str, str]) -> tuple[str, ...] | None:
    """The stored class names (None: none stored)."""
    text = props.get("labels")
    if not text:
        return None
    try:
        labels = json.loads(text)
    except json.JSONDecodeError:
        raise InvalidConversionError("metadata onnxfcn.labels is not a JSON list") from None
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        raise InvalidConversionError("metadata onnxfcn.labels is not a JSON list of strings")
    return tuple(labels)


def _mpp(props: dict[str, str]) -> float | None:
    text = props.get("mpp")
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise InvalidConversionError(f"metadata onnxfcn.mpp is {text!r}, not a positive number of micrometres")
    return value


def read_preprocess(props: dict[str, str]) -> Preprocess | None:
    """The stored preprocessing (None: none stored); the defaults where a key is missing."""
    if not any(props.get(k) for k in _PREPROCESS_KEYS):
        return None
    try:
        scale = float(props["scale"]) if props.get("scale") else 1 / 255
        mean = tuple(float(v) for v in props["mean"].split(",")) if props.get("mean") else None
        std = tuple(float(v) for v in props["std"].split(",")) if props.get("std") else None
        return Preprocess(scale, mean, std, props.get("channels") or "rgb")
    except (ValueError, OnnxFcnError) as exc:
        raise InvalidConversionError(f"the preprocessing in the model's metadata is not valid: {exc}") from None


def preprocess_props(pre: Preprocess) -> dict[str, str]:
    def floats(v: tuple[float, ...] | None) -> str:
        return "" if v is None else ",".join(repr(float(f)) for f in v)

    return {"scale": repr(float(pre.scale)), "mean": floats(pre.mean), "std": floats(pre.std), "channels": pre.channels}


@dataclass(frozen=True, kw_only=True)
class ConversionMetadata:
    """What a converted model's cells mean, and what scan needs to feed it."""

    mode: str  # "window" or "dense"
    window: Pair  # the reference input size: one cell's window
    stride: Pair  # input pixels between neighbouring cells
    offset: Pair = (0, 0)  # where cell (0, 0)'s window starts
    receptive_field: Pair  # pixels that can influence one cell
    receptive_field_start: Pair | None = None  # where cell (0, 0)'s field begins (None: older file)
    exact: bool = False  # every cell equals the classifier on its crop
    reasons: tuple[str, ...] = ()  # why not, node by node
    global_context: bool = False  # a global pool inside the trunk: every cell sees the whole image
    sizes: tuple[Lattice, Lattice] = (ANY_SIZE, ANY_SIZE)  # the input sizes the model runs at
    input: str | None = None  # the image input
    input_layout: str | None = None  # NCHW or NHWC
    feature_window: Pair | None = None  # feature-map cells one output cell reads
    feature_dilation: Pair = (1, 1)  # how far apart they lie (output stride)
    features: tuple[str, ...] = ()  # the converted graph's tensors the head reads
    feature_layout: str | None = None  # their layout, "NCHW" (or axis positions)
    version: str | None = None  # of onnxfcn, at conversion
    preprocess: Preprocess | None = None  # how image pixels become input values (scan)
    labels: tuple[str, ...] | None = None  # class names (scan)
    mpp: float | None = None  # micrometres per pixel the model was trained at (scan picks the level)
    static: Pair | None = None  # convert --static: the one input size the model takes
    present: frozenset[str] = field(default=frozenset(), compare=False)  # the keys the file had

    @classmethod
    def of(cls, geo: Geometry, features: Sequence[str], image: ImageInput) -> ConversionMetadata:
        """The metadata of a conversion with this geometry, image input and head feature maps."""
        return cls(mode=geo.mode, window=geo.window, stride=geo.stride, offset=geo.offset,
                   receptive_field=geo.receptive_field, receptive_field_start=geo.receptive_field_start,
                   exact=geo.exact, reasons=geo.reasons, global_context=geo.global_context, sizes=geo.lattice,
                   input=image.name, input_layout=image.layout, feature_window=geo.feature_window,
                   feature_dilation=geo.feature_dilation, features=tuple(features), feature_layout="NCHW",
                   version=__version__)

    def with_preprocess(self, preprocess: Preprocess | None, labels: Sequence[str] | None,
                        mpp: float | None = None) -> ConversionMetadata:
        return replace(self, preprocess=preprocess or self.preprocess,
                       labels=tuple(labels) if labels is not None else self.labels,
                       mpp=mpp if mpp is not None else self.mpp)

    def props(self) -> dict[str, str]:
        """The ``onnxfcn.*`` keys, as convert writes them."""
        d: dict[str, str | None] = {
            "window": _pair_text(self.window), "stride": _pair_text(self.stride), "offset": _pair_text(self.offset),
            "receptive_field": _pair_text(self.receptive_field),
            "receptive_field_start": None if self.receptive_field_start is None else _pair_text(self.receptive_field_start),
            "global_context": "true" if self.global_context else "false", "sizes": sizes_text(self.sizes),
            "input": self.input, "input_layout": self.input_layout, "mode": self.mode,
            "exact": "true" if self.exact else "false", "reasons": "; ".join(self.reasons),
            "feature_window": None if self.feature_window is None else _pair_text(self.feature_window),
            "feature_dilation": _pair_text(self.feature_dilation), "features": ",".join(self.features),
            "feature_layout": self.feature_layout, "version": self.version,
        }
        if self.preprocess is not None:
            d |= preprocess_props(self.preprocess)
        if self.labels is not None:
            d["labels"] = json.dumps(list(self.labels), ensure_ascii=False)
        if self.mpp is not None:
            d["mpp"] = repr(float(self.mpp))
        if self.static is not None:
            d["static"] = _pair_text(self.static)
        return {PREFIX + k: v for k, v in d.items() if v is not None}

    def write(self, model: onnx.ModelProto) -> None:
        write_props(model, self.props())

    @classmethod
    def read(cls, model: onnx.ModelProto) -> ConversionMetadata | None:
        """The metadata of a model onnxfcn converted, or None for any other model. Raises
        :class:`InvalidConversionError` naming a key that is missing or malformed."""
        props = read_props(model)
        if not props.get("mode"):
            return None
        mode = props["mode"]
        if mode not in MODES:
            raise InvalidConversionError(f"metadata onnxfcn.mode is {mode!r}, not window or dense")
        opt = {k: props[k] for k in ("input", "input_layout", "feature_layout", "version") if props.get(k)}
        if opt.get("input_layout", "NCHW") not in ("NCHW", "NHWC"):
            raise InvalidConversionError(f"metadata onnxfcn.input_layout is {opt['input_layout']!r}, not NCHW or NHWC")
        reasons = tuple(r for r in props.get("reasons", "").split("; ") if r)
        return cls(
            mode=mode, window=parse_pair(props, "window", 1), stride=parse_pair(props, "stride", 1),
            offset=parse_pair(props, "offset", None) if "offset" in props else (0, 0),
            receptive_field=parse_pair(props, "receptive_field", 1),
            receptive_field_start=(parse_pair(props, "receptive_field_start", None)
                                   if "receptive_field_start" in props else None),
            exact=_bool(props, "exact", False), reasons=reasons,
            global_context=_bool(props, "global_context", any(WHOLE_IMAGE in r for r in reasons)),
            sizes=parse_sizes(props.get("sizes", "any")),
            feature_window=parse_pair(props, "feature_window", 1) if "feature_window" in props else None,
            feature_dilation=(parse_pair(props, "feature_dilation", 1) if "feature_dilation" in props else (1, 1)),
            features=tuple(f for f in props.get("features", "").split(",") if f),
            preprocess=read_preprocess(props), labels=labels_from_props(props), mpp=_mpp(props),
            static=parse_pair(props, "static", 1) if "static" in props else None, present=frozenset(props), **opt,
        )

    def require(self, *keys: str) -> None:
        """Refuse a file without these keys (``read`` gave them defaults), naming the first."""
        for key in keys:
            if key not in self.present:
                raise InvalidConversionError(f"metadata onnxfcn.{key} is missing")

    def tile_field(self) -> tuple[Pair, Pair]:
        """(start, extent) of cell (0, 0)'s receptive field: what a tile must hold for the cell to
        see what it sees in one pass. Files from before ``receptive_field_start``: a dense cell's
        field starts at the offset; a window cell's field of ``receptive_field`` holds its window,
        so it lies within ``receptive_field - window`` of it on either side."""
        rf = self.receptive_field
        if self.receptive_field_start is not None:
            return self.receptive_field_start, rf
        if self.mode == "dense":
            return self.offset, rf
        (oh, ow), (wh, ww) = self.offset, self.window
        return (oh - (rf[0] - wh), ow - (rf[1] - ww)), (2 * rf[0] - wh, 2 * rf[1] - ww)
