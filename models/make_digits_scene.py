"""Build models/digits_scene.png: a canvas with held-out scikit-learn digits at known positions.

The digits are the first held-out example of each class 0-9 (the same split as
``make_digits_cnn.py``: test_size 0.25, random_state 0, stratified), drawn at their own 8x8 size,
the size the digits model reads, on a black canvas. Their top-left corners lie on the converted
model's 2-pixel cell grid, so one cell's window is exactly each digit. Also written:
``digits_scene.json`` (each digit's label, box [x0, y0, x1, y1] and held-out index) and
``digits_labels.txt`` (the class names, for ``onnxfcn convert --labels``).

    pip install scikit-learn && python models/make_digits_scene.py    # Pillow comes with onnxfcn

Pixel values 0..16 are stored as round(v * 255 / 16), so the default ``--scale 1/255`` gives the
model its training range (v / 16) to within 0.002.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
except ImportError as exc:  # one line, naming what to install
    sys.exit(f"make_digits_scene.py needs numpy, Pillow and scikit-learn ({exc.name} is missing): "
             "pip install numpy pillow scikit-learn")

HERE = Path(__file__).parent
# (top, left) of each digit 0-9: two rows, irregular gaps, even coordinates (the cell grid)
POSITIONS = [(6, 4), (4, 20), (8, 36), (4, 54), (6, 72), (30, 6), (26, 22), (32, 40), (28, 58), (30, 76)]
CANVAS = (48, 92)


def held_out() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    idx = np.arange(len(digits.target))
    _, x_te, _, y_te, _, i_te = train_test_split(digits.images, digits.target, idx, test_size=0.25, random_state=0,
                                                 stratify=digits.target)
    return x_te, y_te, i_te


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "digits_scene.png")
    args = parser.parse_args()
    x_te, y_te, i_te = held_out()
    canvas = np.zeros(CANVAS, dtype=np.float64)
    digits = []
    for label, (top, left) in enumerate(POSITIONS):
        k = int(np.flatnonzero(y_te == label)[0])
        canvas[top:top + 8, left:left + 8] = x_te[k]
        digits.append({"label": label, "box": [left, top, left + 8, top + 8], "dataset_index": int(i_te[k])})
    Image.fromarray(np.round(canvas * 255 / 16).astype(np.uint8), mode="L").save(args.out)
    args.out.with_suffix(".json").write_text(json.dumps({"size": list(CANVAS), "digits": digits}, indent=2) + "\n")
    (HERE / "digits_labels.txt").write_text("".join(f"{d}\n" for d in range(10)))
    print(f"wrote {args.out}, {args.out.with_suffix('.json')} and {HERE / 'digits_labels.txt'}")


if __name__ == "__main__":
    main()
