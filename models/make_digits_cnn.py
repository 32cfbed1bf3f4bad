"""Train and export models/digits_cnn.onnx: a small CNN on scikit-learn's 8x8 handwritten digits.

The network is padding-free (valid convolutions, a 2x2 max pool), so onnxfcn's converted model is
exact: every output cell equals the classifier on its 8x8 crop. Seeded and deterministic on CPU.

    pip install -e '.[models]' && python models/make_digits_cnn.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import numpy as np
    import onnxscript  # noqa: F401  (torch's exporter needs it)
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn
except ImportError as exc:  # one line, naming what to install
    sys.exit(f"make_digits_cnn.py needs PyTorch, onnxscript and scikit-learn ({exc.name} is missing): "
             "pip install -e '.[models]'")


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3), nn.ReLU(),      # 8x8 -> 6x6
            nn.MaxPool2d(2),                     # -> 3x3
            nn.Conv2d(16, 32, 2), nn.ReLU(),     # -> 2x2
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("digits_cnn.onnx"))
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()

    torch.manual_seed(0)
    np.random.seed(0)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # N x 1 x 8 x 8, in [0, 1]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    for _epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for k in range(0, len(xt), 64):
            idx = perm[k:k + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean()
    print(f"test accuracy on {len(y_te)} held-out digits: {acc:.3f}")
    torch.onnx.export(
        model, (torch.zeros(1, 1, 8, 8),), str(args.out), dynamo=False, opset_version=13,
        input_names=["image"], output_names=["logits"],
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
