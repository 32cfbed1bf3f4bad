"""Numerical proof of a conversion on onnxruntime.

- ``compare.py``: what a check found, per output and per check, and the report;
- ``subject.py``: the original and what the checks read of a conversion of it (metadata checked);
- ``reference.py``, ``sliding.py``: the reference, sliding and feature checks;
- ``headcut.py``: the original's head cut out with onnx-graphsurgeon for the feature check;
- ``selfcheck.py``: convert's self-check;
- ``driver.py``: ``verify`` itself.
"""

from __future__ import annotations

from .compare import CheckResult, OutputComparison, VerifyReport, compare, compare_bounded
from .driver import verify
from .selfcheck import self_check

__all__ = ["CheckResult", "OutputComparison", "VerifyReport", "compare", "compare_bounded", "self_check", "verify"]
