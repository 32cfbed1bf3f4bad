"""The original head in float64, with a bound on the rounding error of any float evaluation of it.

- ``core.py``: ``Bounded`` (a value, a worst-case bound and a probabilistic scale), the rounding
  arithmetic, and ``RULES``, the rounding rule of each head op;
- ``evaluator.py``: ``HeadEvaluator``, the head's nodes run through their rules;
- ``dense.py``, ``ops.py``: the rules. A head op without one raises ``NoBoundError``, and the
  checks fall back to a relative tolerance. To add one: a function in ``ops.py`` and an entry in
  its ``RULES.update``.
"""

from __future__ import annotations

from . import dense, ops
from .core import LAMBDA, TRANSCENDENTAL_ULPS, Bounded, NoBoundError, gamma, unit_roundoff
from .dense import dense_bound
from .evaluator import RULES, BoundRule, HeadEvaluator, register_bound

__all__ = ["LAMBDA", "RULES", "TRANSCENDENTAL_ULPS", "BoundRule", "Bounded", "HeadEvaluator", "NoBoundError", "dense",
           "dense_bound", "gamma", "ops", "register_bound", "unit_roundoff"]
