"""``onnxfcn convert``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import EXIT_MISMATCH, Command, app, epilog, errors, fail, set_verbose, write_json
from .params import (
    Channels,
    InputName,
    JsonFile,
    Labels,
    MaxMemory,
    MaxSize,
    Mean,
    Mode,
    Model,
    ModeOpt,
    Mpp,
    OptSize,
    OutputStride,
    Quiet,
    ReferenceSize,
    Scale,
    Static,
    StaticBatch,
    Std,
    Verbose,
)

EXITS = ("0 converted; 1 the self-check (or --verify) found a wrong result; 2 bad input, unsupported node, bad option "
         "or out of memory; 3 already fully convolutional or already converted. Nothing is written unless the exit "
         "code is 0.")


@app.command(cls=Command, short_help="Rewrite the dense head into convolutions (writes MODEL.fcn.onnx).",
             epilog=epilog(["onnxfcn convert vgg16.onnx", "onnxfcn convert resnet50.onnx -o r50_fcn.onnx --mode dense",
                            "onnxfcn convert model.onnx --size 224x224 --verify --json report.json",
                            "onnxfcn convert resnet50.onnx --static 512x512 --static-batch 1"], EXITS))
def convert(
    ctx: typer.Context,
    model: Model,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="FILE",
                                                   help="Where to write the result [default: MODEL.fcn.onnx].")] = None,
    mode: ModeOpt = Mode.window,
    input_name: InputName = None,
    size: ReferenceSize = None,
    output_stride: OutputStride = None,
    static: Static = None,
    static_batch: StaticBatch = None,
    opt_size: OptSize = None,
    max_size: MaxSize = None,
    verify: Annotated[bool, typer.Option("--verify", help="Run the full verify checks after converting.")] = False,
    self_check: Annotated[bool, typer.Option(help="Run the result on onnxruntime before writing it.")] = True,
    json_path: JsonFile = None,
    quiet: Quiet = False,
    max_memory: MaxMemory = None,
    mean: Mean = None,
    std: Std = None,
    scale: Scale = None,
    channels: Channels = None,
    labels: Labels = None,
    mpp: Mpp = None,
    verbose: Verbose = False,
) -> None:
    """Rewrite the dense head into convolutions so the model runs on larger images.

    --mean, --std, --scale, --channels, --labels and --mpp are stored in the model for scan."""
    set_verbose(ctx, verbose)
    out = output or model.with_name(model.name.removesuffix(".onnx") + ".fcn.onnx")
    if out.resolve() == model.resolve():
        fail("output path is the input path; the input is never overwritten")
    if verify and static is not None:
        fail("--verify runs the converted model at several sizes and a --static model takes one: convert --verify "
             "without --static (convert checks that the --static model equals it cell for cell at its size)")
    with errors(ctx, model):
        from ..convert import convert as do_convert
        from ..io import check_output_path, save_model
        from ..preprocess import Preprocess, read_labels
        from ..verify import verify as do_verify
        from . import render

        # Every output path is checked before any work is done.
        check_output_path(out)
        if json_path is not None:
            check_output_path(json_path, what="JSON")
        pre = None
        if any(v is not None for v in (mean, std, scale, channels)):
            pre = Preprocess().with_overrides(scale, mean, std, channels.value if channels else None)
        names = read_labels(labels) if labels is not None else None
        new, report = do_convert(model, mode=mode.value, input_name=input_name, size=size, self_check=self_check,
                                 max_memory=max_memory, output_stride=output_stride, preprocess=pre, labels=names,
                                 mpp=mpp, static=static, static_batch=static_batch, opt_size=opt_size,
                                 max_size=max_size)
        vreport = do_verify(model, new, progress=None if quiet else render.progress()) if verify else None
        if vreport is not None and not vreport:
            if not quiet:
                render.verify_report(vreport)
            fail(f"verify failed, nothing written: {vreport.reason}", EXIT_MISMATCH)
        save_model(new, out, external_data=True if report.external_data else None,
                   protect={Path(f) for f in report.input_files})
    if json_path is not None:
        data = report.to_dict() | {"output": str(out)}
        if vreport is not None:
            data["verify"] = vreport.to_dict()
        with errors(ctx):
            write_json(json_path, data)
    if not quiet:
        render.conversion(report, out)
        if vreport is not None:
            typer.echo("")
            render.verify_report(vreport)
            typer.echo("note: the self-check (check, above) runs both models without graph optimizations; verify's "
                       "reference check runs them optimized, as users will: other kernels round otherwise, so the two "
                       "errors differ, each within the same rounding bound")

