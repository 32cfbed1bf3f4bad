"""The ``onnxfcn`` command line: convert, verify, inspect.

Exit codes: 0 success; 1 a numerical mismatch (verify, or convert's self-check); 2 bad input
(unreadable file, no image input, no convertible head, unsupported node, bad option);
3 the model is already fully convolutional (nothing written).
"""

from __future__ import annotations

import enum
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import numpy as np
import typer

from ._version import __version__
from .bench import bench as do_bench
from .convert import convert as do_convert
from .errors import AlreadyConvolutionalError, OnnxFcnError, SelfCheckError
from .inspect import inspect as do_inspect
from .io import check_output_path, load_model, save_model, write_text_atomic
from .plan import analyse_model
from .preprocess import Preprocess, parse_floats, parse_scale, read_image, read_labels
from .runtime import parse_bytes, resolve_providers
from .verify import verify as do_verify

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT, EXIT_ALREADY_FCN = 0, 1, 2, 3
_STATE = {"verbose": False}

app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
    help="Turn an ONNX image classifier into a fully convolutional model, and prove it right.",
)

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


class Mode(str, enum.Enum):
    window = "window"
    dense = "dense"


class ChannelOrder(str, enum.Enum):
    rgb = "rgb"
    bgr = "bgr"


class Provider(str, enum.Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


Verbose = Annotated[bool, typer.Option("-v", "--verbose", help="Log what the library does; tracebacks for bugs.")]

EXITS = {
    "convert": "0 converted; 1 the self-check (or --verify) found a wrong result; 2 bad input, unsupported node, "
               "bad option or out of memory; 3 already fully convolutional or already converted. Nothing is "
               "written unless the exit code is 0.",
    "verify": "0 every check passed; 1 a check failed (a value beyond its rounding bound, an output missing or "
              "renamed, a model onnxruntime cannot load); 2 bad input, metadata that disagrees with the original, "
              "bad option or out of memory.",
    "inspect": "0 convertible; 2 not convertible (the blockers are listed) or bad input; 3 already fully "
               "convolutional.",
    "scan": "0 every input scanned and its files written; 2 bad input (a model not converted by onnxfcn, an "
            "unreadable or too small image, a bad option), out of memory, or no Dask for --workers. An input's files "
            "are each written whole or not at all.",
    "bench": "0 measured; 2 bad input (a second model without onnxfcn metadata, a size no window fits), bad "
             "option or out of memory.",
}


def _epilog(command: str, examples: list[str]) -> str:
    # "\b" keeps click from re-wrapping the lines that follow it.
    lines = ["\b", "Examples:", *[f"  {e}" for e in examples], "", "\b", "Exit codes:"]
    words = EXITS[command].split()
    line = " "
    for w in words:
        if len(line) + len(w) > 76:
            lines.append(line)
            line = " "
        line += " " + w
    return "\n".join([*lines, line])


def _set_verbose(verbose: bool) -> None:
    if verbose:
        _STATE["verbose"] = True
        logging.getLogger().setLevel(logging.INFO)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except AlreadyConvolutionalError as exc:
        typer.echo(f"{exc} -- nothing to convert, nothing written (exit {EXIT_ALREADY_FCN})", err=True)
        raise typer.Exit(EXIT_ALREADY_FCN) from None
    except SelfCheckError as exc:
        _fail(f"self-check failed, nothing written: {exc}", EXIT_MISMATCH)
    except OnnxFcnError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    except (typer.Exit, KeyboardInterrupt):
        raise
    except MemoryError as exc:  # a resource limit, not a bug
        _fail(f"out of memory: {str(exc).strip() or 'an allocation failed'}", EXIT_BAD_INPUT)
    except Exception as exc:  # anything else is a bug: one line here, the traceback with -v
        if _STATE["verbose"]:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _fail(f"unexpected {type(exc).__name__}: {first} (run with -v for the traceback, and please report it)",
              EXIT_BAD_INPUT)


def _size(text: str, option: str = "--size", example: str = "384x320") -> tuple[int, int]:
    """'384x320', '384,320' or '384' (the same on both axes); also --output-stride's '16x32'."""
    parts = text.strip().lower().replace("×", "x").replace(",", "x").split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise OnnxFcnError(f"{option} {text!r}: expected HxW (e.g. {example}), or one number for both") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0:
        raise OnnxFcnError(f"{option} {text!r}: expected two positive values HxW, e.g. {example}")
    return values[0], values[1]


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(widths[k]) for k, c in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    return "\n".join(lines)


def _mb(n: int) -> str:
    return "external" if n < 0 else (f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB")


def _shape(d: dict[str, list[Any]]) -> str:
    return "; ".join(f"{k} {'x'.join(str(x) for x in v)}" for k, v in d.items())


def print_conversion(report: Any, out_path: Path | None) -> None:
    geo = report.geometry
    typer.echo(f"input  {report.image.name}: {report.image.layout}, reference size "
               f"{report.image.height}x{report.image.width}; mode {report.mode}")
    rows = [("node", "before", "after")] + [(c.node, c.before, c.after) for c in report.changes]
    typer.echo("\n" + _table(rows))
    b, a = report.before, report.after
    ops = sorted(set(b.ops) | set(a.ops), key=lambda o: -(b.ops.get(o, 0) + a.ops.get(o, 0)))
    changed = [o for o in ops if b.ops.get(o, 0) != a.ops.get(o, 0)]
    stats = [("", "before", "after"),
             ("nodes", str(b.nodes), str(a.nodes))]
    stats += [(f"  {o}", str(b.ops.get(o, 0)), str(a.ops.get(o, 0))) for o in changed]
    stats += [("inputs", _shape(b.inputs), _shape(a.inputs)),
              ("outputs", _shape(b.outputs), _shape(a.outputs)),
              ("size", _mb(b.bytes), _mb(a.bytes)),
              ("time", "", f"{report.seconds:.2f} s")]
    typer.echo("\n" + _table(stats))
    typer.echo(f"\nwindow {geo.window[0]}x{geo.window[1]}, stride {geo.stride[0]}x{geo.stride[1]}, "
               f"offset {geo.offset[0]},{geo.offset[1]}, receptive field {geo.receptive_field[0]}x{geo.receptive_field[1]}")
    typer.echo(f"grid   out_height = {geo.formula(0)}, out_width = {geo.formula(1)}"
               f"  (e.g. {geo.window[0] + 2 * geo.stride[0]}x{geo.window[1] + 2 * geo.stride[1]} -> "
               f"{'x'.join(str(c) for c in geo.grid(geo.window[0] + 2 * geo.stride[0], geo.window[1] + 2 * geo.stride[1]))})")
    mh, mw = geo.min_size()
    typer.echo(f"min    input at least {mh}x{mw}; smaller inputs fit no window: onnxruntime raises an error "
               "(never a crash)")
    _print_sizes(geo.summary()["sizes"])
    if geo.exact:
        typer.echo("exact  yes: each cell equals the original classifier on its crop (no padding inside a window)")
    else:
        typer.echo("exact  no: cells match crops only approximately, because of")
        for r in geo.reasons[:4]:
            typer.echo(f"         - {r}")
        if len(geo.reasons) > 4:
            typer.echo(f"         - ... and {len(geo.reasons) - 4} more")
    if report.self_check:
        sizes = ", ".join(f"{r['size'][0]}x{r['size'][1]}" for r in report.self_check)
        typer.echo(f"check  ran on onnxruntime at {sizes} (batch {report.self_check[0]['batch']}): ok")
        for out in report.self_check[0].get("outputs", []):
            if out.get("ratio") is not None:
                typer.echo(f"       {out['name']} at the reference size: error {out['error']:.3g} from the exact head, "
                           f"rounding bound {out['bound']:.3g} (error/bound {out['ratio']:.3g})")
    if out_path is not None:
        typer.echo(f"wrote  {out_path}")


def print_verify(report: Any) -> None:
    for c in report.checks:
        kind = "exact" if c.exact else "approximate"
        size = c.details.get("size")
        where = f" at {size[0]}x{size[1]}" if size else ""
        extra = ""
        if "cells_checked" in c.details:
            extra = f", {c.details['cells_checked']} of {c.details['grid'][0]}x{c.details['grid'][1]} cells"
        if c.skipped:
            typer.echo(f"[{c.name}] skipped: {c.note}")
            continue
        typer.echo(f"[{c.name}] {kind}{where}{extra}: {c.status}" + (f" ({c.note})" if c.note else ""))
        for o in c.outputs:
            typer.echo("    " + describe_output(o))
            if o.border_max_abs is not None and o.error_map is not None:
                inter = "n/a" if o.interior_max_abs is None else f"{o.interior_max_abs:.3g}"
                typer.echo(f"      border cells max abs {o.border_max_abs:.3g}, interior {inter}")
                if len(o.error_map) <= 12 and len(o.error_map[0]) <= 12:
                    for row in o.error_map:
                        typer.echo("      " + " ".join("   .    " if e is None else f"{e:8.1e}" for e in row))
    typer.echo(("PASSED" if report.passed else "FAILED") + f": {report.reason} ({report.seconds:.2f} s)")


def describe_output(o: Any) -> str:
    """One output's numbers: against the reference, then the bound (or tolerance) that judged it."""
    top1 = f" top1 {o.top1 * 100:.1f}%" if o.top1 is not None else ""
    head = f"{o.name}: max abs {o.max_abs:.3g}, mean abs {o.mean_abs:.3g}, max rel {o.max_rel:.3g}{top1}"
    if o.note and not np.isfinite(o.max_abs):
        return f"{o.name}: {o.note}"
    if o.method == "bound" and o.ratio is not None:
        orig = "" if o.original_ratio is None else f", original's own {o.original_ratio:.3g}"
        return (f"{head}\n      vs exact float64 head: error {o.error_vs_exact:.3g}, rounding bound {o.bound:.3g}, "
                f"error/bound {o.ratio:.3g}{orig}")
    if o.method == "exact":
        return f"{head}\n      integers: must be equal"
    return (f"{head}\n      tolerance atol {o.atol:.1g} + rtol {o.rtol:.1g} * {o.ref_max:.3g}; "
            f"would pass with rtol >= {o.needed_rtol:.3g}")


def _strict(o: Any) -> Any:
    """Strict JSON: infinities and NaN become null (the report's notes say why)."""
    if isinstance(o, float) and not np.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_strict(v) for v in o]
    return o


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(_strict(json.loads(json.dumps(data, default=_json_default))), indent=2, allow_nan=False)


def _print_sizes(sizes: list[str]) -> None:
    if sizes != ["any", "any"]:
        typer.echo(f"sizes  H = {sizes[0]}, W = {sizes[1]} only: merged branches' sizes agree there alone "
                   "(elsewhere onnxruntime fails at the merge; onnxfcn refuses such sizes)")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    try:
        write_text_atomic(path, _dumps(data))
    except OSError as exc:
        raise OnnxFcnError(f"{path}: cannot write the JSON report: {exc.strerror or exc}") from None


def _json_default(o: Any) -> Any:
    """numpy scalars as numbers, anything else json cannot write as its str."""
    return o.item() if isinstance(o, (np.floating, np.integer)) else str(o)


def _progress(label: str = "crops") -> Callable[[int, int], None]:
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if not sys.stderr.isatty():
            return
        bar = state.get("bar")
        if bar is None:
            bar = typer.progressbar(length=total, label=label, file=sys.stderr)
            bar.__enter__()
            state["bar"], state["done"] = bar, 0
        bar.update(done - state["done"])
        state["done"] = done
        if done >= total:
            bar.__exit__(None, None, None)
            state.clear()

    return update


@app.command(short_help="Rewrite the dense head into convolutions (writes MODEL.fcn.onnx).",
             epilog=_epilog("convert", ["onnxfcn convert vgg16.onnx", "onnxfcn convert resnet50.onnx -o r50_fcn.onnx --mode dense",
                                        "onnxfcn convert model.onnx --size 224x224 --verify --json report.json"]))
def convert(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="The classifier to convert (.onnx).", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="FILE", help="Where to write the result [default: MODEL.fcn.onnx].")] = None,
    mode: Annotated[Mode, typer.Option(case_sensitive=False, help=MODE_HELP)] = Mode.window,
    input_name: Annotated[Optional[str], typer.Option("--input", metavar="NAME", help="The image input, if there are several.")] = None,
    size: Annotated[Optional[str], typer.Option(metavar="HxW", help="Reference size, for models whose input size is dynamic.")] = None,
    output_stride: Annotated[Optional[str], typer.Option(metavar="S", help=STRIDE_HELP)] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Run the full verify checks after converting.")] = False,
    self_check: Annotated[bool, typer.Option(help="Run the result on onnxruntime before writing it.")] = True,
    json_path: Annotated[Optional[Path], typer.Option("--json", metavar="FILE", help="Write the report as JSON to this file.")] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print only errors.")] = False,
    max_memory: Annotated[Optional[str], typer.Option(metavar="SIZE", help="Memory the self-check may take, e.g. 16G [default: what is available now].")] = None,
    mean: Annotated[Optional[str], typer.Option(metavar="M[,M,M]", help="Preprocessing stored for scan: per-channel mean (after --scale).")] = None,
    std: Annotated[Optional[str], typer.Option(metavar="S[,S,S]", help="Preprocessing stored for scan: per-channel std.")] = None,
    scale: Annotated[Optional[str], typer.Option(metavar="F", help="Preprocessing stored for scan: pixel values (0..255) are multiplied by F first [scan's default: 1/255].")] = None,
    channels: Annotated[Optional[ChannelOrder], typer.Option(case_sensitive=False, help="Preprocessing stored for scan: the model's channel order.")] = None,
    labels: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Class names stored for scan: one per line, or a JSON list.")] = None,
    verbose: Verbose = False,
) -> None:
    """Rewrite the dense head into convolutions so the model runs on larger images."""
    _set_verbose(verbose)
    out = output or model.with_name(model.name.removesuffix(".onnx") + ".fcn.onnx")
    if out.resolve() == model.resolve():
        _fail("output path is the input path; the input is never overwritten", EXIT_BAD_INPUT)
    with _errors():
        # Every output path is checked before any work is done.
        check_output_path(out)
        if json_path is not None:
            check_output_path(json_path, what="JSON")
        pre = None
        if any(v is not None for v in (mean, std, scale, channels)):
            pre = Preprocess().with_overrides(parse_scale(scale), parse_floats(mean, "--mean"),
                                              parse_floats(std, "--std"), channels.value if channels else None)
        names = read_labels(labels) if labels is not None else None
        new, report = do_convert(model, mode=mode.value, input_name=input_name, size=_size(size) if size else None,
                                 self_check=self_check, max_memory=parse_bytes(max_memory) if max_memory else None,
                                 output_stride=_size(output_stride, "--output-stride", "16x32") if output_stride else None,
                                 preprocess=pre, labels=names)
        vreport = None
        if verify:
            vreport = do_verify(model, new, progress=None if quiet else _progress())
        if vreport is not None and not vreport:
            if not quiet:
                print_verify(vreport)
            _fail(f"verify failed, nothing written: {vreport.reason}", EXIT_MISMATCH)
        save_model(new, out, external_data=True if report.external_data else None,
                   protect={Path(f) for f in report.input_files})
    if json_path is not None:
        data = report.to_dict() | {"output": str(out)}
        if vreport is not None:
            data["verify"] = vreport.to_dict()
        with _errors():
            _write_json(json_path, data)
    if not quiet:
        print_conversion(report, out)
        if vreport is not None:
            typer.echo("")
            print_verify(vreport)


@app.command(short_help="Prove a converted model against the original (exit 0 passed, 1 mismatch).",
             epilog=_epilog("verify", ["onnxfcn verify vgg16.onnx vgg16.fcn.onnx",
                                       "onnxfcn verify r50.onnx r50.fcn.onnx --size 384x384 --positions all --json v.json",
                                       "onnxfcn verify m.onnx m.fcn.onnx --image cat.jpg --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225"]))
def verify(
    original: Annotated[Path, typer.Argument(metavar="ORIGINAL", help="The original classifier.", show_default=False)],
    converted: Annotated[Path, typer.Argument(metavar="CONVERTED", help="The model onnxfcn convert wrote.", show_default=False)],
    size: Annotated[Optional[list[str]], typer.Option(metavar="HxW", help="Larger input size to check; repeatable. Default: a size giving at least 3x4 windows.")] = None,
    batch: Annotated[int, typer.Option(min=1, max=4096, help="Batch size of the random inputs.")] = 2,
    positions: Annotated[str, typer.Option(metavar="all|N", help="'all', or how many cells to check (corners, edges, centre, then random).")] = "16",
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    npy: Annotated[Optional[Path], typer.Option("--npy", metavar="FILE", help="Your own input: a .npy array, N x C x H x W (or NHWC for NHWC models).")] = None,
    image: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Your own input image (needs Pillow); see --mean/--std/--scale.")] = None,
    mean: Annotated[Optional[str], typer.Option(metavar="M[,M,M]", help="Per-channel mean, e.g. 0.485,0.456,0.406 (after --scale).")] = None,
    std: Annotated[Optional[str], typer.Option(metavar="S[,S,S]", help="Per-channel std, e.g. 0.229,0.224,0.225.")] = None,
    scale: Annotated[float, typer.Option(help="Multiply pixel values (0..255) by this first.", show_default="1/255")] = 1 / 255,
    provider: Annotated[Provider, typer.Option(case_sensitive=False, help="cpu, cuda, or auto (CUDA when present; each provider is checked, and CUDA is compared with CPU).")] = Provider.cpu,
    atol: Annotated[Optional[float], typer.Option(help="Replace the rounding bound by atol + rtol * max|reference|.")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Replace the rounding bound by atol + rtol * max|reference|.")] = None,
    strict: Annotated[bool, typer.Option(help="Fail on sliding-window differences even when the model is only approximately exact.")] = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", metavar="FILE", help="Write the report as JSON to this file.")] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print only the final line.")] = False,
    max_memory: Annotated[Optional[str], typer.Option(metavar="SIZE", help="Memory a run may take, e.g. 16G [default: what is available now]. Larger requests are refused up front.")] = None,
    verbose: Verbose = False,
) -> None:
    """Prove a converted model against the original on onnxruntime."""
    _set_verbose(verbose)

    pos: int | str
    if positions == "all":
        pos = "all"
    else:
        try:
            pos = int(positions)
        except ValueError:
            _fail(f"--positions must be 'all' or a number, not {positions!r}", EXIT_BAD_INPUT)
        if pos < 1:
            _fail("--positions must be at least 1", EXIT_BAD_INPUT)
    with _errors():
        if json_path is not None:
            check_output_path(json_path, what="JSON")
        arr = _load_input(npy, image, mean, std, scale, original)
        report = do_verify(original, converted, sizes=[_size(s) for s in size] if size else None, batch=batch,
                           inputs=arr, positions=pos, seed=seed, provider=provider.value, rtol=rtol, atol=atol,
                           strict=strict, progress=None if quiet else _progress(),
                           max_memory=parse_bytes(max_memory) if max_memory else None)
        if json_path is not None:
            _write_json(json_path, report.to_dict())
    if quiet:
        typer.echo(("PASSED" if report.passed else "FAILED") + f": {report.reason}")
    else:
        print_verify(report)
    raise typer.Exit(EXIT_OK if report else EXIT_MISMATCH)


def _load_input(npy: Path | None, image: Path | None, mean: str | None, std: str | None, scale: float,
                original: Path) -> np.ndarray | None:
    if npy is not None and image is not None:
        raise OnnxFcnError("give --npy or --image, not both")
    if npy is not None:
        try:
            return np.load(npy, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise OnnxFcnError(f"{npy}: not a readable .npy file: {exc}") from None
    if image is None:
        return None
    model, _ = load_model(original)
    img_in = analyse_model(model).image
    pre = Preprocess(scale, parse_floats(mean, "--mean"), parse_floats(std, "--std"))
    pre.check(img_in.channels)
    arr = pre.apply(read_image(image, img_in.channels))[None]
    return arr if img_in.layout == "NHWC" else arr.transpose(0, 3, 1, 2).copy()


@app.command(short_help="Dry run: the head, the planned changes, blockers and geometry.",
             epilog=_epilog("inspect", ["onnxfcn inspect resnet50.onnx", "onnxfcn inspect vgg16.onnx --at 384x512",
                                        "onnxfcn inspect model.onnx --size 224 --json"]))
def inspect(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="The classifier to look at (.onnx).", show_default=False)],
    mode: Annotated[Mode, typer.Option(case_sensitive=False, help=MODE_HELP)] = Mode.window,
    input_name: Annotated[Optional[str], typer.Option("--input", metavar="NAME", help="The image input, if there are several.")] = None,
    size: Annotated[Optional[str], typer.Option(metavar="HxW", help="Reference size, for models whose input size is dynamic.")] = None,
    at: Annotated[Optional[str], typer.Option(metavar="HxW", help="An input size to compute the output grid for.")] = None,
    output_stride: Annotated[Optional[str], typer.Option(metavar="S", help=STRIDE_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    verbose: Verbose = False,
) -> None:
    """Dry run: the head found, what convert would change, blockers, and the geometry. Changes nothing."""
    _set_verbose(verbose)
    with _errors():
        report = do_inspect(model, mode=mode.value, input_name=input_name, size=_size(size) if size else None,
                            at=_size(at, "--at") if at else None,
                            output_stride=_size(output_stride, "--output-stride", "16x32") if output_stride else None)
    if as_json:
        typer.echo(_dumps(report.to_dict()))
    else:
        _print_inspect(report)
    if report.already_convolutional:
        raise typer.Exit(EXIT_ALREADY_FCN)
    raise typer.Exit(EXIT_OK if report else EXIT_BAD_INPUT)


def _print_inspect(report: Any) -> None:
    if report.input:
        i = report.input
        typer.echo(f"input  {i['name']}: {i['layout']}, reference size {i['reference_size'][0]}x{i['reference_size'][1]}")
    for k, h in enumerate(report.heads):
        typer.echo(f"head {k}: {' -> '.join(h['nodes'])}  =>  {', '.join(h['outputs'])}")
    if report.changes:
        typer.echo("\n" + _table([("node", "before", "after")] + [(c["node"], c["before"], c["after"]) for c in report.changes]))
    for b in report.blockers:
        typer.echo(f"blocker: {'node ' + repr(b['node']) + ': ' if b['node'] else ''}{b['reason']}")
    g = report.geometry
    if g:
        def hw(v: list[int], sep: str = "x") -> str:
            return f"{v[0]}{sep}{v[1]}"

        typer.echo(f"\nwindow {hw(g['window'])}, stride {hw(g['stride'])}, offset {hw(g['offset'], ',')}, "
                   f"receptive field {hw(g['receptive_field'])}")
        typer.echo(f"grid   out_height = {g['grid_formula'][0]}, out_width = {g['grid_formula'][1]}")
        if "grid_at" in g:
            typer.echo(f"       input {g['grid_at']['input'][0]}x{g['grid_at']['input'][1]} -> "
                       f"{g['grid_at']['cells'][0]}x{g['grid_at']['cells'][1]} cells")
            if "note" in g["grid_at"]:
                typer.echo(f"       {g['grid_at']['note']}")
        _print_sizes(g["sizes"])
        typer.echo("exact  " + ("yes" if g["exact"] else "no: " + "; ".join(g["reasons"][:3])))
    typer.echo("\n" + ("convertible" if report.convertible else
                       "already fully convolutional" if report.already_convolutional else "NOT convertible"))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"onnxfcn {__version__}")
        raise typer.Exit()


@app.command(short_help="Time one pass of the converted model against the original on every window.",
             epilog=_epilog("bench", ["onnxfcn bench vgg16.onnx vgg16.fcn.onnx --size 384x384",
                                      "onnxfcn bench resnet50.onnx r50_os16.onnx --json bench.json"]))
def bench(
    original: Annotated[Path, typer.Argument(metavar="ORIGINAL", help="The classifier (.onnx).", show_default=False)],
    converted: Annotated[Path, typer.Argument(metavar="CONVERTED", help="Its conversion by onnxfcn.", show_default=False)],
    size: Annotated[Optional[str], typer.Option(metavar="HxW", help="Input size of the one pass [default: the window plus 5 network strides].")] = None,
    repeats: Annotated[int, typer.Option(min=1, max=1000, help="Timed runs of each phase (after one warm-up); medians are reported.")] = 5,
    batch: Annotated[int, typer.Option(min=1, max=4096, help="Windows per run of the original.")] = 16,
    provider: Annotated[Provider, typer.Option(case_sensitive=False, help="cpu, cuda, or auto (CUDA when present).")] = Provider.cpu,
    json_path: Annotated[Optional[Path], typer.Option("--json", metavar="FILE", help="Write the numbers as JSON to this file.")] = None,
    verbose: Verbose = False,
) -> None:
    """One pass of CONVERTED against ORIGINAL on every window it replaces, side by side: medians, MACs, memory."""
    _set_verbose(verbose)
    with _errors():
        if json_path is not None:
            check_output_path(json_path, what="JSON")
        report = do_bench(original, converted, size=_size(size) if size else None, repeats=repeats, batch=batch,
                          provider=provider.value, progress=_progress("runs"))
    if json_path is not None:
        with _errors():
            _write_json(json_path, report.to_dict())
    _print_bench(report)


def _print_bench(r: Any) -> None:
    def ms(t: Any) -> str:
        return f"{t.median * 1e3:.2f} ms"

    def rss(t: Any) -> str:
        return "n/a" if t.added_rss is None else f"+{t.added_rss / 2**20:.0f} MiB"

    (h, w), (wh, ww), (gh, gw) = r.size, r.window, r.grid
    typer.echo(f"bench at {h}x{w}: {gh}x{gw} windows of {wh}x{ww}, stride {r.stride[0]}x{r.stride[1]} "
               f"({r.provider}, median of {r.repeats})")
    def macs(n: int) -> str:
        return f"{n / 1e9:.2f} G" if n >= 1e8 else f"{n / 1e6:.2f} M"

    rows = [("run", "time", "MACs", "peak memory"),
            ("converted, one pass", ms(r.converted), macs(r.converted_macs), rss(r.converted)),
            (f"original, {r.windows} windows", ms(r.original_windows), macs(r.original_macs * r.windows),
             rss(r.original_windows)),
            (f"converted at {wh}x{ww}", ms(r.converted_reference), "", rss(r.converted_reference)),
            (f"original at {wh}x{ww}", ms(r.original_reference), macs(r.original_macs), rss(r.original_reference))]
    typer.echo(_table(rows))
    typer.echo(f"speedup {r.speedup:.2f}x, MAC ratio {r.mac_ratio:.2f}, efficiency {r.efficiency:.2f}, "
               f"reference latency converted/original {r.reference_latency_ratio:.3f}")
    for note in r.notes:
        typer.echo(f"note: {note}")


@app.command(short_help="Score maps, best cells with boxes, and pictures for images of any size.",
             epilog=_epilog("scan", ["onnxfcn scan digits_fcn.onnx models/digits_scene.png --out scan --display-scale 6",
                                     "onnxfcn scan r50.fcn.onnx photos/ --out maps --top 10 --softmax",
                                     "onnxfcn scan r50.fcn.onnx slide.npy --out maps --tile 1024 --workers 4"]))
def scan(
    converted: Annotated[Path, typer.Argument(metavar="CONVERTED", help="A model written by onnxfcn convert.", show_default=False)],
    inputs: Annotated[list[Path], typer.Argument(metavar="INPUT...", help="Images (PNG, JPEG, TIFF), .npy arrays (the model input as it is: HxW, HxWxC or CxHxW), or folders of them.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Where NAME.scores.npy, NAME.json and NAME.png go (created if missing).")],
    top: Annotated[Optional[int], typer.Option(metavar="K", help="Keep the K best cells per input [default: 5; with --threshold, all above it].")] = None,
    threshold: Annotated[Optional[float], typer.Option(metavar="T", help="Keep every cell whose best score is at least T.")] = None,
    class_: Annotated[Optional[str], typer.Option("--class", metavar="C", help="The class drawn in the picture, by index or label [default: the best class overall].")] = None,
    use_softmax: Annotated[bool, typer.Option("--softmax", help="Scores of cells and pictures as softmax probabilities (the .npy stays the model's output).")] = False,
    display_scale: Annotated[float, typer.Option(metavar="F", help="Picture size relative to the input.")] = 1.0,
    png: Annotated[bool, typer.Option(help="Write the picture NAME.png.")] = True,
    tile: Annotated[Optional[int], typer.Option(metavar="N", help="Run in stride-aligned tiles of about NxN input pixels [default: one pass, or tiles when it would not fit in memory].")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, max=1024, metavar="N", help="Run on a local Dask cluster of N processes (needs onnxfcn[scale]).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(metavar="ADDRESS", help="Run on this dask.distributed scheduler, e.g. tcp://host:8786.")] = None,
    mean: Annotated[Optional[str], typer.Option(metavar="M[,M,M]", help="Override the model's stored per-channel mean (image files only).")] = None,
    std: Annotated[Optional[str], typer.Option(metavar="S[,S,S]", help="Override the model's stored per-channel std.")] = None,
    scale: Annotated[Optional[str], typer.Option(metavar="F", help="Override the stored pixel scale (e.g. 1/255).")] = None,
    channels: Annotated[Optional[ChannelOrder], typer.Option(case_sensitive=False, help="Override the stored channel order.")] = None,
    labels: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Override the stored class names: one per line, or a JSON list.")] = None,
    output_name: Annotated[Optional[str], typer.Option("--output", metavar="NAME", help="The score map output, if the model has several.")] = None,
    provider: Annotated[Provider, typer.Option(case_sensitive=False, help="cpu, cuda, or auto (CUDA when present).")] = Provider.cpu,
    max_memory: Annotated[Optional[str], typer.Option(metavar="SIZE", help="Memory one pass may take before scan tiles by itself, e.g. 8G [default: half of what is available].")] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print only errors.")] = False,
    verbose: Verbose = False,
) -> None:
    """Run a converted model on images of any size: score maps, the best cells with their boxes, pictures."""
    from .scan import Runner, ScanModel, ScanOptions, ScoresFile, list_inputs, open_input, scan_source, write_result

    _set_verbose(verbose)
    if workers is not None and scheduler is not None:
        _fail("give --workers or --scheduler, not both", EXIT_BAD_INPUT)
    if out.exists() and not out.is_dir():
        _fail(f"--out {out}: exists and is not a folder", EXIT_BAD_INPUT)
    if not display_scale > 0:
        _fail("--display-scale must be positive", EXIT_BAD_INPUT)
    with _errors():
        files = list_inputs(inputs)
        model = ScanModel.load(converted, output_name)
        if labels is not None:
            model = model.with_labels(read_labels(labels))
        pre = model.preprocess.with_overrides(parse_scale(scale), parse_floats(mean, "--mean"),
                                              parse_floats(std, "--std"), channels.value if channels else None)
        if class_ is not None:
            model.class_index(class_)
        opts = ScanOptions(top if top is not None or threshold is not None else 5, threshold, use_softmax, tile,
                           parse_bytes(max_memory) if max_memory else None,
                           resolve_providers(provider.value)[-1])
        out.mkdir(parents=True, exist_ok=True)
        temps: list[str] = []

        def scores_for(name: str) -> Callable[[tuple[int, int, int]], ScoresFile]:
            def make(shape: tuple[int, int, int]) -> ScoresFile:
                f = ScoresFile(out / f"{name}.scores.npy", shape)
                temps.append(f.tmp)
                return f
            return make

        def finish(result: Any) -> None:
            # The scores file stays listed (and is removed on failure) until it is in place.
            written = write_result(result, out, class_, display_scale, png, temps[-1] if temps else None)
            temps.clear()
            if not quiet:
                _print_scan(result, written)

        try:
            if workers is not None or scheduler is not None:
                from .distributed import client, scan_files, scan_tiled

                with client(workers, scheduler) as c:
                    if len(files) == 1 and tile is not None:
                        src = open_input(files[0], model, pre)
                        finish(scan_tiled(c, model, src, opts, None if quiet else _progress("tiles"),
                                          scores_for(src.name)))
                    else:
                        for result in scan_files(c, model, files, opts, pre):
                            finish(result)
            else:
                runner = Runner(model, opts.provider)
                for f in files:
                    src = open_input(f, model, pre)
                    finish(scan_source(runner, model, src, opts, None if quiet else _progress("tiles"),
                                       scores_for(src.name)))
        finally:
            for tmp in temps:
                Path(tmp).unlink(missing_ok=True)


def _print_scan(r: Any, written: list[Path]) -> None:
    (h, w), (gh, gw) = r.size, r.grid
    tiles = f" in {r.tiles} tiles" if r.tiles > 1 else ""
    line = f"{r.name}: {h}x{w} -> {gh}x{gw} cells{tiles}"
    if r.cells:
        c = r.cells[0]
        what = f"class {c.cls}" + (f" '{c.label}'" if c.label is not None else "")
        line += f"; best {what} {c.score:.4g} at {c.box}"
    typer.echo(line)
    if not r.tiles_exact:
        typer.echo("  note: a global pool inside the trunk sees the whole image, so tiled scores differ from one pass")
    typer.echo("  wrote " + ", ".join(str(p) for p in written))


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log what the library does.")] = False,
) -> None:
    _STATE["verbose"] = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM unwinds like Ctrl-C, so that temporary files are removed on the way out.
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    app()
