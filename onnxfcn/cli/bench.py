"""``onnxfcn bench``."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import Command, app, epilog, errors, set_verbose, write_json
from .params import BenchSize, Converted, JsonFile, Original, Provider, ProviderOpt, Verbose

EXITS = ("0 measured; 2 bad input (a second model without onnxfcn metadata, a size no window fits), bad option or out "
         "of memory.")


@app.command(cls=Command, short_help="Time one pass of the converted model against the original on every window.",
             epilog=epilog(["onnxfcn bench vgg16.onnx vgg16.fcn.onnx --size 384x384",
                            "onnxfcn bench resnet50.onnx r50_os16.onnx --json bench.json"], EXITS))
def bench(
    ctx: typer.Context,
    original: Original,
    converted: Converted,
    size: BenchSize = None,
    repeats: Annotated[int, typer.Option(min=1, max=1000, help="Timed runs of each phase (after one warm-up); "
                                         "medians are reported.")] = 5,
    batch: Annotated[int, typer.Option(min=1, max=4096, help="Windows per run of the original.")] = 16,
    provider: ProviderOpt = Provider.cpu,
    json_path: JsonFile = None,
    verbose: Verbose = False,
) -> None:
    """One pass of CONVERTED against ORIGINAL on every window it replaces, side by side: medians, MACs, memory."""
    set_verbose(ctx, verbose)
    with errors(ctx):
        from ..bench import bench as do_bench
        from . import render

        if json_path is not None:
            from ..io import check_output_path

            check_output_path(json_path, what="JSON")
        report = do_bench(original, converted, size=size, repeats=repeats, batch=batch, provider=provider.value,
                          progress=render.progress("runs"))
        if json_path is not None:
            write_json(json_path, report.to_dict())
    render.bench_report(report)
