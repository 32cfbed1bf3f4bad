"""Strict JSON for every report: infinities and NaN become null (the reports' notes say why),
numpy scalars become numbers, and anything else json cannot write becomes its ``str``."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, recursively, numpy scalars as
    Python numbers and tuples as lists."""
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def _default(value: Any) -> Any:
    """What json cannot write on its own: numpy arrays as (strict) lists, anything else as its str."""
    if isinstance(value, np.ndarray):
        return strict(value.tolist())
    return str(value)


def dumps(data: Any, indent: int | None = 2) -> str:
    """``data`` as strict JSON (``allow_nan=False`` holds by construction)."""
    return json.dumps(strict(data), default=_default, indent=indent, allow_nan=False, ensure_ascii=False)
