"""``onnxfcn scan``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .app import Command, app, epilog, errors, fail, set_verbose
from .params import (
    Channels,
    Converted,
    Labels,
    MaxMemory,
    Mean,
    Provider,
    ProviderOpt,
    Quiet,
    Scale,
    Std,
    Verbose,
)

if TYPE_CHECKING:
    from ..preprocess import Preprocess
    from ..scan import ScanModel, ScanOptions, ScanResult
    from ..scan.outputs import ScoresFile

EXITS = ("0 every input scanned and its files written; 2 bad input (a model not converted by onnxfcn, an unreadable "
         "or too small image, a bad option), out of memory, or no Dask for --workers. An input's files are each "
         "written whole or not at all.")


class _Writer:
    """Writes each input's files as its scan finishes; a tiled input's scores file stays listed
    (and is removed on failure) until it is in place. The output folder is made when the first
    file is, and removed again if the scan fails before anything is in it."""

    def __init__(self, out: Path, cls: str | None, display_scale: float, png: bool, quiet: bool) -> None:
        self.out, self.cls, self.display_scale, self.png, self.quiet = out, cls, display_scale, png, quiet
        self.temps: list[str] = []
        self.made: list[Path] = []  # the folders this scan created, innermost last

    def folder(self) -> Path:
        if not self.out.is_dir():
            missing = [p for p in (self.out, *self.out.parents) if not p.exists()]
            self.out.mkdir(parents=True, exist_ok=True)
            self.made = list(reversed(missing))
        return self.out

    def scores_for(self, name: str) -> Callable[[tuple[int, int, int]], ScoresFile]:
        from ..scan.outputs import ScoresFile

        def make(shape: tuple[int, int, int]) -> ScoresFile:
            f = ScoresFile(self.folder() / f"{name}.scores.npy", shape)
            self.temps.append(f.tmp)
            return f

        return make

    def finish(self, result: ScanResult) -> None:
        from ..scan.outputs import write_result
        from . import render

        written = write_result(result, self.folder(), self.cls, self.display_scale, self.png,
                               self.temps[-1] if self.temps else None)
        self.temps.clear()
        if not self.quiet:
            render.scan_result(result, written)

    @contextmanager
    def cleaning(self) -> Iterator[None]:
        try:
            yield
        finally:
            for tmp in self.temps:
                Path(tmp).unlink(missing_ok=True)
            for folder in reversed(self.made):  # innermost first; only while empty
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()


def _model(converted: Path, output_name: str | None, labels: Path | None, class_: str | None) -> ScanModel:
    from ..preprocess import read_labels
    from ..scan import ScanModel

    model = ScanModel.load(converted, output_name)
    if labels is not None:
        model = model.with_labels(read_labels(labels))
    if class_ is not None:
        model.class_index(class_)  # range-checked before anything runs
    return model


@app.command(cls=Command, short_help="Score maps, best cells with boxes, and pictures for images of any size.",
             epilog=epilog(["onnxfcn scan digits_fcn.onnx models/digits_scene.png --out scan --display-scale 6",
                            "onnxfcn scan r50.fcn.onnx photos/ --out maps --top 10 --softmax",
                            "onnxfcn scan r50.fcn.onnx slide.npy --out maps --tile 1024 --workers 4"], EXITS))
def scan(
    ctx: typer.Context,
    converted: Converted,
    inputs: Annotated[list[Path], typer.Argument(metavar="INPUT...", show_default=False, help=(
        "Images (PNG, JPEG, TIFF), .npy arrays (the model input as it is: HxW, HxWxC or CxHxW), or folders of them."))],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help=(
        "Where NAME.scores.npy, NAME.json and NAME.png go (created if missing)."))],
    top: Annotated[Optional[int], typer.Option(metavar="K", help=(
        "Keep the K best cells per input [default: 5; with --threshold, all above it]."))] = None,
    threshold: Annotated[Optional[float], typer.Option(metavar="T", help=(
        "Keep every cell whose best score is at least T."))] = None,
    class_: Annotated[Optional[str], typer.Option("--class", metavar="C", help=(
        "The class drawn in the picture, by index or label [default: the best class overall]."))] = None,
    use_softmax: Annotated[bool, typer.Option("--softmax", help=(
        "Scores of cells and pictures as softmax probabilities (the .npy stays the model's output)."))] = False,
    display_scale: Annotated[float, typer.Option(metavar="F", help="Picture size relative to the input.")] = 1.0,
    png: Annotated[bool, typer.Option(help="Write the picture NAME.png.")] = True,
    tile: Annotated[Optional[int], typer.Option(metavar="N", help=(
        "Run in stride-aligned tiles of about NxN input pixels [default: one pass, or tiles when it would not fit "
        "in memory]."))] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, max=1024, metavar="N", help=(
        "Run on a local Dask cluster of N processes (needs onnxfcn[scale])."))] = None,
    scheduler: Annotated[Optional[str], typer.Option(metavar="ADDRESS", help=(
        "Run on this dask.distributed scheduler, e.g. tcp://host:8786."))] = None,
    mean: Mean = None,
    std: Std = None,
    scale: Scale = None,
    channels: Channels = None,
    labels: Labels = None,
    output_name: Annotated[Optional[str], typer.Option("--output", metavar="NAME", help=(
        "The score map output, if the model has several."))] = None,
    provider: ProviderOpt = Provider.cpu,
    max_memory: MaxMemory = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Run a converted model on images of any size: score maps, the best cells with their boxes, pictures.

    --mean, --std, --scale, --channels and --labels override what convert stored in the model."""
    set_verbose(ctx, verbose)
    if workers is not None and scheduler is not None:
        fail("give --workers or --scheduler, not both")
    if out.exists() and not out.is_dir():
        fail(f"--out {out}: exists and is not a folder")
    if not display_scale > 0:
        fail("--display-scale must be positive")
    with errors(ctx):
        from ..runtime import resolve_providers
        from ..scan import ScanOptions
        from ..scan.sources import list_inputs

        files = list_inputs(inputs)
        model = _model(converted, output_name, labels, class_)
        pre = model.preprocess.with_overrides(scale, mean, std, channels.value if channels else None)
        opts = ScanOptions(top=top if top is not None or threshold is not None else 5, threshold=threshold,
                           softmax=use_softmax, tile=tile, max_memory=max_memory,
                           provider=resolve_providers(provider.value)[-1])
        writer = _Writer(out, class_, display_scale, png, quiet)
        with writer.cleaning():
            if workers is not None or scheduler is not None:
                _on_dask(model, files, opts, pre, writer, workers, scheduler, tile is not None)
            else:
                _serial(model, files, opts, pre, writer)


def _serial(model: ScanModel, files: list[Path], opts: ScanOptions, pre: Preprocess, writer: _Writer) -> None:
    from ..scan import open_input, scan_source
    from ..scan.runner import Runner
    from . import render

    runner = Runner(model, opts.provider)
    for f in files:
        src = open_input(f, model, pre)
        writer.finish(scan_source(runner, model, src, opts, None if writer.quiet else render.progress("tiles"),
                                  writer.scores_for(src.name)))


def _on_dask(model: ScanModel, files: list[Path], opts: ScanOptions, pre: Preprocess, writer: _Writer,
             workers: int | None, scheduler: str | None, tiled: bool) -> None:
    from ..scan import open_input
    from ..scan.distributed import client, scan_files, scan_tiled
    from . import render

    with client(workers, scheduler) as c:
        if len(files) == 1 and tiled:
            src = open_input(files[0], model, pre)
            writer.finish(scan_tiled(c, model, src, opts, None if writer.quiet else render.progress("tiles"),
                                     writer.scores_for(src.name)))
        else:
            for result in scan_files(c, model, files, opts, pre):
                writer.finish(result)
