"""``onnxfcn inspect``."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import EXIT_ALREADY_FCN, EXIT_BAD_INPUT, EXIT_OK, Command, app, epilog, errors, set_verbose
from .params import GridAt, InputName, MaxSize, Mode, Model, ModeOpt, OptSize, OutputStride, ReferenceSize, Verbose

EXITS = "0 convertible; 2 not convertible (the blockers are listed) or bad input; 3 already fully convolutional."


@app.command(cls=Command, short_help="Dry run: the head, the planned changes, blockers and geometry.",
             epilog=epilog(["onnxfcn inspect resnet50.onnx", "onnxfcn inspect vgg16.onnx --at 384x512",
                            "onnxfcn inspect model.onnx --size 224 --json"], EXITS))
def inspect(
    ctx: typer.Context,
    model: Model,
    mode: ModeOpt = Mode.window,
    input_name: InputName = None,
    size: ReferenceSize = None,
    at: GridAt = None,
    output_stride: OutputStride = None,
    opt_size: OptSize = None,
    max_size: MaxSize = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    verbose: Verbose = False,
) -> None:
    """Dry run: the head found, what convert would change, blockers, and the geometry. Changes nothing."""
    set_verbose(ctx, verbose)
    with errors(ctx):
        from ..inspect import inspect as do_inspect
        from ..jsonout import dumps
        from . import render

        report = do_inspect(model, mode=mode.value, input_name=input_name, size=size, at=at,
                            output_stride=output_stride, opt_size=opt_size, max_size=max_size)
    if as_json:
        typer.echo(dumps(report.to_dict()))
    else:
        render.inspection(report)
    if report.already_convolutional:
        raise typer.Exit(EXIT_ALREADY_FCN)
    raise typer.Exit(EXIT_OK if report else EXIT_BAD_INPUT)
