"""Export torchvision architectures with random weights at realistic scale, through both exporters.

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
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"])
        else:
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset,
                                        input_names=["input"], output_names=["logits"], verbose=False)
            assert program is not None
            program.save(str(path), external_data=False)
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
