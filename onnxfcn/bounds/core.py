"""The original head in float64, with a bound on the rounding error of any float evaluation of it.

The checks compare a converted model with the *exact* result of the original classifier's head on
the same feature map, not with ``rtol * max|y|``. This module evaluates the original's head nodes
in float64 (numpy) and carries, for every element, how far a float evaluation (in the model's own
dtype, in any summation order) can be from that exact value, in two ways at once:

- ``det``, a worst case that holds for any rounding: Higham's ``gamma_n = n u / (1 - n u)`` times
  ``sum|w_i x_i|`` for a dot product or sum of ``n`` terms, with input errors carried through
  ``|W|``;
- ``rss``, a scale under the model of Higham and Mary ("A new approach to probabilistic rounding
  error analysis", SIAM J. Sci. Comput. 41, 2019): rounding errors are independent and bounded by
  ``u`` times what they round, so each dot product adds a sub-Gaussian error of scale
  ``sqrt(n) u sum|w_i x_i|``, and errors carried through a dense layer add in quadrature,
  ``sqrt(sum w_i^2 rss_i^2)``. Scales of independent errors add in quadrature; where errors may be
  correlated (two operands of one node) they add linearly.

The bound used is ``min(det, LAMBDA * rss)``. By Hoeffding's inequality the error exceeds
``LAMBDA * rss`` with probability below ``2 exp(-LAMBDA^2 / 2)`` = 4e-22 per element for
``LAMBDA = 10``. Nonlinear ops (activations, softmax) push the interval ``[x - e, x + e]``
through the function (exact for monotone functions) and return to a scale by dividing by
``LAMBDA``. Elementwise ops round once (1 ulp), or ``TRANSCENDENTAL_ULPS`` for exp, tanh, erf,
... whose vectorized kernels are not correctly rounded. Softmax errors are ``p (exp(2 e) - 1)``;
arg-max and top-k indices may differ only where two candidates are within ``2 e`` (their bound
is then infinite). Flushed subnormals add an absolute ``4 * tiny`` of the dtype.

A head op without a rule raises :class:`NoBoundError`; the checks then fall back to a relative
tolerance and say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

LAMBDA = 10.0
TRANSCENDENTAL_ULPS = 128.0
_LAZY_BYTES = 16 * 2**20  # initializers this large are read at run time, not copied in advance
_BIG_CONST = 2**20  # elements: constants this large are read in float64 blocks, never whole
# float64 weight columns converted at a time (VGG's 25088x4096 layer: 822 MB whole): per row of
# the input, up to a cap. A few rows make the products memory-bound, and blocks that stay in the
# cache are 3x faster than 64 MB ones (VGG16's head, batch 2: 0.16 s against 0.50 s); many rows
# make them compute-bound, and BLAS wants wide blocks (400 rows: 1.9 s at 64 MB, 11 s at 1 MB).
_BLOCK_BYTES_PER_ROW = 2**19
_BLOCK_BYTES_MIN, _BLOCK_BYTES_MAX = 2**20, 64 * 2**20



class NoBoundError(Exception):
    """The head holds an op this module has no rounding rule for."""


@dataclass
class Bounded:
    """A tensor's exact (float64) value, a worst-case error bound and a probabilistic error scale."""

    value: np.ndarray
    det: np.ndarray
    rss: np.ndarray

    @property
    def err(self) -> np.ndarray:
        """The bound a float evaluation stays within: min(worst case, LAMBDA * scale)."""
        return np.minimum(self.det, LAMBDA * self.rss)

    @classmethod
    def exact(cls, value: np.ndarray, err: np.ndarray | None = None) -> Bounded:
        e = np.zeros(np.shape(value)) if err is None else _f64(err)
        return cls(_f64(value), e, e)

    @classmethod
    def from_bounds(cls, value: np.ndarray, det: np.ndarray, likely: np.ndarray) -> Bounded:
        """From a worst case and a high-probability bound (after a nonlinear op)."""
        return cls(value, det, likely / LAMBDA)


def unit_roundoff(dtype: Any) -> float:
    dt = np.dtype(dtype)
    if dt.name == "bfloat16" or str(dt) == "bfloat16":
        return 2.0**-8
    return float(np.finfo(dt).eps) / 2 if dt.kind == "f" else 2.0**-24


def gamma(n: int, u: float) -> float:
    """Higham's deterministic bound on the relative error (to sum|terms|) of a sum of n terms."""
    n = max(int(n), 1)
    return n * u / (1 - n * u) if n * u < 1 else math.inf


def _f64(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _arg(b: Bounded | None) -> Bounded:
    assert b is not None
    return b


def _const(b: Bounded | None) -> np.ndarray:
    return _arg(b).value


def _full(b: Bounded) -> tuple[np.ndarray, np.ndarray]:
    shape = b.value.shape
    return np.broadcast_to(b.det, shape), np.broadcast_to(b.rss, shape)

