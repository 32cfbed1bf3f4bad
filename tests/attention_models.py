"""Trunks with attention over a map's positions, built in PyTorch and exported by both exporters
(in the export process of ``tv_export.Exports``; the test process never imports torch).

- ``nonlocal``: a non-local block (Wang et al. 2018): theta/phi/g 1x1 convolutions, the map viewed
  as H*W tokens, softmax attention, viewed back, a 1x1 convolution and the residual;
- ``mobilevit``: a MobileViT-style block (Mehta & Rastegari 2022, patch size 1): local 3x3 and 1x1
  convolutions, the map flattened to tokens, a pre-norm transformer layer written as timm writes
  it (qkv Linear, heads, softmax, MLP), back to the map, fused with the input;
- refused ones: ``vit_pos`` (patch embedding plus a position embedding of a fixed token count,
  no class token) and ``mixer`` (MLP-Mixer's token mixing: a Linear across the token axis).

Weights are PyTorch's random initialisation; the last layer is scaled so that logits have a
standard deviation of ``tv_export.LOGIT_STD`` on random images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

SIZE = 64  # the reference input size: a 16 x 16 map of 256 tokens after the stride-4 stem
NAMES = ("nonlocal", "mobilevit", "vit_pos", "mixer")


def _build(name: str) -> Any:
    import torch
    from torch import nn

    class Stem(nn.Sequential):
        def __init__(self, c: int) -> None:
            super().__init__(nn.Conv2d(3, c // 2, 3, 2, 1), nn.BatchNorm2d(c // 2), nn.ReLU(),
                             nn.Conv2d(c // 2, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU())

    class NonLocal(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.inner = c // 2
            self.theta, self.phi, self.g = (nn.Conv2d(c, c // 2, 1) for _ in range(3))
            self.out = nn.Conv2d(c // 2, c, 1)

        def forward(self, x: Any) -> Any:
            b, _, h, w = x.shape
            theta = self.theta(x).view(b, self.inner, -1).permute(0, 2, 1)
            phi = self.phi(x).view(b, self.inner, -1)
            g = self.g(x).view(b, self.inner, -1).permute(0, 2, 1)
            attn = torch.softmax(theta @ phi / self.inner ** 0.5, dim=-1)
            y = (attn @ g).permute(0, 2, 1).reshape(b, self.inner, h, w)
            return x + self.out(y)

    class Attention(nn.Module):
        def __init__(self, dim: int, heads: int = 4) -> None:
            super().__init__()
            self.heads, self.scale = heads, (dim // heads) ** -0.5
            self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

        def forward(self, x: Any) -> Any:
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))

    class MobileViTBlock(nn.Module):
        def __init__(self, c: int, dim: int = 48) -> None:
            super().__init__()
            self.local = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.SiLU(), nn.Conv2d(c, dim, 1))
            self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            self.back, self.fuse = nn.Conv2d(dim, c, 1), nn.Conv2d(2 * c, c, 3, 1, 1)

        def forward(self, x: Any) -> Any:
            b, _, h, w = x.shape
            y = self.local(x)
            t = y.flatten(2).transpose(1, 2)
            t = t + self.attn(self.norm1(t))
            t = t + self.mlp(self.norm2(t))
            y = t.transpose(1, 2).reshape(b, -1, h, w)
            return self.fuse(torch.cat([x, self.back(y)], dim=1))

    class TokenNet(nn.Module):
        """Patch embedding, then a position embedding (vit_pos) or token mixing (mixer)."""

        def __init__(self, kind: str, dim: int = 48, tokens: int = 16) -> None:
            super().__init__()
            self.kind = kind
            self.patch = nn.Conv2d(3, dim, 16, 16)
            self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.5)
            self.mix = nn.Linear(tokens, tokens)
            self.head = nn.Linear(dim, 100)

        def forward(self, x: Any) -> Any:
            t = self.patch(x).flatten(2).transpose(1, 2)
            t = t + self.pos if self.kind == "vit_pos" else t + self.mix(t.transpose(1, 2)).transpose(1, 2)
            return self.head(t.mean(dim=1))

    if name in ("vit_pos", "mixer"):
        return TokenNet(name)
    block = NonLocal(64) if name == "nonlocal" else MobileViTBlock(64)
    return nn.Sequential(Stem(64), block, nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 100))


def file_name(name: str, exporter: str, dynamic: bool) -> str:
    """The export's file name in the export cache, keyed by this file's content (a change exports anew)."""
    recipe = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]
    return f"attention_{name}_{exporter}_{'dynamic' if dynamic else 'static'}_{recipe}.onnx"


def export_attention(name: str, exporter: str, dynamic: bool, folder: Path) -> Path:
    """Export one of ``NAMES`` (legacy or dynamo exporter; dynamic H and W or fixed)."""
    import warnings

    import torch
    from tv_export import realistic_scale

    torch.manual_seed(0)
    model = _build(name)
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, SIZE, SIZE))  # BatchNorm statistics of random images: unit variance
    model.eval()
    realistic_scale(model, SIZE)
    path = folder / file_name(name, exporter, dynamic)
    tmp = path.with_suffix(".partial")
    x = torch.randn(1, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            shapes = ({2: torch.export.Dim("h", min=32, max=512), 3: torch.export.Dim("w", min=32, max=512)},) \
                if dynamic else None
            torch.onnx.export(model, (x,), str(tmp), dynamo=True, input_names=["x"], output_names=["y"],
                              dynamic_shapes=shapes, external_data=False)
        else:
            axes = {"x": {2: "height", 3: "width"}} if dynamic else None
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, input_names=["x"], output_names=["y"],
                              dynamic_axes=axes, opset_version=17)
    tmp.replace(path)
    return path
