"""Export torchvision and timm architectures with random weights at realistic scale, through both
PyTorch exporters; ``Exports`` runs them in a child process and caches them on disk.

Tiny random weights hide rounding and misalignment alike, so the weights are set the way a trained
network's activations look:

- BatchNorm running statistics are calibrated on one random batch, so every BatchNorm output has
  unit variance (with the default statistics deep random networks give near-zero or exploding
  logits);
- the hidden dense layers of the classifier are He-initialised (torchvision draws VGG's and
  AlexNet's from N(0, 0.01), which shrinks the 4096-wide activations);
- the last layer is scaled so that the logits have standard deviation ``LOGIT_STD`` on random
  images, the spread of a trained ImageNet classifier's logits.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import multiprocessing
import os
import warnings
from pathlib import Path
from typing import Any

LOGIT_STD = 3.0
REF_SIZE = {"inception_v3": 299}
BUILD_KW = {"googlenet": {"aux_logits": False, "init_weights": True},
            "inception_v3": {"aux_logits": False, "init_weights": True}}


def export(arch: str, exporter: str, opset: int, folder: Path) -> Path:
    import torch
    import torchvision

    path = folder / f"{arch}_{exporter}_{opset}.onnx"
    if path.exists():
        return path
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.onnx")  # renamed into place whole
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, **BUILD_KW.get(arch, {}))
    size = REF_SIZE.get(arch, 224)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the statistics of the calibration batch
        model.train()
        with torch.no_grad():
            model(torch.randn(8, 3, size, size))
    model.eval()
    realistic_scale(model, size)
    x = torch.randn(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"])
        else:
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset,
                                        input_names=["input"], output_names=["logits"], verbose=False)
            assert program is not None
            program.save(str(tmp), external_data=False)
    os.replace(tmp, path)
    return path


def export_timm(name: str, folder: Path) -> Path:
    """A timm model (100 classes) at realistic scale, legacy exporter, opset 17."""
    import timm
    import torch

    path = folder / f"timm_{name}.onnx"
    if path.exists():
        return path
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.onnx")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=100).eval()
    realistic_scale(model, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(tmp), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    os.replace(tmp, path)
    return path


def realistic_scale(model: Any, size: int) -> float:
    """He-initialise the classifier's hidden dense layers, then scale the last layer to LOGIT_STD.
    Returns the measured logit standard deviation."""
    import torch

    torch.manual_seed(1)
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    last_name, last = named[-1]
    for name, m in named:
        if isinstance(m, torch.nn.Linear) and m is not last and name.split(".")[0] in ("classifier", "fc", "heads"):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    with torch.no_grad():
        logits = model(torch.randn(8, 3, size, size))
        scale = LOGIT_STD / float(logits.std())
        last.weight.mul_(scale)
        if last.bias is not None:
            last.bias.mul_(scale)
        return float(model(torch.randn(8, 3, size, size)).std())


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def cache_folder() -> Path:
    """Where exports are kept across test runs: ``ONNXFCN_TEST_CACHE``, or the user's cache folder,
    in a subfolder keyed by the exporters' versions and this file's content (a change to either
    exports anew)."""
    root = os.environ.get("ONNXFCN_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "onnxfcn-test-exports")
    recipe = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    key = "-".join(f"{p}{_version(p)}" for p in ("torch", "torchvision", "timm", "onnx", "onnxscript"))
    folder = Path(root) / f"{key}-{recipe}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _in_child(fn: Any, *args: Any) -> tuple[str, float]:
    """``fn(*args)`` in the export process, and that process's resident memory after it (MB)."""
    path = fn(*args)
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return str(path), rss


class Exports:
    """torchvision and timm exports, made in a child process (torch is never imported by the test
    process, whose memory stays the tests' own) and kept on disk across runs (``cache_folder``)."""

    RECYCLE_MB = 3000.0  # a new export process once the current one holds this much

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._pool: Any = None

    def _run(self, fn: Any, *args: Any) -> Path:
        if self._pool is None:
            # spawn: a fresh interpreter (no fork of a process holding onnxruntime's threads)
            self._pool = multiprocessing.get_context("spawn").Pool(1)
        path, rss = self._pool.apply(_in_child, (fn, *args, self.folder))
        if rss > self.RECYCLE_MB:
            self.close()
        return Path(path)

    def torchvision(self, arch: str, exporter: str = "legacy", opset: int = 17) -> Path:
        path = self.folder / f"{arch}_{exporter}_{opset}.onnx"
        return path if path.exists() else self._run(export, arch, exporter, opset)

    def timm(self, name: str) -> Path:
        path = self.folder / f"timm_{name}.onnx"
        return path if path.exists() else self._run(export_timm, name)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None
