"""Preprocessing and labels that travel with a converted model, and reading inputs for it.

``convert --mean --std --scale --channels --labels`` stores them in the model's metadata
(``metadata.py``); ``scan`` and ``verify --image`` apply them to image files: pixel values 0..255
times ``scale``, minus ``mean``, divided by ``std``, per channel, in the stated channel order. A
``.npy`` input is the model input as it is and is never preprocessed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import OnnxFcnError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class Preprocess:
    """How image pixels (0..255) become model input values."""

    scale: float = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: str = "rgb"  # order of a colour model's input channels

    def __post_init__(self) -> None:
        if not math.isfinite(self.scale) or self.scale == 0:
            raise OnnxFcnError(f"scale must be a finite non-zero number, not {self.scale}")
        if self.channels not in CHANNEL_ORDERS:
            raise OnnxFcnError(f"channels must be rgb or bgr, not {self.channels!r}")
        for what, vals in (("mean", self.mean), ("std", self.std)):
            if vals is not None and (not vals or not all(math.isfinite(v) for v in vals)):
                raise OnnxFcnError(f"{what} must be finite numbers, not {vals}")
        if self.std is not None and any(v == 0 for v in self.std):
            raise OnnxFcnError("std must not be zero")

    def check(self, channels: int) -> None:
        """Mean and std have one value, or one per input channel."""
        for what, vals in (("mean", self.mean), ("std", self.std)):
            if vals is not None and len(vals) not in (1, channels):
                raise OnnxFcnError(f"{what} has {len(vals)} values; the model's input has {channels} channels "
                                   "(give 1 or one per channel)")

    def with_overrides(self, scale: float | None = None, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None, channels: str | None = None) -> Preprocess:
        """These values, with any that are given replaced (scan's options over the metadata's)."""
        return replace(self, scale=self.scale if scale is None else scale,
                       mean=self.mean if mean is None else tuple(mean),
                       std=self.std if std is None else tuple(std),
                       channels=self.channels if channels is None else channels)

    def apply(self, pixels: np.ndarray, chw: bool = False) -> np.ndarray:
        """H x W x C pixels (0..255, RGB order) -> float32 model values, channels last, or with
        ``chw`` channels first: one pass to scale (and move the channels), the mean and std in
        place, since a tile of a slide is hundreds of megabytes."""
        src = pixels[..., ::-1] if self.channels == "bgr" and pixels.shape[-1] == 3 else pixels
        c = src.shape[-1]
        if chw:
            x = np.empty((c, src.shape[0], src.shape[1]), np.float32)
            np.multiply(src.transpose(2, 0, 1), np.float32(self.scale), out=x, casting="unsafe")
            shape: tuple[int, ...] = (-1, 1, 1)
        else:
            x = np.empty(src.shape, np.float32)
            np.multiply(src, np.float32(self.scale), out=x, casting="unsafe")
            shape = (-1,)
        if self.mean is not None:
            x -= np.asarray(self.mean, dtype=np.float32).reshape(shape)
        if self.std is not None:
            x /= np.asarray(self.std, dtype=np.float32).reshape(shape)
        return x


def read_labels(path: str | Path) -> list[str]:
    """A labels file: a JSON list of strings, or one label per line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OnnxFcnError(f"{path}: cannot read the labels file: {exc}") from None
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OnnxFcnError(f"{path}: not a valid JSON list of labels: {exc}") from None
        if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
            raise OnnxFcnError(f"{path}: a JSON labels file must be a list of strings")
    else:
        labels = [line.strip() for line in text.splitlines()]
        while labels and not labels[-1]:
            labels.pop()
    if not labels:
        raise OnnxFcnError(f"{path}: no labels in the file")
    return labels


@contextmanager
def any_image_size() -> Iterator[None]:
    """Pillow's decompression-bomb limit lifted while an image is opened (scan is made for huge
    images; its own memory check decides, before decoding), and put back after: the caller's
    Pillow is left as it was."""
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def read_image(path: str | Path, channels: int) -> np.ndarray:
    """An image file as H x W x C uint8 pixels (RGB, or grey for a one-channel model)."""
    try:
        from PIL import Image
    except ImportError:
        raise OnnxFcnError("image files need Pillow: pip install pillow (onnxfcn depends on it: reinstall onnxfcn)") from None
    if channels not in (1, 3):
        raise OnnxFcnError(f"{path}: the model reads {channels} channels; give a .npy array instead of an image")
    try:
        with any_image_size(), Image.open(path) as img:
            arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    except OSError as exc:
        raise OnnxFcnError(f"{path}: not a readable image: {exc}") from None
    return arr[:, :, None] if arr.ndim == 2 else arr
