"""Every command-line option, declared once as an ``Annotated`` alias, with the parsers that turn
its text into a value (``units.py``) and a bad text into one line (``OptionError``)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NamedTuple, Optional, TypeVar

import typer

from ..errors import OnnxFcnError
from ..units import parse_bytes, parse_floats, parse_scale, parse_size
from .app import OptionError

T = TypeVar("T")


class HxW(NamedTuple):
    """A size or a stride, H x W."""

    h: int
    w: int


def _parser(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` for typer: the library's one-line error becomes the command line's."""
    def run(text: str) -> T:
        if not isinstance(text, str):  # a default, already parsed
            return text
        try:
            return parse(text)
        except OnnxFcnError as exc:
            raise OptionError(exc.reason) from None

    return run


def _hxw(option: str, example: str = "384x320") -> Callable[[str], HxW]:
    return _parser(lambda text: HxW(*parse_size(text, option, example)))


class Floats(tuple[float, ...]):
    """Comma-separated floats (a class of its own: typer reads a bare tuple type as several values)."""


def _floats(option: str) -> Callable[[str], Floats]:
    def parse(text: str) -> Floats:
        values = parse_floats(text, option)
        assert values is not None
        return Floats(values)

    return _parser(parse)


def _scale(text: str) -> float:
    value = parse_scale(text)
    assert value is not None
    return value


class Mode(enum.StrEnum):
    window = "window"
    dense = "dense"


class ChannelOrder(enum.StrEnum):
    rgb = "rgb"
    bgr = "bgr"


class Provider(enum.StrEnum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


MODE_HELP = (
    "How a global pooling head slides. 'window' (default): the global pool becomes a stride-1 pool "
    "as large as the reference feature map, so every output cell is the classifier applied to one "
    "reference-size window of the image. 'dense': the global pool is dropped and every feature-map "
    "cell is scored on its own (a class activation map, with a finer grid). Heads that flatten "
    "without pooling always work as 'window'."
)
STRIDE_HELP = (
    "Output stride: one cell every S input pixels instead of the network's own stride (S divides it: "
    "32 -> 16 or 8; SHxSW per axis). The stride is taken out of the last strided layers and every "
    "later kernel is dilated, so the map is denser in one pass.")

# ---- models ---------------------------------------------------------------------------------
Model = Annotated[Path, typer.Argument(metavar="MODEL", help="The classifier (.onnx).", show_default=False)]
Original = Annotated[Path, typer.Argument(metavar="ORIGINAL", help="The original classifier (.onnx).",
                                          show_default=False)]
Converted = Annotated[Path, typer.Argument(metavar="CONVERTED", help="Its conversion, written by onnxfcn convert.",
                                           show_default=False)]
InputName = Annotated[Optional[str], typer.Option("--input", metavar="NAME",
                                                  help="The image input, if there are several.")]
ModeOpt = Annotated[Mode, typer.Option(case_sensitive=False, help=MODE_HELP)]

# ---- sizes ----------------------------------------------------------------------------------
ReferenceSize = Annotated[Optional[HxW], typer.Option(
    "--size", metavar="HxW", parser=_hxw("--size"),
    help="Reference size, for models whose input size is dynamic: 224x224, 224,224 or 224.")]
OutputStride = Annotated[Optional[HxW], typer.Option(
    "--output-stride", metavar="S", parser=_hxw("--output-stride", "16x32"), help=STRIDE_HELP)]
Static = Annotated[Optional[HxW], typer.Option(
    "--static", metavar="HxW", parser=_hxw("--static", "512x512"),
    help="Fix the input at this size (compilers, NPUs, static TensorRT engines): every output dim is written out.")]
StaticBatch = Annotated[Optional[int], typer.Option(
    "--static-batch", metavar="N", help="With --static: fix the batch too [default: as the original's].")]
OptSize = Annotated[Optional[HxW], typer.Option(
    "--opt-size", metavar="HxW", parser=_hxw("--opt-size"),
    help="The deploy profile's optimum input (TensorRT --optShapes) [default: twice the window].")]
MaxSize = Annotated[Optional[HxW], typer.Option(
    "--max-size", metavar="HxW", parser=_hxw("--max-size"),
    help="The deploy profile's largest input (TensorRT --maxShapes) [default: four times the window].")]
GridAt = Annotated[Optional[HxW], typer.Option(
    "--at", metavar="HxW", parser=_hxw("--at"), help="An input size to compute the output grid for.")]
CheckSizes = Annotated[Optional[list[HxW]], typer.Option(
    "--size", metavar="HxW", parser=_hxw("--size"),
    help="Larger input size to check; repeatable. Default: a size giving at least 3x4 windows.")]
BenchSize = Annotated[Optional[HxW], typer.Option(
    "--size", metavar="HxW", parser=_hxw("--size"),
    help="Input size of the one pass [default: the window plus 5 network strides].")]
MaxMemory = Annotated[Optional[int], typer.Option(
    "--max-memory", metavar="SIZE", parser=_parser(parse_bytes),
    help="Memory a run may take, e.g. 16G [default: what is available now]; a larger run is refused before it "
         "starts (scan runs in tiles instead).")]

# ---- preprocessing (image files), stored by convert for scan, overridden by scan ----------------
Mean = Annotated[Optional[Floats], typer.Option(
    "--mean", metavar="M[,M,M]", parser=_floats("--mean"),
    help="Per-channel mean, subtracted after --scale, e.g. 0.485,0.456,0.406.")]
Std = Annotated[Optional[Floats], typer.Option(
    "--std", metavar="S[,S,S]", parser=_floats("--std"), help="Per-channel std, e.g. 0.229,0.224,0.225.")]
Scale = Annotated[Optional[float], typer.Option(
    "--scale", metavar="F", parser=_parser(_scale),
    help="Pixel values (0..255) are multiplied by F first, e.g. 1/255 [default: 1/255].")]
Channels = Annotated[Optional[ChannelOrder], typer.Option(case_sensitive=False, help="The model's channel order.")]
def _mpp(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise OptionError(f"--mpp {text!r}: micrometres per pixel, a positive number such as 0.5")
    return value


Mpp = Annotated[Optional[float], typer.Option(
    "--mpp", metavar="UM", parser=_mpp,
    help="Micrometres per pixel: convert stores the model's training resolution; scan reads the pyramid level "
         "nearest to it (default: the model's).")]
Labels = Annotated[Optional[Path], typer.Option("--labels", metavar="FILE",
                                                help="Class names: one per line, or a JSON list.")]

# ---- running --------------------------------------------------------------------------------
ProviderOpt = Annotated[Provider, typer.Option(case_sensitive=False, help="cpu, cuda, or auto (CUDA when present).")]
JsonFile = Annotated[Optional[Path], typer.Option("--json", metavar="FILE", help="Write the report as JSON to this file.")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="Print only errors (verify: only its final line).")]
Verbose = Annotated[bool, typer.Option("-v", "--verbose", help="Log what the library does; tracebacks for bugs.")]
