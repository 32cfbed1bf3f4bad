"""What the commands print: reports as text, tables drawn by rich (which typer brings), one
geometry printer for convert and inspect, and progress bars on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from ..bench import BenchReport
    from ..convert import ConversionReport
    from ..inspect import InspectReport
    from ..scan import ScanResult
    from ..verify import OutputComparison, VerifyReport


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain table: a header, a rule of dashes, the rows, no trailing spaces; as wide as it
    needs on a pipe or a file, wrapped to the terminal on one."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    rule = box.Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)
    t = Table(*header, box=rule, show_edge=False, pad_edge=False, header_style="", padding=(0, 1))
    for row in rows:
        t.add_row(*row)
    console = Console(width=None if sys.stdout.isatty() else 1000, highlight=False, soft_wrap=False, emoji=False,
                      markup=False, color_system=None)
    with console.capture() as captured:
        console.print(t)
    typer.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def _mb(n: int) -> str:
    return "external" if n < 0 else (f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB")


def _dims(d: dict[str, list[Any]]) -> str:
    return "; ".join(f"{k} {'x'.join(str(x) for x in v)}" for k, v in d.items())


def _pair(v: Sequence[int], sep: str = "x") -> str:
    return f"{v[0]}{sep}{v[1]}"


def geometry(g: dict[str, Any]) -> None:
    """The geometry (``Geometry.summary``, with ``grid_at``), as convert and inspect print it."""
    typer.echo(f"window {_pair(g['window'])}, stride {_pair(g['stride'])}, offset {_pair(g['offset'], ',')}, "
               f"receptive field {_pair(g['receptive_field'])}")
    at = g.get("grid_at")
    example = f"  (e.g. {_pair(at['input'])} -> {_pair(at['cells'])})" if at else ""
    typer.echo(f"grid   out_height = {g['grid_formula'][0]}, out_width = {g['grid_formula'][1]}{example}")
    if at and "note" in at:
        typer.echo(f"       {at['note']}")
    typer.echo(f"min    input at least {_pair(g['min_size'])}; smaller inputs fit no window: onnxruntime raises an error "
               "(never a crash)")
    if g["sizes"] != ["any", "any"]:
        typer.echo(f"sizes  H = {g['sizes'][0]}, W = {g['sizes'][1]} only: there alone merged branches' sizes agree "
                   "and space-to-depth blocks divide the map (elsewhere onnxruntime fails; onnxfcn refuses such sizes)")
    if g["exact"]:
        typer.echo("exact  yes: each cell equals the original classifier on its crop (no padding inside a window)")
        return
    typer.echo("exact  no: cells match crops only approximately, because of")
    for r in g["reasons"][:4]:
        typer.echo(f"         - {r}")
    if len(g["reasons"]) > 4:
        typer.echo(f"         - ... and {len(g['reasons']) - 4} more")


def changes(rows: Sequence[tuple[str, str, str]]) -> None:
    if rows:
        typer.echo("")
        table(("node", "before", "after"), rows)


def _dims_text(dims: list[Any]) -> str:
    return "x".join(str(d) for d in dims)


def conversion(report: ConversionReport, out_path: Path | None) -> None:
    geo = report.geometry
    typer.echo(f"input  {report.image.name}: {report.image.layout}, reference size "
               f"{report.image.height}x{report.image.width}; mode {report.mode}")
    changes([(c.node, c.before, c.after) for c in report.changes])
    b, a = report.before, report.after
    ops = sorted(set(b.ops) | set(a.ops), key=lambda o: -(b.ops.get(o, 0) + a.ops.get(o, 0)))
    rows = [("nodes", str(b.nodes), str(a.nodes))]
    rows += [(f"  {o}", str(b.ops.get(o, 0)), str(a.ops.get(o, 0))) for o in ops if b.ops.get(o, 0) != a.ops.get(o, 0)]
    rows += [("inputs", _dims(b.inputs), _dims(a.inputs)), ("outputs", _dims(b.outputs), _dims(a.outputs)),
             ("size", _mb(b.bytes), _mb(a.bytes)), ("time", "", f"{report.seconds:.2f} s")]
    typer.echo("")
    table(("", "before", "after"), rows)
    typer.echo("")
    example = geo.next_size(geo.window[0] + 2 * geo.stride[0], geo.window[1] + 2 * geo.stride[1])
    geometry(geo.summary(*example))
    if report.self_check:
        sizes = ", ".join(_pair(r["size"]) for r in report.self_check)
        typer.echo(f"check  ran on onnxruntime at {sizes} (batch {report.self_check[0]['batch']}): ok")
        for out in report.self_check[0].get("outputs", []):
            if out.get("ratio") is not None:
                typer.echo(f"       {out['name']} at the reference size: error {out['error']:.3g} from the exact head, "
                           f"rounding bound {out['bound']:.3g} (error/bound {out['ratio']:.3g})")
    if report.static:
        outs = "; ".join(f"{k} {_dims_text(v)}" for k, v in report.static["outputs"].items())
        typer.echo(f"static input {_dims_text(report.static['input'])}, outputs {outs}")
        if "check" in report.static:
            typer.echo("       equal to the dynamic model at that size, cell for cell (batch "
                       f"{report.static['check']['batch']})")
    if report.deploy:
        typer.echo(f"deploy trtexec {report.deploy['trtexec']}")
    if out_path is not None:
        typer.echo(f"wrote  {out_path}")


def describe_output(o: OutputComparison) -> str:
    """One output's numbers: against the reference, then the bound (or tolerance) that judged it."""
    import math

    top1 = f" top1 {o.top1 * 100:.1f}%" if o.top1 is not None else ""
    head = f"{o.name}: max abs {o.max_abs:.3g}, mean abs {o.mean_abs:.3g}, max rel {o.max_rel:.3g}{top1}"
    if o.note and not math.isfinite(o.max_abs):
        return f"{o.name}: {o.note}"
    if o.method == "bound" and o.ratio is not None:
        orig = "" if o.original_ratio is None else f", original's own {o.original_ratio:.3g}"
        return (f"{head}\n      vs exact float64 head: error {o.error_vs_exact:.3g}, rounding bound {o.bound:.3g}, "
                f"error/bound {o.ratio:.3g}{orig}")
    if o.method == "exact":
        return f"{head}\n      integers: must be equal"
    return (f"{head}\n      tolerance atol {o.atol:.1g} + rtol {o.rtol:.1g} * {o.ref_max:.3g}; "
            f"would pass with rtol >= {o.needed_rtol:.3g}")


def verify_report(report: VerifyReport) -> None:
    for c in report.checks:
        if c.skipped:
            typer.echo(f"[{c.name}] skipped: {c.note}")
            continue
        size = c.details.get("size")
        where = f" at {size[0]}x{size[1]}" if size else ""
        extra = ""
        if "cells_checked" in c.details:
            extra = f", {c.details['cells_checked']} of {c.details['grid'][0]}x{c.details['grid'][1]} cells"
        typer.echo(f"[{c.name}] {'exact' if c.exact else 'approximate'}{where}{extra}: {c.status}"
                   + (f" ({c.note})" if c.note else ""))
        for o in c.outputs:
            typer.echo("    " + describe_output(o))
            if o.border_max_abs is not None and o.error_map is not None:
                inter = "n/a" if o.interior_max_abs is None else f"{o.interior_max_abs:.3g}"
                typer.echo(f"      border cells max abs {o.border_max_abs:.3g}, interior {inter}")
                if len(o.error_map) <= 12 and len(o.error_map[0]) <= 12:
                    for row in o.error_map:
                        typer.echo("      " + " ".join("   .    " if e is None else f"{e:8.1e}" for e in row))
    verdict(report, seconds=True)


def verdict(report: VerifyReport, seconds: bool = False) -> None:
    """The one PASSED/FAILED line."""
    tail = f" ({report.seconds:.2f} s)" if seconds else ""
    typer.echo(("PASSED" if report.passed else "FAILED") + f": {report.reason}{tail}")


def inspection(report: InspectReport) -> None:
    if report.input:
        i = report.input
        typer.echo(f"input  {i['name']}: {i['layout']}, reference size {_pair(i['reference_size'])}")
    for k, h in enumerate(report.heads):
        typer.echo(f"head {k}: {' -> '.join(h['nodes'])}  =>  {', '.join(h['outputs'])}")
    changes([(c["node"], c["before"], c["after"]) for c in report.changes])
    for b in report.blockers:
        typer.echo(f"blocker: {'node ' + repr(b['node']) + ': ' if b['node'] else ''}{b['reason']}")
    if report.geometry:
        typer.echo("")
        geometry(report.geometry)
    if report.deploy:
        typer.echo(f"deploy trtexec {report.deploy['trtexec']}")
    typer.echo("\n" + ("convertible" if report.convertible else
                       "already fully convolutional" if report.already_convolutional else "NOT convertible"))


def bench_report(r: BenchReport) -> None:
    def ms(t: Any) -> str:
        return f"{t.median * 1e3:.2f} ms"

    def rss(t: Any) -> str:
        return "n/a" if t.added_rss is None else f"+{t.added_rss / 2**20:.0f} MiB"

    def macs(n: int) -> str:
        return f"{n / 1e9:.2f} G" if n >= 1e8 else f"{n / 1e6:.2f} M"

    (h, w), (wh, ww), (gh, gw) = r.size, r.window, r.grid
    typer.echo(f"bench at {h}x{w}: {gh}x{gw} windows of {wh}x{ww}, stride {_pair(r.stride)} "
               f"({r.provider}, median of {r.repeats})")
    table(("run", "time", "MACs", "peak memory"), [
        ("converted, one pass", ms(r.converted), macs(r.converted_macs), rss(r.converted)),
        (f"original, {r.windows} windows", ms(r.original_windows), macs(r.original_macs * r.windows),
         rss(r.original_windows)),
        (f"converted at {wh}x{ww}", ms(r.converted_reference), "", rss(r.converted_reference)),
        (f"original at {wh}x{ww}", ms(r.original_reference), macs(r.original_macs), rss(r.original_reference))])
    typer.echo(f"speedup {r.speedup:.2f}x, MAC ratio {r.mac_ratio:.2f}, efficiency {r.efficiency:.2f}, "
               f"reference latency converted/original {r.reference_latency_ratio:.3f}")
    for note in r.notes:
        typer.echo(f"note: {note}")


def scan_result(r: ScanResult, written: list[Path]) -> None:
    (h, w), (gh, gw) = r.size, r.grid
    tiles = f" in {r.tiles} tiles" if r.tiles > 1 else ""
    resumed = r.run.get("tiles_resumed", 0)
    tiles += f" ({resumed} done before, resumed)" if resumed else ""
    line = f"{r.name}: {h}x{w} -> {gh}x{gw} cells{tiles}"
    if r.cells:
        c = r.cells[0]
        what = f"class {c.cls}" + (f" '{c.label}'" if c.label is not None else "")
        line += f"; best {what} {c.score:.4g} at {c.box}"
    typer.echo(line)
    if not r.tiles_exact:
        typer.echo("  note: a global pool inside the trunk sees the whole image, so tiled scores differ from one pass")
    if r.background is not None:
        b = r.background
        typer.echo(f"  background: {b['tiles_skipped']} of {b['tiles']} tiles and {b['fraction_skipped']:.0%} of the "
                   "cells skipped (NaN)")
    typer.echo("  wrote " + ", ".join(str(p) for p in written))


def progress(label: str = "crops") -> Callable[[int, int], None]:
    """A progress bar on stderr, shown only on a terminal."""
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


def scan_progress() -> Callable[[int, int, int], None]:
    """Tiles done, input megapixels per second and the time left, on stderr, on a terminal only."""
    import time

    state: dict[str, Any] = {}

    def update(done: int, total: int, pixels: int) -> None:
        if not sys.stderr.isatty() or total <= 1:
            return
        now = time.perf_counter()
        start = state.setdefault("start", now)
        rate = pixels / 1e6 / max(now - start, 1e-9)
        left = (now - start) * (total - done) / max(done, 1)
        sys.stderr.write(f"\rtiles {done}/{total}, {rate:.1f} MP/s, {int(left) // 60}:{int(left) % 60:02d} left   ")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return update
