"""``verify``: prove a converted model against its original on onnxruntime.

The converted model is the thing under test, so nothing in it is trusted (``subject.py``), and
onnxruntime runs the files themselves: the sessions map the weights from the files
(``runtime.file_session``), and the converted model's weights are never parsed into Python.
Per provider: the reference check (``reference.py``), then the sliding and feature checks at
each size (``sliding.py``); with two providers, CUDA's outputs are reported against CPU's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import InvalidConversionError, OnnxFcnError
from ..geometry import Geometry
from ..head import ImageInput
from ..io import load_model
from ..metadata import ConversionMetadata
from ..runtime import Progress, check_memory, resolve_providers
from .compare import CheckResult, VerifyReport, compare, tolerance_for
from .reference import reference_check, reference_pins
from .sessions import batched, converted_session, input_dtype, on_disk, random_input, run, session
from .sliding import CheckContext, sliding_and_feature
from .subject import Subject, outputs_check, read_conversion


def default_size(image: ImageInput, geo: Geometry) -> tuple[int, int]:
    """A larger size that gives a grid of at least 3 x 4 windows, all inside the image."""
    sh, sw = geo.stride
    if geo.mode == "dense":
        return geo.next_size(image.height + 2 * sh, image.width + 3 * sw)
    return geo.next_size(image.height + 2 * sh + geo.offset[0], image.width + 3 * sw + geo.offset[1])


def summarize_reasons(reasons: Sequence[str]) -> str:
    """'zero padding in 18 nodes (first /conv1/Conv); global pooling in the trunk at 3 nodes'."""
    pads = [r for r in reasons if r.startswith("zero padding at ")]
    pools = [r for r in reasons if r.startswith("global pooling")]
    rest = [r for r in reasons if r not in pads and r not in pools]
    parts = []
    if pads:
        first = pads[0][len("zero padding at "):].split(" (")[0]
        parts.append(f"zero padding in {len(pads)} node{'s' if len(pads) > 1 else ''} (first {first})")
    if pools:
        parts.append(f"global pooling inside the trunk at {len(pools)} node{'s' if len(pools) > 1 else ''}")
    return "; ".join(parts + list(rest)) or "not exact"


def _sizes(image: ImageInput, geo: Geometry, sizes: Sequence[tuple[int, int]] | None,
           inputs: np.ndarray | None) -> list[tuple[int, int]]:
    if inputs is not None:
        arr = np.asarray(inputs)
        if arr.ndim != 4:
            raise OnnxFcnError(f"input array must be 4-D {image.layout}, got shape {list(arr.shape)}")
        size_list = [(arr.shape[2], arr.shape[3]) if image.layout == "NCHW" else (arr.shape[1], arr.shape[2])]
    else:
        size_list = list(sizes) if sizes else [default_size(image, geo)]
    for h, w in size_list:
        if h < image.height or w < image.width:
            raise OnnxFcnError(f"size {h}x{w} is smaller than the reference window {image.height}x{image.width}")
        geo.check_size(h, w)
    return size_list


def _finish(report: VerifyReport, t0: float, reasons: Sequence[str]) -> VerifyReport:
    report.seconds = time.perf_counter() - t0
    failed = [c for c in report.checks if not c.passed]
    if failed:
        worst = failed[0]
        outs = [o for o in worst.outputs if not o.passed]
        detail = f"output '{outs[0].name}' {outs[0].describe()}" if outs else worst.note
        report.reason = f"{worst.name} check failed: {detail}"
    elif not report.passed:
        report.reason = "no check ran"
    else:
        report.reason = "every check passed" + ("" if report.exact else f" (sliding windows approximate: "
                                                f"{summarize_reasons(reasons)})")
    return report


def _reference(ctx: CheckContext, conv: onnx.ModelProto, conv_path: Path, provider: str, tag: str,
               orig_sess: ort.InferenceSession, conv_sess: ort.InferenceSession,
               dtype: np.dtype) -> CheckResult:
    """The reference check; where it fails with H and W free, once more with them pinned."""
    subject, image = ctx.subject, ctx.subject.image
    if subject.mode != "window":
        return CheckResult.skip("reference" + tag, "not applicable in dense mode: cells score single feature "
                                "positions, not reference-size windows")
    x = random_input(image, ctx.batch, image.height, image.width, ctx.seed, dtype)
    want = batched(orig_sess, image.name, x, f"{image.height}x{image.width}")
    check = reference_check(subject, want, conv_sess, x, ctx.rtol, ctx.atol)
    pins = reference_pins(image, conv)
    if not check.passed and pins:
        # With H and W free, onnxruntime may pick other trunk kernels than the original's
        # (grouped convolutions after its layout transforms): their rounding is not the
        # head's. The same check again with the dims pinned to the reference size, where
        # the trunk runs the original's kernels.
        feat_dtype = subject.analysis.index.dtypes.get(subject.feature, 0)
        ref_sess, failure = converted_session(conv_path, provider, tag, {subject.conv_feature: feat_dtype}, pins)
        if ref_sess is None:
            return failure
        check = reference_check(subject, want, ref_sess, x, ctx.rtol, ctx.atol)
        check.details["dims"] = "pinned to the reference size"
    check.name += tag
    return check


def _on_provider(ctx: CheckContext, conv: onnx.ModelProto, paths: tuple[Path, Path], provider: str, tag: str,
                 xs: list[np.ndarray | tuple[int, int]], dtype: np.dtype) -> list[CheckResult]:
    """Every check on one provider; a model that does not load stops there (a failed "load")."""
    subject = ctx.subject
    orig_path, conv_path = paths
    orig_sess = session(orig_path, provider, "the original model", error=OnnxFcnError)
    feat_dtype = subject.analysis.index.dtypes.get(subject.feature, 0)
    # The converted model with its feature map as an extra output, H and W free.
    conv_sess, failure = converted_session(conv_path, provider, tag, {subject.conv_feature: feat_dtype})
    if conv_sess is None:
        return [failure]
    checks = [_reference(ctx, conv, conv_path, provider, tag, orig_sess, conv_sess, dtype)]
    if _load_failed(checks[0]):
        return checks
    for k, x in enumerate(xs):
        xb = x if isinstance(x, np.ndarray) else random_input(subject.image, ctx.batch, *x, ctx.seed + 1 + k, dtype)
        checks.extend(sliding_and_feature(ctx, provider, orig_sess, conv_sess, xb, tag))
    ctx.conv_sessions[provider] = conv_sess
    return checks


def _providers_check(ctx: CheckContext, x: np.ndarray) -> CheckResult:
    """CUDA's outputs against CPU's: reported, not judged."""
    subject, image = ctx.subject, ctx.subject.image
    by_provider = {}
    for p, where in (("cpu", "CPU"), ("cuda", "CUDA")):
        sess = ctx.conv_sessions[p]
        by_provider[p] = dict(zip([o.name for o in sess.get_outputs()], run(sess, {image.name: x}, where, OnnxFcnError)))
    cmps = []
    for name in subject.out_names:  # by name: the converted model may order its outputs otherwise
        a, b = by_provider["cpu"][name], by_provider["cuda"][name]
        r, at = tolerance_for(a.dtype, ctx.rtol, ctx.atol)
        cmps.append(compare(name, b, a, r, at, class_axis=1 if a.ndim >= 2 else None))
    return CheckResult(name="providers (cuda vs cpu)", passed=True, exact=False, outputs=cmps,
                       details={"size": [int(v) for v in x.shape[2:4]] if image.layout == "NCHW"
                                else [int(v) for v in x.shape[1:3]]},
                       note="reported, not judged: CUDA and CPU kernels round differently; each provider's own "
                            "checks above are judged against the rounding bound")


def verify(
    original: str | os.PathLike[str] | onnx.ModelProto,
    converted: str | os.PathLike[str] | onnx.ModelProto,
    *,
    sizes: Sequence[tuple[int, int]] | None = None,
    batch: int = 2,
    inputs: np.ndarray | None = None,
    positions: int | str = 16,
    seed: int = 0,
    provider: str = "cpu",
    rtol: float | None = None,
    atol: float | None = None,
    strict: bool = False,
    progress: Progress | None = None,
    max_memory: int | None = None,
) -> VerifyReport:
    """Prove ``converted`` against ``original``; the report is truthy when every check passed.

    Sizes whose estimated memory exceeds what is available (or ``max_memory`` bytes) are refused
    with :class:`ResourceError` before anything runs."""
    t0 = time.perf_counter()
    orig, _ = load_model(original)
    # The converted model's weights are only ever read by onnxruntime, from its file.
    conv, _ = load_model(converted, weights=False)
    providers = resolve_providers(provider)
    subject = read_conversion(orig, conv)
    meta = ConversionMetadata.read(conv)
    reasons = meta.reasons if meta is not None else ()
    image, geo = subject.image, subject.geo
    failed = outputs_check(orig, conv)
    if failed is not None:
        return _finish(VerifyReport(checks=[failed], providers=providers, exact=geo.exact), t0, reasons)
    if not any(i.name == image.name for i in conv.graph.input):
        raise InvalidConversionError(f"the converted model has no input '{image.name}'")
    dtype = input_dtype(conv, image.name)
    size_list = _sizes(image, geo, sizes, inputs)
    n = batch if inputs is None else len(inputs)
    for h, w in size_list:
        check_memory(conv, image.name, image.shape_at(n, h, w), f"verify at {h}x{w}, batch {n},", max_memory,
                     "use a smaller --size or --batch")
    xs: list[np.ndarray | tuple[int, int]] = [np.asarray(inputs, dtype=dtype)] if inputs is not None else list(size_list)
    ctx = CheckContext(orig, subject, positions, seed, rtol, atol, strict, progress, batch=batch)
    ctx.head()
    checks = _run_providers(ctx, orig, conv, (original, converted), providers, xs, dtype)
    if len(providers) == 2 and len(ctx.conv_sessions) == 2:
        x0 = xs[0] if isinstance(xs[0], np.ndarray) else random_input(image, batch, *xs[0], seed + 1, dtype)
        checks.append(_providers_check(ctx, x0))
    return _finish(VerifyReport(checks=checks, providers=providers, exact=geo.exact), t0, reasons)


def _run_providers(ctx: CheckContext, orig: onnx.ModelProto, conv: onnx.ModelProto,
                   sources: tuple[str | os.PathLike[str] | onnx.ModelProto, str | os.PathLike[str] | onnx.ModelProto],
                   providers: list[str], xs: list[np.ndarray | tuple[int, int]], dtype: np.dtype) -> list[CheckResult]:
    checks: list[CheckResult] = []
    with on_disk(orig, sources[0]) as orig_path, on_disk(conv, sources[1]) as conv_path:
        for p in providers:
            tag = "" if len(providers) == 1 else f" [{p}]"
            found = _on_provider(ctx, conv, (orig_path, conv_path), p, tag, xs, dtype)
            checks.extend(found)
            if _load_failed(found[-1]):
                break
    return checks


def _load_failed(check: CheckResult) -> bool:
    """A session of the converted model did not load: the provider's checks stop there."""
    return check.name.startswith("load") and not check.passed


__all__ = ["Subject", "default_size", "summarize_reasons", "verify"]
