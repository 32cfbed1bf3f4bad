"""``onnxfcn verify``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .app import EXIT_MISMATCH, EXIT_OK, Command, app, epilog, errors, fail, set_verbose, write_json
from .params import (
    CheckSizes,
    Converted,
    JsonFile,
    MaxMemory,
    Mean,
    Original,
    Provider,
    ProviderOpt,
    Quiet,
    Scale,
    Std,
    Verbose,
)

if TYPE_CHECKING:
    import numpy as np

EXITS = ("0 every check passed; 1 a check failed (a value beyond its rounding bound, an output missing or renamed, a "
         "model onnxruntime cannot load); 2 bad input, metadata that disagrees with the original, bad option or out "
         "of memory.")


def _positions(text: str) -> int | str:
    if text == "all":
        return "all"
    try:
        pos = int(text)
    except ValueError:
        fail(f"--positions must be 'all' or a number, not {text!r}")
    if pos < 1:
        fail("--positions must be at least 1")
    return pos


@app.command(cls=Command, short_help="Prove a converted model against the original (exit 0 passed, 1 mismatch).",
             epilog=epilog(["onnxfcn verify vgg16.onnx vgg16.fcn.onnx",
                            "onnxfcn verify r50.onnx r50.fcn.onnx --size 384x384 --positions all --json v.json",
                            "onnxfcn verify m.onnx m.fcn.onnx --image cat.jpg --mean 0.485,0.456,0.406 "
                            "--std 0.229,0.224,0.225"], EXITS))
def verify(
    ctx: typer.Context,
    original: Original,
    converted: Converted,
    size: CheckSizes = None,
    batch: Annotated[int, typer.Option(min=1, max=4096, help="Batch size of the random inputs.")] = 2,
    positions: Annotated[str, typer.Option(metavar="all|N", help="'all', or how many cells to check (corners, edges, "
                                           "centre, then random).")] = "16",
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    npy: Annotated[Optional[Path], typer.Option("--npy", metavar="FILE", help="Your own input: a .npy array, "
                                                "N x C x H x W (or NHWC for NHWC models).")] = None,
    image: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Your own input image; see --mean/--std/"
                                                  "--scale.")] = None,
    mean: Mean = None,
    std: Std = None,
    scale: Scale = None,
    provider: ProviderOpt = Provider.cpu,
    atol: Annotated[Optional[float], typer.Option(help="Replace the rounding bound by atol + rtol * "
                                                  "max|reference|.")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Replace the rounding bound by atol + rtol * "
                                                  "max|reference|.")] = None,
    strict: Annotated[bool, typer.Option(help="Fail on sliding-window differences even when the model is only "
                                         "approximately exact.")] = False,
    json_path: JsonFile = None,
    quiet: Quiet = False,
    max_memory: MaxMemory = None,
    verbose: Verbose = False,
) -> None:
    """Prove a converted model against the original on onnxruntime (on CUDA too, with --provider cuda or auto)."""
    set_verbose(ctx, verbose)
    pos = _positions(positions)
    with errors(ctx):
        from ..verify import verify as do_verify
        from . import render

        if json_path is not None:
            from ..io import check_output_path

            check_output_path(json_path, what="JSON")
        arr = _load_input(npy, image, mean, std, scale, original)
        report = do_verify(original, converted, sizes=size, batch=batch, inputs=arr, positions=pos, seed=seed,
                           provider=provider.value, rtol=rtol, atol=atol, strict=strict,
                           progress=None if quiet else render.progress(), max_memory=max_memory)
        if json_path is not None:
            write_json(json_path, report.to_dict())
    if quiet:
        render.verdict(report)
    else:
        render.verify_report(report)
    raise typer.Exit(EXIT_OK if report else EXIT_MISMATCH)


def _load_input(npy: Path | None, image: Path | None, mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                scale: float | None, original: Path) -> np.ndarray | None:
    """The user's own input: a .npy array as it is, or an image preprocessed as the options say."""
    import numpy as np

    from ..errors import OnnxFcnError
    from ..io import load_model
    from ..plan import analyse_model
    from ..preprocess import Preprocess, read_image

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
    pre = Preprocess(1 / 255 if scale is None else scale, mean, std)
    pre.check(img_in.channels)
    arr = pre.apply(read_image(image, img_in.channels))[None]
    return arr if img_in.layout == "NHWC" else arr.transpose(0, 3, 1, 2).copy()
