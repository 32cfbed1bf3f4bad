"""``onnxfcn scan``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from .app import Command, app, epilog, errors, fail, set_verbose
from .params import (
    Channels,
    Converted,
    Labels,
    MaxMemory,
    Mean,
    Mpp,
    Provider,
    ProviderOpt,
    Quiet,
    Scale,
    Std,
    Verbose,
)

if TYPE_CHECKING:
    from ..scan import ScanModel, ScanOptions, ScanResult
    from ..scan.driver import StoreFor
    from ..scan.outputs import ScoresZarr
    from ..scan.sources import ReadOptions, Source

EXITS = ("0 every input scanned and its files written; 2 bad input (a model not converted by onnxfcn, an unreadable "
         "or too small image, a bad option), out of memory, or no Dask for --workers. An input's files are each "
         "written whole or not at all; a tiled scan that stops keeps the tiles it wrote for --resume.")


class _Writer:
    """Writes each input's files as its scan finishes. A tiled input's scores go to a Zarr store
    made under a partial name (kept for --resume if the scan stops after a tile is written). The
    output folder is made when the first file is, and removed again if the scan fails before
    anything is in it."""

    def __init__(self, out: Path, cls: str | None, picture: dict[str, Any], png: bool, heatmap: bool, resume: bool,
                 quiet: bool) -> None:
        self.out, self.cls, self.picture, self.png, self.heatmap = out, cls, picture, png, heatmap
        self.resume, self.quiet = resume, quiet
        self.stores: list[ScoresZarr] = []
        self.made: list[Path] = []  # the folders this scan created, innermost last

    def folder(self) -> Path:
        if not self.out.is_dir():
            missing = [p for p in (self.out, *self.out.parents) if not p.exists()]
            self.out.mkdir(parents=True, exist_ok=True)
            self.made = list(reversed(missing))
        return self.out

    def store_for(self, model: ScanModel, source: Source, model_path: Path, item: Path) -> StoreFor:
        from ..scan.outputs import ScoresZarr, cell_geometry

        def make(shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> ScoresZarr:
            final = self.folder() / f"{source.name}.scores.zarr"
            centre0 = (float(model.centres(0, 1)[0]), float(model.centres(1, 1)[0]))
            attrs = {"onnxfcn": {"window": list(model.window), "stride": list(model.stride),
                                 "offset": list(model.offset), "receptive_field": list(model.receptive_field),
                                 "mode": model.mode, "exact": model.exact, "labels": list(model.labels or []),
                                 "size": [source.height, source.width], **source.placement.to_json(),
                                 "cells_geometry": cell_geometry(source.placement, model.stride, centre0)}}
            store = ScoresZarr.create(final, shape, chunks, _signature(model_path, item, source, shape, chunks), attrs,
                                      self.resume)
            self.stores.append(store)
            return store

        return make

    def finish(self, result: ScanResult) -> None:
        from ..scan.outputs import write_result
        from . import render

        store = next((s for s in self.stores if s.final.name == f"{result.name}.scores.zarr"), None)
        written = write_result(result, self.folder(), self.cls, self.picture["display_scale"], self.png, store,
                               self.picture["view"], self.picture["max_side"], self.heatmap)
        if store is not None:
            self.stores.remove(store)
        if not self.quiet:
            render.scan_result(result, written)

    @contextmanager
    def cleaning(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            kept = [s for s in self.stores if s.partial.exists() and s.done()]
            for s in self.stores:
                s.discard_if_empty()
            if kept:
                typer.echo(f"note: {len(kept[0].done())} tiles of {kept[0].final.name} are kept in {kept[0].partial}; "
                           "the same command with --resume continues from there", err=True)
            raise
        finally:
            for folder in reversed(self.made):  # innermost first; only while empty
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()


def _signature(model_path: Path, item: Path, source: Source, shape: tuple[int, int, int],
               chunks: tuple[int, int, int]) -> dict[str, Any]:
    """What a partial scan must have been made with to be resumed: the same model and input
    files (path, size, modification time), level, preprocessing, map and tiles."""
    def ident(p: Path) -> list[Any]:
        st = p.stat()
        return [str(p.resolve()), st.st_size, st.st_mtime_ns]

    return {"model": ident(model_path), "input": ident(item), "level": source.placement.level,
            "preprocess": repr(getattr(source, "preprocess", None)), "shape": list(shape), "chunks": list(chunks)}


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
             epilog=epilog(["onnxfcn scan digits_fcn.onnx models/digits_scene.png --out scan --picture classes --nms 0.3",
                            "onnxfcn scan r50.fcn.onnx photos/ --out maps --top 10 --softmax",
                            "onnxfcn scan patch.fcn.onnx slide.svs --out maps --mpp 0.5 --skip-background --resume",
                            "onnxfcn scan landcover.fcn.onnx scene.tif --out maps --heatmap-tiff --workers 4 "
                            "--tile 2048"], EXITS))
def scan(
    ctx: typer.Context,
    converted: Converted,
    inputs: Annotated[list[Path], typer.Argument(metavar="INPUT...", show_default=False, help=(
        "Images (PNG, JPEG), TIFF (OME, Geo, pyramids), whole slides (SVS, NDPI, MRXS...), Zarr images, .npy arrays "
        "(the model input as it is: HxW, HxWxC or CxHxW), or folders of them."))],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help=(
        "Where NAME.json, NAME.png and the scores (NAME.scores.npy, or NAME.scores.zarr for a tiled scan) go."))],
    top: Annotated[Optional[int], typer.Option(metavar="K", help=(
        "Keep the K best cells per input [default: 5; with --threshold, all above it]."))] = None,
    threshold: Annotated[Optional[float], typer.Option(metavar="T", help=(
        "Keep every cell whose best score is at least T."))] = None,
    nms: Annotated[Optional[float], typer.Option(min=0.0, max=0.999, metavar="IOU", help=(
        "Leave out a cell whose box overlaps a better kept cell's by more than IOU (intersection over union; "
        "0: no overlap at all): one cell per object."))] = None,
    class_: Annotated[Optional[str], typer.Option("--class", metavar="C", help=(
        "The class drawn in the picture, by index or label [default: the best class overall]."))] = None,
    use_softmax: Annotated[bool, typer.Option("--softmax", help=(
        "Scores of cells and pictures as softmax probabilities (the stored scores stay the model's output)."))] = False,
    picture: Annotated[str, typer.Option(metavar="map|classes", help=(
        "The picture: one class's score map, or every cell's best class in distinct colours."))] = "map",
    picture_size: Annotated[int, typer.Option(min=16, metavar="N", help=(
        "The input's longer side in the picture at most (the title and the legend or colour bar go around it)."))] = 2048,
    display_scale: Annotated[float, typer.Option(metavar="F", help="Picture size relative to the input.")] = 1.0,
    png: Annotated[bool, typer.Option(help="Write the picture NAME.png.")] = True,
    heatmap_tiff: Annotated[bool, typer.Option("--heatmap-tiff", help=(
        "Also write the score map as NAME.heatmap.tif: a GeoTIFF for a GeoTIFF input, an OME-TIFF with the cell's "
        "physical size for a microscopy input."))] = False,
    level: Annotated[Optional[int], typer.Option(min=0, metavar="N", help="Scan pyramid level N.")] = None,
    mpp: Mpp = None,
    skip_background: Annotated[bool, typer.Option("--skip-background", help=(
        "Never read or run tiles of background (glass): a foreground mask on a low-resolution level (Otsu on "
        "saturation and brightness); background cells are NaN."))] = False,
    resume: Annotated[bool, typer.Option("--resume", help=(
        "Continue a tiled scan that was stopped: the tiles it wrote are not run again."))] = False,
    tile: Annotated[Optional[int], typer.Option(metavar="N", help=(
        "Run in stride-aligned tiles of about NxN input pixels [default: one pass, or tiles when it would not fit "
        "the memory budget, always for files read tile by tile]."))] = None,
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

    --mean, --std, --scale, --channels, --labels and --mpp override what convert stored in the model."""
    set_verbose(ctx, verbose)
    if workers is not None and scheduler is not None:
        fail("give --workers or --scheduler, not both")
    if out.exists() and not out.is_dir():
        fail(f"--out {out}: exists and is not a folder")
    if not display_scale > 0:
        fail("--display-scale must be positive")
    if picture not in ("map", "classes"):
        fail(f"--picture {picture!r}: map or classes")
    with errors(ctx):
        from ..runtime import resolve_providers
        from ..scan import ScanOptions
        from ..scan.sources import list_inputs, read_options

        files = list_inputs(inputs)
        model = _model(converted, output_name, labels, class_)
        pre = model.preprocess.with_overrides(scale, mean, std, channels.value if channels else None)
        read = read_options(model, pre, level, mpp, max_memory)
        opts = ScanOptions(top=top if top is not None or threshold is not None else 5, threshold=threshold,
                           softmax=use_softmax, tile=tile, max_memory=max_memory,
                           provider=resolve_providers(provider.value)[-1], skip_background=skip_background,
                           nms=nms)
        view = {"view": picture, "max_side": picture_size, "display_scale": display_scale}
        writer = _Writer(out, class_, view, png, heatmap_tiff, resume, quiet)
        with writer.cleaning():
            if workers is not None or scheduler is not None:
                _on_dask(model, converted, files, opts, read, writer, workers, scheduler, tile is not None)
            else:
                _serial(model, converted, files, opts, read, writer)


def _serial(model: ScanModel, converted: Path, files: list[Path], opts: ScanOptions, read: ReadOptions,
            writer: _Writer) -> None:
    from ..scan import open_input, scan_source
    from ..scan.runner import Runner
    from . import render

    runner = Runner(model, opts.provider)
    for f in files:
        src = open_input(f, model, read)
        writer.finish(scan_source(runner, model, src, opts, None if writer.quiet else render.scan_progress(),
                                  writer.store_for(model, src, converted, f)))


def _on_dask(model: ScanModel, converted: Path, files: list[Path], opts: ScanOptions, read: ReadOptions,
             writer: _Writer, workers: int | None, scheduler: str | None, tiled: bool) -> None:
    from ..scan import open_input
    from ..scan.distributed import client, scan_files, scan_tiled
    from . import render

    with client(workers, scheduler) as c:
        if len(files) == 1 and tiled:
            src = open_input(files[0], model, read)
            writer.finish(scan_tiled(c, model, src, opts, None if writer.quiet else render.scan_progress(),
                                     writer.store_for(model, src, converted, files[0])))
        else:
            for result in scan_files(c, model, files, opts, read):
                writer.finish(result)

