"""Export torchvision architectures with random weights, through both PyTorch exporters.

BatchNorm running statistics are calibrated on one random batch before export: with the default
statistics (mean 0, variance 1) deep random networks produce near-zero or exploding logits, and a
numerical comparison on them would prove little.
"""

from __future__ import annotations

import warnings
from pathlib import Path

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
