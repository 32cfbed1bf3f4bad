"""The ``onnxfcn`` application: its Typer app, the flags every command shares through the
context, one-line errors and the exit codes.

Nothing here imports onnx or onnxruntime: ``onnxfcn --help`` and ``--version`` answer at once.
The commands import the library inside their bodies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

from .._version import __version__

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT, EXIT_ALREADY_FCN = 0, 1, 2, 3


class OptionError(typer.BadParameter):
    """A bad option value, shown as one line (click shows usage errors on four)."""

    def show(self, file: IO[Any] | None = None) -> None:
        typer.echo(f"error: {self.message}", err=True)


# click's UsageError (the base of every command-line error), whether typer vendors click or not
_UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class _OneLine:
    """Usage errors (a missing argument, an unknown option, a value that is not a choice) as one
    line naming the command's --help, like every other error of the tool."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent, **extra)  # type: ignore[misc]
        except OptionError:
            raise
        except _UsageError as exc:
            prog = " ".join(p for p in ((parent.command_path if parent is not None else ""), info_name or "") if p)
            message = exc.format_message()  # type: ignore[attr-defined]
            raise OptionError(f"{message.rstrip('.')} (see '{prog} --help')") from None


class Command(_OneLine, TyperCommand):
    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """The usage line names arguments as their help does: ``MODEL``, ``INPUT...`` (typer would
        write ``{MODEL}``)."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or (param.name or "").upper()
                pieces.append(name if param.nargs == 1 or name.endswith("...") else f"{name}...")
        return pieces


class Group(_OneLine, TyperGroup):
    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except OptionError:
            raise
        except _UsageError as exc:
            message = exc.format_message()  # type: ignore[attr-defined]
            raise OptionError(f"{message.rstrip('.')} (see '{ctx.command_path} --help')") from None


@dataclass
class CliState:
    """What the root options set for every command (typer's context object)."""

    verbose: bool = False


app = typer.Typer(
    cls=Group, add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
    help="Turn an ONNX image classifier into a fully convolutional model, and prove it right.",
)


def state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def set_verbose(ctx: typer.Context, verbose: bool) -> None:
    """A command's own -v: the same as the root's."""
    if verbose:
        state(ctx).verbose = True
        logging.getLogger().setLevel(logging.INFO)
    _library_warnings(state(ctx).verbose)


def _library_warnings(verbose: bool) -> None:
    """Warnings of the libraries underneath (Dask's "Sending large graph", onnxruntime's) are for
    -v: the tool says what matters in its own words, and -q means quiet."""
    import warnings

    warnings.simplefilter("default" if verbose else "ignore")


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def errors(ctx: typer.Context, model: Path | None = None) -> Iterator[None]:
    """The library's errors as one line and an exit code; anything else is a bug: one line here,
    the traceback with -v. ``model``: the file an "already fully convolutional" refers to."""
    from ..errors import AlreadyConvolutionalError, OnnxFcnError, SelfCheckError

    try:
        yield
    except AlreadyConvolutionalError as exc:
        where = f"{model}: " if model is not None else ""
        fail(f"{where}{exc} -- nothing to convert, nothing written (exit {EXIT_ALREADY_FCN})", EXIT_ALREADY_FCN)
    except SelfCheckError as exc:
        fail(f"self-check failed, nothing written: {exc}", EXIT_MISMATCH)
    except OnnxFcnError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except (typer.Exit, KeyboardInterrupt):
        raise
    except MemoryError as exc:  # a resource limit, not a bug
        fail(f"out of memory: {str(exc).strip() or 'an allocation failed'}", EXIT_BAD_INPUT)
    except Exception as exc:  # anything else is a bug: one line here, the traceback with -v
        if state(ctx).verbose:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        fail(f"unexpected {type(exc).__name__}: {first} (run with -v for the traceback, and please report it)")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"onnxfcn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log what the library does; tracebacks for bugs.")] = False,
) -> None:
    state(ctx).verbose = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    _library_warnings(verbose)


def epilog(examples: list[str], exits: str) -> str:
    """Examples (kept as written) and exit codes (wrapped by click like any paragraph)."""
    return "\n".join(["\b", "Examples:", *[f"  {e}" for e in examples], "", f"Exit codes: {exits}"])


def write_json(path: Path, data: dict[str, Any]) -> None:
    """A report as strict JSON, written atomically; a failure is one line."""
    from ..errors import OnnxFcnError
    from ..io import write_text_atomic
    from ..jsonout import dumps

    try:
        write_text_atomic(path, dumps(data))
    except OSError as exc:
        raise OnnxFcnError(f"{path}: cannot write the JSON report: {exc.strerror or exc}") from None
